"""Model registry: immutable, numbered versions of a model with their full lineage.

Layout under the root (a directory or ``s3://bucket/prefix``):

    <model>/blobs/<sha256>            artifact bytes, content-addressed, written once
    <model>/versions/<NNNNNN>.json    the version record, created with create-only semantics
    <model>/aliases/<alias>.json      where an alias points, with every move it ever made;
                                      replaced only by compare-and-swap (S3 ``If-Match``)

A version becomes visible only when its record is created, after every blob is stored, so a
crash mid-upload publishes nothing. Concurrent registrations race for the next number; the loser
gets CommitConflict from the store and tries the next one. Registering the same artifacts with the
same lineage again returns the existing version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlpipe import audit
from dlpipe.errors import (AliasConflict, CommitConflict, ConfigError, IntegrityError,
                           NotCommittedError, UnsafeArtifactError)
from dlpipe.hashing import canonical_json, fingerprint, sha256_file
from dlpipe.runctx import RunContext
from dlpipe.storage import Store, StoreUnreachable, has_login, misspelt_scheme

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"  # staging, production, canary-eu ...
ALIAS_RE = re.compile(ALIAS_PATTERN)
_MAX_RACE_RETRIES = 100


class RegistryConfig(BaseModel):
    """Where a pipeline registers its models (the ``registry`` section of a pipeline YAML)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    root: str | None = Field(None, description="directory or s3://bucket/prefix; default "
                                               "$DLPIPE_REGISTRY_ROOT or $DLPIPE_HOME/registry")
    aws_conn_id: str | None = Field(None, description="Airflow AWS connection for an s3:// root")
    promote_to: str | None = Field("staging", pattern=ALIAS_PATTERN,
                                   description="alias to move to each new version (lowercase, e.g. staging)")

    @field_validator("root")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        """Checked when the YAML is read, not at registration."""
        if value is not None and (problem := root_problem(value)):
            raise ValueError(problem)
        return value


def root_problem(value: str) -> str | None:
    """What is wrong with a pipeline's or an operator's registry root, if anything: it must be
    an absolute directory or s3://BUCKET[/PREFIX]. (The CLI also takes a relative directory.)"""
    parts = urlparse(value)
    if has_login(value):  # the message must not show what came before '@'
        return "credentials do not belong in the URI; set aws_conn_id (an Airflow AWS connection)"
    if value.startswith("s3://") and not parts.netloc:
        return "an s3:// root needs a bucket: s3://BUCKET[/PREFIX]"
    if "://" in value and not value.startswith(("s3://", "file://")):
        return "use a local directory or s3://BUCKET[/PREFIX]"
    if misspelt_scheme(value):
        return "use s3://BUCKET[/PREFIX] (two slashes) or an absolute directory"
    if not value.startswith("s3://") and not Path(value.removeprefix("file://")).expanduser().is_absolute():
        # tasks run in other working directories on other workers: each would get its own registry
        return ("a relative directory means another registry on every worker: give an absolute "
                "directory or s3://BUCKET[/PREFIX]")
    return None


def _check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):  # match() and $ take a trailing newline
        raise ConfigError("model name", name, "use 1-64 lowercase letters, digits, '.', '_' or '-'")
    return name


def parse_ref(ref: str) -> tuple[str, int]:
    """``name@version`` -> (name, version)."""
    name, sep, ver = ref.partition("@")
    if not sep or not re.fullmatch(r"[0-9]+", ver):  # isdigit() takes '²', which int() refuses
        raise ConfigError("model reference", ref, "use NAME@VERSION, e.g. eta@1")
    return _check_name(name), int(ver)


def parse_alias_ref(ref: str, default: str | None = None) -> tuple[str, str]:
    """``name:alias`` -> (name, alias); ``default`` fills in a missing alias where one is meant."""
    name, sep, alias = ref.partition(":")
    if "@" in ref or (not sep and default is None) or (sep and not alias):
        raise ConfigError("alias reference", ref, "use NAME:ALIAS, e.g. eta:production")
    return _check_name(name), alias or default


