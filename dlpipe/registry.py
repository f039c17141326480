"""Model registry: immutable, numbered versions of a model with their full lineage.

Layout under the root (a directory or ``s3://bucket/prefix``):

    <model>/blobs/<sha256>            artifact bytes, content-addressed, written once
    <model>/versions/<NNNNNN>.json    the version record, created with create-only semantics

A version becomes visible only when its record is created, after every blob is stored, so a
crash mid-upload publishes nothing. Concurrent registrations race for the next number; the loser
gets CommitConflict from the store and tries the next one. Registering the same artifacts with the
same lineage again returns the existing version.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from dlpipe import audit
from dlpipe.errors import CommitConflict, ConfigError, IntegrityError, NotCommittedError
from dlpipe.hashing import canonical_json, fingerprint, sha256_file
from dlpipe.runctx import RunContext
from dlpipe.storage import Store

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_MAX_RACE_RETRIES = 100


def _check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError("model name", name, "use 1-64 lowercase letters, digits, '.', '_' or '-'")
    return name


def parse_ref(ref: str) -> tuple[str, int]:
    """``name@version`` -> (name, version)."""
    name, sep, ver = ref.partition("@")
    if not sep or not ver.isdigit():
        raise ConfigError("model reference", ref, "use NAME@VERSION, e.g. eta@1")
    return _check_name(name), int(ver)


def _record_key(name: str, version: int) -> str:
    return f"{name}/versions/{version:06d}.json"


def list_versions(store: Store, name: str | None = None) -> list[dict]:
    """Every version record (of one model, or of all), ordered by model and version."""
    prefix = f"{_check_name(name)}/versions/" if name else ""
    keys = [k for k in store.list(prefix) if re.search(r"/versions/\d{6}\.json$", k)]
    return [json.loads(store.get(k)) for k in keys]


def get_version(store: Store, name: str, version: int) -> dict:
    try:
        return json.loads(store.get(_record_key(_check_name(name), version)))
    except NotCommittedError:
        raise NotCommittedError(f"{name}@{version} is not registered in {store.uri}; "
                                f"see `dlpipe registry list`") from None


def register(store: Store, name: str, model_dir: Path, *, metrics: dict[str, Any],
             lineage: dict[str, Any], run: RunContext, note: str = "") -> tuple[dict, bool]:
    """Register the files of ``model_dir``; return (version record, created)."""
    _check_name(name)
    files = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ConfigError("model_dir", str(model_dir), "point at a directory holding the model files")
    artifacts = [{"name": p.name, "sha256": sha256_file(p), "size": p.stat().st_size} for p in files]
    model_fp = fingerprint({"artifacts": artifacts, "lineage": lineage})

    existing = [r for r in list_versions(store, name) if r["model_fingerprint"] == model_fp]
    if existing:
        rec = existing[0]
        log.info("%s@%s already holds these artifacts and lineage; not registering again",
                 name, rec["version"])
        audit.record("skipped", stage="registry", run=run, manifest_id=f"{name}@{rec['version']}",
                     fingerprint=model_fp, reason="identical model already registered")
        return rec, False

    for art, path in zip(artifacts, files):
        key = f"{name}/blobs/{art['sha256']}"
        if not store.exists(key):
            store.put_file(key, path, art["sha256"])

    for _ in range(_MAX_RACE_RETRIES):
        versions = list_versions(store, name)
        same = [r for r in versions if r["model_fingerprint"] == model_fp]
        if same:  # a concurrent registration of the same model won
            return same[0], False
        version = max((r["version"] for r in versions), default=0) + 1
        record = {
            "name": name, "version": version, "model_fingerprint": model_fp,
            "artifacts": artifacts, "metrics": metrics, "lineage": lineage, "note": note,
            "registered_at": audit.utcnow_iso(), "registered_by": run.as_dict(),
        }
        try:
            store.put_new(_record_key(name, version), (canonical_json(record) + "\n").encode())
        except CommitConflict:
            log.info("%s@%d was taken by a concurrent registration; retrying", name, version)
            continue
        audit.record("committed", stage="registry", run=run, manifest_id=f"{name}@{version}",
                     fingerprint=model_fp, registry=store.uri)
        log.info("registered %s@%d in %s", name, version, store.uri)
        return record, True
    raise CommitConflict(f"could not allocate a version of {name} after {_MAX_RACE_RETRIES} tries")


def download(store: Store, name: str, version: int, dest: Path) -> dict:
    """Fetch a version's artifacts into ``dest`` and verify each SHA-256 before returning."""
    record = get_version(store, name, version)
    dest.mkdir(parents=True, exist_ok=True)
    for art in record["artifacts"]:
        target = dest / art["name"]
        store.download(f"{name}/blobs/{art['sha256']}", target)
        actual = sha256_file(target)
        if actual != art["sha256"]:
            target.unlink()
            raise IntegrityError(
                f"{name}@{version}: artifact {art['name']} has sha256 {actual[:12]}..., the registry "
                f"recorded {art['sha256'][:12]}...; the stored blob was modified; do not load it")
    return record