def _record_key(name: str, version: int, kind: str = "json") -> str:
    """A version's record, or with ``kind="deleted"`` the tombstone its deletion leaves."""
    return f"{name}/versions/{version:06d}.{kind}"


# A version's record, or the tombstone a deleted record leaves (see docs/operations.md): a
# number once given is never given again, so ``eta@2`` always means the same model.
_VERSION_KEY = re.compile(r"/versions/(\d{6})\.(json|deleted)$")


def list_versions(store: Store, name: str | None = None, problems: list[str] | None = None) -> list[dict]:
    """Every readable version record (of one model, or of all), ordered by model and version.
    A damaged record is left out, with a warning, and described in ``problems`` when given: one
    torn record must not stop the listing, or the registration, of every other model."""
    prefix = f"{_check_name(name)}/versions/" if name else ""
    records = []
    for key in store.list(prefix):
        if (m := _VERSION_KEY.search(key)) and m.group(2) == "json":
            try:
                records.append(_read_record(store, key))
            except IntegrityError as exc:
                log.warning("%s", exc)
                if problems is not None:
                    problems.append(str(exc))
    return records


# What every reader of a version record relies on (list, show, download, promote, lineage):
# field -> its JSON type. Checked where a record is read, so a record that parses but lacks one
# is named as damaged once, instead of a KeyError in whichever command meets it first.
_RECORD_FIELDS: dict[str, type] = {
    "name": str, "version": int, "model_fingerprint": str, "artifacts": list, "metrics": dict,
    "lineage": dict, "registered_at": str, "registered_by": dict}
_ARTIFACT_FIELDS: dict[str, type] = {"name": str, "sha256": str, "size": int}


def _record_problem(record: object, key: str) -> str | None:
    """What makes ``record`` (read from ``key``) not a usable version record, if anything."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [f for f in _RECORD_FIELDS if f not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    wrong = [f"{f} is {type(record[f]).__name__}, not {t.__name__}" for f, t in _RECORD_FIELDS.items()
             if not isinstance(record[f], t) or isinstance(record[f], bool)]
    if wrong:
        return "; ".join(wrong)
    for i, art in enumerate(record["artifacts"]):
        if not isinstance(art, dict) or any(not isinstance(art.get(f), t) for f, t in _ARTIFACT_FIELDS.items()):
            return f"artifacts[{i}] lacks a name, sha256 or size: {art!r:.80}"
    m = _VERSION_KEY.search(key)
    if m and (record["name"], record["version"]) != (key[:m.start()].rsplit("/", 1)[-1], int(m.group(1))):
        return f"it names {record['name']}@{record['version']}, not the version its key holds"
    return None


def _read_record(store: Store, key: str) -> dict:
    """The version record at ``key``; IntegrityError naming it, and what is wrong, when it is not
    JSON or lacks a field its readers need (see ``_RECORD_FIELDS``)."""
    try:
        record = json.loads(store.get(key))
        problem = _record_problem(record, key)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # torn or overwritten: never a traceback
        problem = str(exc)
    if problem is None:
        return record
    m = _VERSION_KEY.search(key)
    ref = f"{key[:m.start()]}@{int(m.group(1))}" if m else key
    raise IntegrityError(f"{ref}: its version record in {store.uri} ({key}) is not readable ({problem}); it "
                         f"was damaged or edited: do not load this version (register the model again for a "
                         f"new one)")


def get_version(store: Store, name: str, version: int) -> dict:
    key = _record_key(_check_name(name), version)
    try:
        return _read_record(store, key)
    except NotCommittedError:
        gone = store.exists(_record_key(name, version, "deleted"))
        raise NotCommittedError(f"{name}@{version} {'was deleted from' if gone else 'is not registered in'} "
                                f"{store.uri}; see `dlpipe registry list`") from None


# Gate verdicts are evidence about a model, not part of what it is: a rerun whose model gate
# judged the same training again (against a champion that has moved since) must find the
# version it registered before, not register the same files a second time.
_EVIDENCE = ("gates", "gate_verdicts")


def model_identity(artifacts: list[dict], lineage: dict[str, Any]) -> str:
    """What makes two registrations the same model: its files and where they came from."""
    return fingerprint({"artifacts": artifacts,
                        "lineage": {k: v for k, v in lineage.items() if k not in _EVIDENCE}})


def record_is_intact(record: dict) -> bool:
    """Whether a version record's artifacts and lineage still give its model_fingerprint: the
    identity without the gate evidence, or, for a record written before the evidence was left
    out of it, with it."""
    whole = fingerprint({"artifacts": record["artifacts"], "lineage": record["lineage"]})
    return record["model_fingerprint"] in (model_identity(record["artifacts"], record["lineage"]), whole)


def get_intact_version(store: Store, name: str, version: int) -> dict:
    """``get_version``, refusing a record whose artifacts or lineage were edited since it was
    written (``record_is_intact``): each blob verifies against the record's own sha256, so a
    record pointed at another version's blob would otherwise download as "verified"."""
    record = get_version(store, name, version)
    if not record_is_intact(record):
        raise IntegrityError(f"{name}@{version}: its version record ({store.uri}/{_record_key(name, version)}) no "
                             f"longer matches its model_fingerprint: its artifacts or lineage were edited; do not "
                             f"load or promote it (`dlpipe lineage {name}@{version}` shows more)")
    return record


# ``<model>/identities/<identity>/<NNNNNN>``: an empty key per version, naming the model it
# holds, so a registration finds an identical earlier one from a key listing instead of reading
# every version record (one GET each: seconds per registration on S3 after a few hundred).
_IDENTITY_KEY = re.compile(r"identities/([0-9a-f]+)/(\d{6})")


def _index(store: Store, name: str, identity: str, version: int) -> None:
    try:
        store.put_new(f"{name}/identities/{identity}/{version:06d}", b"")
    except CommitConflict:
        pass  # indexed already (a concurrent registration, or a repeat of our own write)
    except Exception as exc:  # the version stands; a registration without the entry reads its record
        log.warning("%s@%d: could not write its index entry (%s); the next registration adds it",
                    name, version, exc)


def _find_same(store: Store, name: str, identity: str) -> tuple[dict | None, int]:
    """The lowest version that holds the model ``identity`` (None if none does), and the highest
    version number ever given (tombstones included), from one listing of the model's keys.

    Records the index names for ``identity`` are read, and so are records with no index entry at
    all (written before the index, or by a registration that stopped between its record and its
    entry); those get their entry now, so they are read once. The identity is computed from each
    record read, not taken from its model_fingerprint: records written before verdicts were left
    out of the identity match too."""
    records, indexed, candidates, highest = set(), set(), set(), 0
    for key in store.list(f"{name}/"):
        if m := _VERSION_KEY.search(key):
            highest = max(highest, int(m.group(1)))
            if m.group(2) == "json":
                records.add(int(m.group(1)))
        elif m := _IDENTITY_KEY.fullmatch(key[len(name) + 1:]):
            indexed.add(int(m.group(2)))
            if m.group(1) == identity:
                candidates.add(int(m.group(2)))
    for version in sorted((candidates | (records - indexed)) & records):
        try:
            record = _read_record(store, _record_key(name, version))
        except IntegrityError as exc:  # not a version anyone may load: the model gets a new one
            log.warning("%s; it is not taken as the same model", exc)
            continue
        found = model_identity(record["artifacts"], record.get("lineage") or {})
        if version not in indexed:
            _index(store, name, found, version)
        if found == identity:
            return record, highest
    return None, highest


def register(store: Store, name: str, model_dir: Path, *, metrics: dict[str, Any],
             lineage: dict[str, Any], run: RunContext, note: str = "",
             committed_files: dict[str, dict] | None = None) -> tuple[dict, bool]:
    """Register the files of ``model_dir``; return (version record, created).

    ``committed_files`` maps file names to their entries in a committed manifest (``sha256`` and,
    for large files, ``parts_sha256``); then exactly those files are registered, whatever else
    the folder holds now (readers only open files a manifest lists). They also spare hashing the
    files again: the upload carries the committed checksums and S3's answer must match them, so
    a file changed since its commit is refused.
    """
    _check_name(name)
    if not Path(model_dir).is_dir():
        raise ConfigError("model_dir", str(model_dir), "point at an existing directory holding the model files")
    files = _committed_model_files(Path(model_dir), committed_files) if committed_files else model_files(Path(model_dir))
    if not files:
        raise ConfigError("model_dir", str(model_dir), "point at a directory holding the model files")
    known = committed_files or {}
    artifacts = [{"name": rel, "sha256": known[rel]["sha256"] if rel in known else sha256_file(p),
                  "size": p.stat().st_size} for rel, p in files]
    model_fp = model_identity(artifacts, lineage)

    rec, _ = _find_same(store, name, model_fp)
    if rec is not None:
        # the same files again: the chance to repair a version whose blob was deleted or damaged
        repaired = _store_blobs(store, name, artifacts, files, known)
        if repaired:
            log.warning("%s@%s: stored %s again (missing or damaged in %s)", name, rec["version"],
                        _first_names(repaired), store.uri)
        log.info("%s@%s already holds these artifacts and lineage; not registering again",
                 name, rec["version"])
        audit.record("skipped", stage="registry", run=run, manifest_id=f"{name}@{rec['version']}",
                     fingerprint=model_fp, reason="identical model already registered",
                     gates=lineage.get("gates"),  # this run's verdicts, kept as evidence
                     **({"repaired": repaired} if repaired else {}))
        return rec, False

    _store_blobs(store, name, artifacts, files, known)

    for _ in range(_MAX_RACE_RETRIES):
        # listed again after the (possibly long) upload: a concurrent registration of the same
        # model that finished meanwhile is returned instead of duplicated
        same, highest = _find_same(store, name, model_fp)
        if same is not None:  # a concurrent registration of the same model won
            audit.record("skipped", stage="registry", run=run, manifest_id=f"{name}@{same['version']}",
                         fingerprint=model_fp, reason="a concurrent registration of the same model won",
                         gates=lineage.get("gates"))
            return same, False
        version = highest + 1  # past deleted versions' tombstones too
        record = {
            "name": name, "version": version, "model_fingerprint": model_fp,
            "artifacts": artifacts, "metrics": metrics, "lineage": lineage, "note": note,
            "registered_at": audit.utcnow_iso(), "registered_by": run.as_dict(),
        }
        data = (canonical_json(record) + "\n").encode()
        try:
            store.put_new(_record_key(name, version), data)
        except CommitConflict:
            if not _stored_is(store, _record_key(name, version), data):
                log.info("%s@%d was taken by a concurrent registration; retrying", name, version)
                continue
            # our own write: it was stored, its reply lost, and the client's retry refused
            log.info("%s@%d: the store refused a repeat of this registration's own write", name, version)
        _index(store, name, model_fp, version)  # if this stops here, the next registration indexes it
        audit.record("committed", stage="registry", run=run, manifest_id=f"{name}@{version}",
                     fingerprint=model_fp, registry=store.uri)
        log.info("registered %s@%d in %s", name, version, store.uri)
        return record, True
    raise CommitConflict(f"could not allocate a version of {name} after {_MAX_RACE_RETRIES} tries")


def _store_blobs(store: Store, name: str, artifacts: list[dict], files: list[tuple[str, Path]],
                 known: dict[str, dict]) -> list[str]:
    """Upload each artifact whose blob is missing or no longer holds its bytes; return their
    names. Blobs already stored intact (by an earlier version or attempt) are not sent again."""
    stored = []
    for art, (rel, path) in zip(artifacts, files):
        key, parts = f"{name}/blobs/{art['sha256']}", known.get(rel, {}).get("parts_sha256")
        if store.holds(key, path, art["sha256"], parts):
            continue
        if not stored:
            store.check_conditional_writes()  # before any upload: a store it refuses gets no blobs either
        if store.exists(key):  # bytes that no longer match their address: never reuse them
            log.warning("%s/%s does not match its SHA-256; storing it again", store.uri, key)
        store.put_file(key, path, art["sha256"], parts)
        stored.append(rel)
    return stored


def model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """The files a model directory registers, as (name relative to it in POSIX form, path):
    subfolders included (a tokenizer next to the weights), hidden files and folders left out.
    A symbolic link is refused: the bytes stored would be those of whatever it points at."""
    found = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_symlink():
            raise ConfigError("model_dir", str(path), f"a symbolic link (to {os.readlink(path)}): copy the file "
                                                      f"into the model directory, or remove the link")
        if path.is_file():
            if problem := _name_problem(rel.as_posix()):  # download could never place it: refuse it now
                raise ConfigError("model_dir", str(path), f"{problem}: rename the file")
            found.append((rel.as_posix(), path))
    return found


def _committed_model_files(model_dir: Path, committed: dict[str, dict]) -> list[tuple[str, Path]]:
    """Exactly the files a training manifest commits under its model folder (hidden ones left
    out, as ``model_files`` leaves them out)."""
    found = []
    for rel in sorted(r for r in committed if not any(part.startswith(".") for part in r.split("/"))):
        path = _artifact_target(model_dir, rel, str(model_dir))
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{model_dir}: committed file {rel} is missing or was replaced by a link; "
                                 f"the training output changed after its commit: train again")
        found.append((rel, path))
    return found


def _name_problem(name: str) -> str | None:
    """Why an artifact name is not a plain relative path inside a model directory, if it is not
    ('..', absolute, hidden, a backslash): the one rule for registering and for downloading."""
    if "\\" in name:
        return "a file name with '\\' in it"
    if not name or name.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in name.split("/")):
        return "not a relative path inside the model directory"
    return None


def _first_names(names: list[str], shown: int = 5) -> str:
    """'a, b, c, d, e and 3 more': the first of a list of file names, for a message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _artifact_target(root: Path, name: str, ref: str) -> Path:
    """Where artifact ``name`` goes under ``root``, refusing a name that would leave it: a
    version record is data from storage, and whoever can write the bucket can write a record."""
    if _name_problem(name):
        raise IntegrityError(f"{ref}: artifact name {name!r} is not a relative path inside the model "
                             f"directory; the version record was altered; do not load it")
    return root.joinpath(*name.split("/"))


def _stored_is(store: Store, key: str, data: bytes) -> bool:
    """Whether ``key`` holds exactly ``data``. A create-only write refused because the key
    exists may have been refused by our own write: boto3 retries a request whose reply was lost,
    and the repeat finds the first one's object. The record carries this run and a timestamp,
    so no other writer stores the same bytes."""
    found = store.get_versioned(key)
    return found is not None and found[0] == data


def _move_applied(store: Store, key: str, move: dict) -> bool:
    """Whether an alias's history holds ``move`` (its time and run make it unique): then a refused
    compare-and-swap was refused by our own write, which counts, even if another writer has
    moved the alias again since."""
    found = store.get_versioned(key)
    return found is not None and move in _alias_doc(store, key, found[0])["history"]


def download(store: Store, name: str, version: int, dest: Path) -> dict:
    """Fetch a version's artifacts into ``dest`` and verify each SHA-256 before returning.

    The artifacts are fetched into a hidden directory inside ``dest`` and moved into place only
    once every one of them verifies, so a failed or tampered download leaves the files already
    in ``dest`` as they were. ``dest`` must be empty or hold only this version's files, with
    their bytes (a repeated download): another version's files, extra ones or the same names
    with other bytes, would make a mixed model for whatever loads the whole directory, at once
    or after a download that stops half way."""
    record = get_intact_version(store, name, version)
    if dest.exists() and not dest.is_dir():
        raise ConfigError("dest", str(dest), "name a directory (it is created if missing), not a file")
    if dest.is_dir():
        names = {art["name"] for art in record["artifacts"]}
        extra = sorted(rel for rel in (p.relative_to(dest).as_posix() for p in dest.rglob("*")
                                       if p.is_file() or p.is_symlink())
                       if rel not in names and not any(part.startswith(".") for part in rel.split("/")))
        if extra:
            raise ConfigError("dest", str(dest), f"holds files that {name}@{version} does not have "
                                                 f"({_first_names(extra)}); download into an empty or new directory")
        # Same names, other bytes: another version's files. Replacing them one by one, a failure
        # (or a kill) half way would leave a mix of two models under one directory.
        other = sorted(art["name"] for art in record["artifacts"]
                       if (path := _artifact_target(dest, art["name"], f"{name}@{version}")).is_file()
                       and sha256_file(path) != art["sha256"])
        if other:
            raise ConfigError("dest", str(dest), f"holds other bytes under {name}@{version}'s file names "
                                                 f"({_first_names(other)}): another model's files; download into "
                                                 f"an empty or new directory")
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    ref = f"{name}@{version}"
    try:
        places = [(_artifact_target(staging, art["name"], ref), _artifact_target(dest, art["name"], ref))
                  for art in record["artifacts"]]  # every name checked before anything is fetched
        for art, (target, _) in zip(record["artifacts"], places):
            blob = f"{name}/blobs/{art['sha256']}"
            try:
                store.download(blob, target)
            except NotCommittedError:
                raise IntegrityError(
                    f"{name}@{version}: artifact {art['name']} is missing from the registry ({store.uri}/{blob} "
                    f"does not exist); it was deleted: register the same model files again to store it again "
                    f"(nothing in {dest} was changed)") from None
            actual = sha256_file(target)
            if actual != art["sha256"]:
                raise IntegrityError(
                    f"{name}@{version}: artifact {art['name']} has sha256 {actual[:12]}..., the registry "
                    f"recorded {art['sha256'][:12]}...; the stored blob was modified; do not load it "
                    f"(nothing in {dest} was changed)")
        for target, final in places:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


# --- aliases -------------------------------------------------------------------------------

def check_alias(alias: str | None) -> str:
    if not ALIAS_RE.fullmatch(alias or ""):  # match() and $ take a trailing newline
        raise ConfigError("alias", alias, "use 1-32 lowercase letters, digits, '_' or '-', starting with a letter")
    return alias


def _alias_key(name: str, alias: str) -> str:
    return f"{_check_name(name)}/aliases/{check_alias(alias)}.json"


def list_aliases(store: Store, name: str) -> list[str]:
    """The aliases of model ``name`` that have been set, sorted."""
    prefix = f"{_check_name(name)}/aliases/"
    return sorted(k[len(prefix):-len(".json")] for k in store.list(prefix) if k.endswith(".json"))


def _alias_doc(store: Store, key: str, data: bytes) -> dict:
    """The alias document stored at ``key``, checked: a JSON object with an int ``version`` and a
    non-empty ``history`` of moves (each with ``from_version`` and ``to_version``), the last one
    to ``version``. Anything else is an IntegrityError naming the key, never a KeyError."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"not JSON: {exc}"
    else:
        history = doc.get("history") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
            problem = "no version field"
        elif not isinstance(history, list) or not history:
            problem = "no history of moves"
        elif not all(isinstance(m, dict) and "from_version" in m and "to_version" in m for m in history):
            problem = "a move in its history lacks from_version or to_version"
        elif history[-1]["to_version"] != doc["version"]:
            problem = f"its version {doc['version']} is not where its latest move went ({history[-1]['to_version']})"
        else:
            return doc
    raise IntegrityError(f"the alias document {store.uri}/{key} is damaged ({problem}); nothing reads or moves "
                         f"the alias until it is repaired: restore it from a versioned bucket or a backup, or "
                         f"delete it and set the alias again with `dlpipe registry promote` (its history is "
                         f"then lost; the audit log keeps every move)")


def get_alias(store: Store, name: str, alias: str) -> dict | None:
    """The alias document (``version`` plus the full ``history``), or None if never set."""
    key = _alias_key(name, alias)
    found = store.get_versioned(key)
    return _alias_doc(store, key, found[0]) if found else None


def promote(store: Store, name: str, alias: str, version: int, *, run: RunContext, reason: str = "",
            expected_version: int | None = None, expect_unset: bool = False,
            expected_moves: int | None = None) -> dict:
    """Point ``alias`` at ``version`` by compare-and-swap; every move is kept in its history.

    ``expected_version`` makes the move conditional on where the alias points now (None: any);
    ``expect_unset`` makes it conditional on the alias not existing yet; ``expected_moves`` on
    its history holding exactly that many moves, so that an alias moved away and back since it
    was read (2 -> 3 -> 2) counts as moved. A concurrent move between our read and our write
    raises AliasConflict; nothing is changed.
    """
    key = _alias_key(name, alias)
    try:
        get_intact_version(store, name, version)  # only registered, unaltered versions can be promoted
        found = store.get_versioned(key)
    except StoreUnreachable as exc:  # nothing written yet: certain
        raise StoreUnreachable(f"{name}:{alias} was not moved (nothing was written): {exc}") from exc
    doc, token = (_alias_doc(store, key, found[0]), found[1]) if found else (None, None)
    current = doc["version"] if doc else None
    if expect_unset and doc is not None:
        raise AliasConflict(f"{name}:{alias} is set (version {current}), not unset as expected (set since it "
                            f"was read, or before): re-read it (dlpipe registry history) and retry")
    if expected_version is not None and current != expected_version:
        now = "is not set" if current is None else f"points at version {current}"
        raise AliasConflict(f"{name}:{alias} {now}, not at the expected version "
                            f"{expected_version}; re-read it (dlpipe registry history) and retry")
    moves = len(doc["history"]) if doc else 0
    if expected_moves is not None and moves != expected_moves:
        raise AliasConflict(f"{name}:{alias} has moved {moves - expected_moves} time(s) since it was read "
                            f"(latest: {doc['history'][-1]['from_version']} -> {current}); "
                            f"re-read it (dlpipe registry history) and retry")
    if current == version:
        log.info("%s:%s already points at version %d", name, alias, version)
        audit.record("skipped", stage="alias", run=run, manifest_id=f"{name}:{alias}",
                     fingerprint=str(version), reason="alias already points at this version")
        return doc
    move = {"seq": len(doc["history"]) + 1 if doc else 1, "from_version": current, "to_version": version,
            "at": audit.utcnow_iso(), "by": run.as_dict(), "run_id": run.run_id, "reason": reason}
    new = {"name": name, "alias": alias, "version": version,
           "history": (doc["history"] if doc else []) + [move]}
    data = (canonical_json(new) + "\n").encode()
    try:
        store.put_if_match(key, data, token)
    except StoreUnreachable as exc:  # the request may have reached the server before the fault
        raise StoreUnreachable(f"{name}:{alias}: the move to version {version} may or may not have been applied; "
                               f"check `dlpipe registry history {name}:{alias}` before moving it again: "
                               f"{exc}") from exc
    except CommitConflict as exc:
        if _move_applied(store, key, move):  # stored, its reply lost, the client's retry refused
            log.info("%s:%s: the store refused a repeat of this move's own write", name, alias)
        else:
            now = get_alias(store, name, alias) or {}
            last = (now.get("history") or [{}])[-1]
            raise AliasConflict(
                f"{name}:{alias} was moved concurrently (now version {now.get('version')}, "
                f"by {mover(last.get('by') or {})} at {last.get('at', '-')}); "
                f"your move to version {version} was not applied: re-read and retry") from exc
    audit.record("committed", stage="alias", run=run, manifest_id=f"{name}:{alias}",
                 fingerprint=str(version), from_version=current, reason=reason)
    log.info("%s:%s moved %s -> %d", name, alias, current, version)
    return new


def mover(by: dict) -> str:
    """Who moved an alias: the account, for a move by hand; for a task, its DAG and who
    triggered the run (the worker's account, the same for every task, says nothing)."""
    if by.get("dag_id") in (None, "-", "cli"):
        return by.get("user", "-")
    return f"{by['dag_id']}.{by.get('task_id', '-')} ({by.get('triggered_by', '-')})"


def data_position(record: dict) -> tuple[str, int]:
    """Where a version stands in data time: the partition of the dataset it was trained on
    (``window_end=2026-01-03``), then its version number. Automated promotion compares these,
    so a backfill or a retry of an older date never moves an alias back to older data."""
    dataset = (record.get("lineage") or {}).get("dataset") or ""
    partition = dataset.split("@", 1)[0].split("/", 2)[2] if dataset.count("/") >= 2 else ""
    return partition, int(record["version"])


def promote_forward(store: Store, name: str, alias: str, version: int, *, run: RunContext,
                    reason: str = "", attempts: int = 5) -> tuple[dict, bool]:
    """Point ``alias`` at ``version`` unless it already points at a version trained on newer data.

    Returns ``(alias document, moved)``. The check and the move are one compare-and-swap (the
    move is conditional on the version the check saw), retried when a concurrent run moves the
    alias in between: two backfilled dates promoting at once end at the newer data either way.
    """
    candidate = data_position(get_version(store, name, version))
    for _ in range(attempts):
        doc = get_alias(store, name, alias)
        if doc is not None and doc["version"] != version:
            current = data_position(get_version(store, name, doc["version"]))
            if current > candidate:
                why = (f"{name}:{alias} stays at version {doc['version']} (data {current[0]}): "
                       f"version {version} has older data ({candidate[0]})")
                log.info("%s", why)
                audit.record("skipped", stage="alias", run=run, manifest_id=f"{name}:{alias}",
                             fingerprint=str(doc["version"]), candidate_version=version, reason=why)
                return doc, False
        try:
            new = promote(store, name, alias, version, run=run, reason=reason,
                          expected_version=doc["version"] if doc else None, expect_unset=doc is None)
        except AliasConflict:
            continue  # moved (or created) under us: look again
        return new, doc is None or doc["version"] != version
    raise AliasConflict(f"{name}:{alias} kept moving during {attempts} attempts to promote version {version}")


def rollback(store: Store, name: str, alias: str, *, run: RunContext, reason: str = "") -> dict:
    """Move ``alias`` back to the version it pointed at before its latest move."""
    doc = get_alias(store, name, alias)
    if not doc:
        raise ConfigError("alias", f"{name}:{alias}", f"it was never set, so there is nothing to roll back; set it "
                                                      f"with `dlpipe registry promote {name}@VERSION {alias}`")
    if doc["history"][-1]["from_version"] is None:
        raise ConfigError("alias", f"{name}:{alias}", f"it has pointed only at version {doc['version']}, so there is "
                                                      f"no earlier version to roll back to; promote another "
                                                      f"(`dlpipe registry promote {name}@VERSION {alias}`)")
    previous = doc["history"][-1]["from_version"]
    return promote(store, name, alias, previous, run=run, reason=f"rollback: {reason}".rstrip(": "),
                   expected_version=doc["version"], expected_moves=len(doc["history"]))


# --- safe loading ----------------------------------------------------------------------------

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_weights(path: Path) -> dict:
    """Tensors from a verified artifact, never through unrestricted pickle.

    safetensors files are plain data; torch files are opened with ``weights_only=True``, which
    refuses any pickled object that is not a tensor or a plain container.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in _TORCH_SUFFIXES:
        import pickle

        import torch

        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeArtifactError(
                f"{path.name} holds a pickle payload that is not plain tensors; refusing to load it "
                f"(re-save the model as safetensors or a plain state dict)") from exc
    raise UnsafeArtifactError(f"{path.name}: unknown weights format; use .safetensors or a state dict (.pt)")


def load_version(store: Store, name: str, version: int, dest: Path) -> tuple[dict, dict[str, dict]]:
    """Download a version (hashes verified first), then load each weights file safely."""
    record = download(store, name, version, dest)
    weights = {a["name"]: load_weights(dest / a["name"]) for a in record["artifacts"]
               if a["name"].endswith((".safetensors", *_TORCH_SUFFIXES))}
    return record, weights
