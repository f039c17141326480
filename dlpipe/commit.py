"""Every stage is a commit: the protocol that makes retries and concurrent attempts harmless.

A stage's output location is ``<home>/<stage>/<name>/<partition>/``:

    attempts/<attempt_id>/...        what one attempt wrote (invisible until committed)
    manifests/<fingerprint>.json     the commit: which attempt, inputs, outputs with SHA-256

The fingerprint is a hash of everything the output is a function of (input manifests, config,
code hash, partition). ``run_stage`` skips when a manifest with that fingerprint exists, and
otherwise writes a fresh attempt and publishes it with an exclusive create (write a temporary
file, fsync, then ``os.link`` it to its final name, which fails if the name exists). A crash
before the link leaves an attempt nobody references; two attempts racing both write, exactly
one link wins, and the loser reports the winner's manifest. An error after our link (the
directory fsync, an interrupt) does not undo the commit: it is audited as ``committed``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import subprocess
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from dlpipe import __version__, audit, settings
from dlpipe.errors import CommitConflict, ConfigError, IntegrityError, NewerFormatError, NotCommittedError, redacted
from dlpipe.fsutil import create_exclusive, sync_tree
from dlpipe.hashing import S3_PART_SIZE, canonical_json, fingerprint, sha256_file, sha256_with_parts
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)

# 2: commit_seq and seal (2026-12-07). Readers take every version up to this one and refuse a
# newer one: an older dlpipe must not misread what a newer one wrote (a rollback, say).
MANIFEST_VERSION = 2
_IGNORED_SUFFIXES = (".crc",)  # Spark/Hadoop checksum side files: not data


@dataclass(frozen=True)
class StageKey:
    """Names one stage output: e.g. ``features/eta/dt=2026-01-03``."""

    stage: str
    name: str
    partition: str = "all"

    def __post_init__(self) -> None:
        for field_name in ("stage", "name", "partition"):
            value = getattr(self, field_name)
            if not value or "/" in value or value.startswith(".") or "\x00" in value:
                raise ValueError(
                    f"invalid {field_name}={value!r}: use a non-empty name without '/' or a leading '.'"
                )

    @property
    def relpath(self) -> str:
        return f"{self.stage}/{self.name}/{self.partition}"

    def dir(self, home: Path | None = None) -> Path:
        return (home or settings.home()) / self.relpath


@dataclass(frozen=True)
class StageResult:
    manifest: dict
    skipped: bool  # True when an earlier (or concurrent) attempt had already committed it

    @property
    def id(self) -> str:
        return self.manifest["id"]


def manifest_id(key: StageKey, fp: str) -> str:
    return f"{key.relpath}@{fp[:16]}"


def _manifest_path(key: StageKey, fp: str, home: Path | None = None) -> Path:
    return key.dir(home) / "manifests" / f"{fp}.json"


_FP_PREFIX = re.compile(r"^[0-9a-f]{16,64}$")


def load_manifest(mid: str, home: Path | None = None, *, stage: str | None = None,
                  field: str = "manifest id") -> dict:
    """Load a committed manifest by id (``stage/name/partition@fp16``).

    The fingerprint must be 16 to 64 hex digits and name exactly one commit: an id that a
    template rendered short must not pick whichever version sorts first. ``stage`` refuses an
    id of another stage (a dataset id passed as ``training_id``), naming ``field``."""
    try:
        rel, fp16 = str(mid).rsplit("@", 1)
        stage_, name, partition = rel.split("/")
        key = StageKey(stage_, name, partition)
        if not _FP_PREFIX.fullmatch(fp16):
            raise ValueError(fp16)
    except (ValueError, TypeError) as exc:
        raise NotCommittedError(
            f"malformed {field} {mid!r}: expected 'stage/name/partition@fingerprint' with a fingerprint "
            f"of 16 to 64 lowercase hex digits, as a committing task returns it"
        ) from exc
    if stage is not None and key.stage != stage:
        raise ConfigError(field, mid, f"expected the id of a committed {stage!r} stage, this is a "
                                      f"{key.stage!r} one; pass the matching task's output")
    matches = sorted((key.dir(home) / "manifests").glob(f"{fp16}*.json"))
    if not matches:
        raise NotCommittedError(f"no committed manifest {mid!r} under {key.dir(home)}")
    if len(matches) > 1:
        raise NotCommittedError(f"{field} {mid!r} matches {len(matches)} commits under {key.dir(home)}; "
                                f"give more digits of the fingerprint")
    return read_manifest(matches[0])


def read_manifest(path: Path) -> dict:
    """The manifest at ``path``. One that is not a JSON object (a torn copy from a backup, a
    hand edit) is an IntegrityError naming the file and the way out, not a bare JSONDecodeError:
    every reader of the partition (a retry, the next day's dataset) stops on it until it is
    restored or moved aside."""
    def damaged(why: str) -> IntegrityError:
        return IntegrityError(f"the manifest {path} is damaged: {why}; restore it from a backup, or move "
                              f"it out of manifests/ so that the stage commits that version again")

    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise damaged(f"not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or "id" not in manifest:
        raise damaged("not a manifest")
    version = manifest.get("manifest_version", 1)
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise NewerFormatError(
            f"the manifest {path} was written by a newer dlpipe (manifest_version {version}; this one reads up to "
            f"{MANIFEST_VERSION}): run a dlpipe at least as new as the one that wrote it here (docs/operations.md, "
            f"Upgrading)")
    return manifest


def find_committed(key: StageKey, fp: str, home: Path | None = None) -> dict | None:
    path = _manifest_path(key, fp, home)
    return read_manifest(path) if path.exists() else None


def committed(key: StageKey, home: Path | None = None) -> list[dict]:
    """All committed manifests of one stage output, oldest commit first: by ``commit_seq``, then
    by commit time. Time alone is not enough: a host whose clock is behind commits a correction
    stamped earlier than the version it corrects, and readers, who take the newest, would go on
    taking the bad one. A manifest without ``commit_seq`` (from a dlpipe before it, still
    running beside a newer one) sorts by its time after the numbered ones committed before it."""
    mdir = key.dir(home) / "manifests"
    return in_commit_order([read_manifest(p) for p in mdir.glob("*.json")] if mdir.exists() else [])


def in_commit_order(manifests: list[dict]) -> list[dict]:
    """Versions of one partition, oldest commit first (see ``committed``)."""
    placed, seq = [], 0
    for m in sorted(manifests, key=lambda m: m["committed_at"]):
        if "commit_seq" in m:
            seq = max(seq, m["commit_seq"])
        placed.append(((m.get("commit_seq", seq), "commit_seq" not in m, m["committed_at"]), m))
    return [m for _, m in sorted(placed, key=lambda pair: pair[0])]


def next_commit_seq(key: StageKey, home: Path | None = None) -> int:
    """One more than the highest ``commit_seq`` among the partition's commits: a commit sorts
    after every version that existed when it was made, whatever the clocks. Two commits of other
    fingerprints at the same moment may share one; their times then order them."""
    return 1 + max((m.get("commit_seq", 0) for m in committed(key, home)), default=0)


def latest(key: StageKey, home: Path | None = None) -> dict:
    found = committed(key, home)
    if not found:
        raise NotCommittedError(
            f"nothing committed for {key.relpath}; run the stage that produces it first"
        )
    return found[-1]


def location(manifest: dict, home: Path | None = None) -> Path:
    """The directory holding a committed manifest's files."""
    return (home or settings.home()) / manifest["outputs"]["location"]


def files(manifest: dict, suffix: str = "", home: Path | None = None) -> list[Path]:
    """Absolute paths of the files a manifest vouches for (only those: never list a directory)."""
    root = location(manifest, home)
    return [root / f["path"] for f in manifest["outputs"]["files"] if f["path"].endswith(suffix)]


def verify(manifest: dict, home: Path | None = None) -> None:
    """Re-hash every file of a manifest, and look for files in its folder that it does not list
    (readers that take a whole folder, Petastorm and Spark, would read them); raise
    IntegrityError on the first problem."""
    root = location(manifest, home)
    if stray := unlisted_files(manifest, home=home):
        raise IntegrityError(f"{manifest['id']}: {stray[0]} is in its folder {root} but not in its manifest; "
                             f"remove it (readers of the whole folder would take it)")
    for f in manifest["outputs"]["files"]:
        path = root / f["path"]
        if not path.exists():
            raise IntegrityError(f"{manifest['id']}: file {f['path']} is missing from {root}")
        actual = sha256_file(path)
        if actual != f["sha256"]:
            raise IntegrityError(
                f"{manifest['id']}: {f['path']} has sha256 {actual[:12]}..., manifest says "
                f"{f['sha256'][:12]}...; the stored data was modified after commit"
            )


def unlisted_files(manifest: dict, under: str = "", home: Path | None = None) -> list[str]:
    """Files in a manifest's folder (or its subfolder ``under``) that it does not list, which
    readers of a whole folder (Petastorm, Spark) would take. Hidden names (.DS_Store, NFS's
    .nfsXXXX), which every reader skips, and Spark's side files do not count."""
    root = location(manifest, home)
    listed = {f["path"] for f in manifest["outputs"]["files"]}
    folder = root / under if under else root
    return [rel for path in (sorted(folder.rglob("*")) if folder.is_dir() else [])
            if (rel := path.relative_to(root).as_posix()) not in listed and path.is_file()
            and not ignored_file(path.name) and not path.name.startswith(".")]


# Files found unchanged by a re-hash in this process, by path and the stat that was hashed: one
# check of a partition's inputs and run_stage's own then cost one hash, not two.
_REHASHED: set[tuple] = set()


def redo_fix(manifest: dict) -> str:
    """How to replace a manifest's damaged output: a raw day is committed again by ingestion
    (readers take the newest version), a stage's output by deleting its manifest and running
    its task again."""
    if manifest["stage"] == "raw":
        day = manifest["partition"].removeprefix("dt=")
        return (f"commit the day's files again (dlpipe ingest-raw {manifest['name']} --day {day} PATH...; readers "
                f"take the new version), then clear the runs that read it")
    return (f"delete {manifest['stage']}/{manifest['name']}/{manifest['partition']}/manifests/"
            f"{manifest['fingerprint']}.json and run its task again (docs/operations.md, Retention)")


def file_problem(manifest: dict, entry: dict, home: Path | None = None) -> str | None:
    """What is wrong with one committed file, at the cost of a stat: missing, another size, or
    written since the commit (a modification time after ``committed_at``) and then holding other
    bytes, which a re-hash tells. None when it is the committed file as far as that shows."""
    path = location(manifest, home) / entry["path"]
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{entry['path']} is missing"
    if st.st_size != entry["size"]:
        return f"{entry['path']} is not the file that was committed ({st.st_size} bytes, committed {entry['size']})"
    committed_at = manifest.get("committed_at")
    if committed_at and st.st_mtime <= datetime.fromisoformat(committed_at).timestamp():
        return None
    seen = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, entry["sha256"])
    if seen not in _REHASHED:
        if sha256_file(path) != entry["sha256"]:
            return f"{entry['path']} was written after its commit and holds other bytes (its SHA-256 differs)"
        _REHASHED.add(seen)
    return None


def check_unchanged(manifest: dict, home: Path | None = None) -> None:
    """Refuse an input whose files are no longer the committed bytes, before a stage reads it:
    a stat per file, and a re-hash of a file written since the commit (``file_problem``).
    Damage that leaves the modification time as it was (a disk's own bit rot, a copy that keeps
    times) is found only by ``dlpipe lineage ID --verify``, which re-hashes everything."""
    if problem := _damaged(manifest, home):
        raise IntegrityError(f"{manifest['id']}: {problem} in {location(manifest, home)}; {redo_fix(manifest)}")


def _damaged(manifest: dict, home: Path | None) -> str | None:
    """The first problem ``file_problem`` finds with a manifest's files, if any."""
    return next(filter(None, (file_problem(manifest, e, home) for e in manifest["outputs"]["files"])), None)


def ignored_file(name: str) -> bool:
    """Files a commit does not list: Spark's checksum side files and its ``_SUCCESS`` marker."""
    return name.endswith(_IGNORED_SUFFIXES) or name == "_SUCCESS"


def describe_files(root: Path, with_parts: bool = False) -> list[dict]:
    """Every file under an attempt directory with its size and SHA-256, sorted by path.

    ``with_parts`` also records the SHA-256 of each S3 part of files that will be uploaded in
    several parts (model artifacts): computed in the same read, they let the registry hand S3
    the committed checksums, so S3 itself verifies the bytes it receives against the commit.
    """
    out = []
    for link in (p for p in root.rglob("*") if p.is_symlink()):
        # a manifest vouches for bytes in the attempt; a link's bytes are wherever it points
        raise IntegrityError(f"{link} is a symbolic link (to {os.readlink(link)}); a stage writes its outputs "
                             f"as files in its attempt directory")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if ignored_file(path.name):
            continue
        entry = {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size}
        if with_parts and entry["size"] >= S3_PART_SIZE:
            entry["sha256"], entry["parts_sha256"] = sha256_with_parts(path)
        else:
            entry["sha256"] = sha256_file(path)
        out.append(entry)
    return out


# Packages whose version can change a stage's output: recorded in every manifest (not part of
# the fingerprint: a patch release of numpy must not recompute a year of partitions).
RECORDED_PACKAGES = ("numpy", "pandas", "pyarrow", "pyspark", "petastorm", "torch", "horovod",
                     "great_expectations", "scikit-learn", "numba")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """The installed version of each of RECORDED_PACKAGES (None: not installed), and Python's."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@functools.lru_cache(maxsize=1)
def git_version() -> dict[str, Any]:
    """The git commit of the checkout the code runs from (and whether it had local edits); in an
    image, where dlpipe is an installed package, the commit it was built from
    (``DLPIPE_GIT_COMMIT``, a build argument of the images)."""
    baked = os.environ.get("DLPIPE_GIT_COMMIT") or None
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": baked}
    if head.returncode != 0:
        return {"git_commit": baked}  # an installed package, not a checkout
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}


def code_identity(code: dict[str, Any]) -> Any:
    """What of a stage's ``code`` enters its fingerprint. The sources hash alone stays a bare
    string, so that every fingerprint committed before other keys counted keeps its value (a
    year of ETA partitions is not recomputed); a stage that records more (the digits dataset's
    scikit-learn version, whose bundled images it reads) has all of it hashed, so a new version
    re-commits."""
    sources = code["sources_hash"]  # required of every stage
    return sources if len(code) == 1 else code


# Keys run_stage adds to a manifest's ``code`` for the record only: not part of the fingerprint.
RECORDED_CODE_KEYS = ("dlpipe_version", "git_commit", "git_dirty", "packages")


def fingerprinted_code(manifest: dict) -> dict[str, Any]:
    """The part of a manifest's ``code`` its fingerprint covers (the recorded keys left out)."""
    return {k: v for k, v in manifest["code"].items() if k not in RECORDED_CODE_KEYS}


def recomputed_fingerprints(manifest: dict) -> set[str]:
    """The fingerprints a manifest's own stage, inputs, config and code give: its
    ``fingerprint`` is one of them unless the manifest was edited after its commit (lineage
    checks this). Two, where its code records more than its sources: manifests committed
    before other code versions entered the fingerprint (the digits dataset's scikit-learn,
    before 2026-12-06) were fingerprinted by their sources alone."""
    code = fingerprinted_code(manifest)
    key = StageKey(manifest["stage"], manifest["name"], manifest["partition"])
    forms = [code]
    if set(code) == {"sources_hash", "scikit_learn"}:  # the one such key there was
        forms.append({"sources_hash": code["sources_hash"]})
    return {stage_fingerprint(key, manifest["inputs"], manifest["config"], c) for c in forms}


def seal_broken(manifest: dict) -> bool:
    """Whether a manifest has a seal that its content no longer gives (edited after its commit).
    A manifest committed before seals has none, and is not judged by this."""
    return "seal" in manifest and content_seal(manifest) != manifest["seal"]


def without_replaces(config: dict[str, Any]) -> dict[str, Any]:
    """A newest-version config (``run_newest_version``) as its caller gave it, without the
    ``replaces`` link to the version it superseded."""
    return {k: v for k, v in config.items() if k != "replaces"}


def content_seal(manifest: dict) -> str:
    """SHA-256 of everything in a manifest but its seal: its outputs (file list, hashes, sizes,
    location), summary, recorded code version, run and times, none of which its fingerprint can
    cover (they exist only after the stage ran). Consumers record their inputs' seals, and a
    version record its training's seal under its model fingerprint: a manifest edited after its
    commit, files and their hashes rewritten together, no longer gives the seal they recorded."""
    # as it reads back from disk (JSON has string keys only: {2: .., 10: ..} would reorder)
    return fingerprint(json.loads(canonical_json({k: v for k, v in manifest.items() if k != "seal"})))


def input_entry(m: dict) -> dict:
    """How a consumer names an input manifest: id and fingerprint (its own fingerprint is computed
    from these), and the input's seal when it has one (manifests before 2026-12-07 have none)."""
    return {"id": m["id"], "fingerprint": m["fingerprint"], **({"seal": m["seal"]} if "seal" in m else {})}


def stage_fingerprint(key: StageKey, inputs: list[dict], config: dict[str, Any], code: dict[str, Any]) -> str:
    """The fingerprint of a stage output: everything it is a function of (design.md)."""
    return fingerprint({
        "stage": key.relpath,
        "inputs": sorted((m["id"], m["fingerprint"]) for m in inputs),
        "config": config,
        "code": code_identity(code),
    })


def _read_committed(path: Path) -> dict | None:
    """The manifest at ``path``, or None when it is absent or cannot be read (an I/O error while
    another is being handled must not replace it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _publish(path: Path, manifest: dict) -> dict | None:
    """Link ``manifest`` into place. None when this attempt committed it; the winner's manifest
    when a concurrent attempt linked first. Only this link decides a conflict: a CommitConflict
    raised by a stage body is that body's failure."""
    try:
        create_exclusive(path, (canonical_json(manifest) + "\n").encode())
    except FileExistsError as exc:
        winner = _read_committed(path)
        if winner is None:
            raise CommitConflict(f"{manifest['id']} was committed by a concurrent attempt, but its "
                                 f"manifest {path} cannot be read; check the disk, then retry") from exc
        return winner
    return None


def _committed_despite(exc: BaseException, path: Path, attempt_id: str, *, run: RunContext,
                       base: dict[str, Any]) -> dict | None:
    """This attempt's manifest when ``exc`` came after its link (a directory fsync error, a task
    timeout or SIGTERM landing in create_exclusive's tail): the commit happened, readers see it
    and a retry skips on it, so it is audited as ``committed``, with the error, not ``failed``."""
    manifest = _read_committed(path)
    if manifest is None or manifest.get("attempt_id") != attempt_id:
        return None
    error = redacted(f"{type(exc).__name__}: {exc}")
    log.warning("%s: attempt %s committed, but then: %s", base["manifest_id"], attempt_id, error)
    audit.record("committed", run=run, attempt_id=attempt_id, files=len(manifest["outputs"]["files"]),
                 seal=manifest.get("seal"), error_after_commit=error, **base)
    return manifest


def _unaudited_commit(mid: str, attempt_id: str, path: Path, exc: OSError) -> OSError:
    """The error of a commit whose ``committed`` event could not be appended. Still an OSError
    (the task is retried, and the retry skips on the commit and records that once the log is
    writable again), and marked as audited: no ``failed`` event, since nothing failed but the
    log, whose full record of the attempt is the manifest itself."""
    error = OSError(exc.errno, f"{mid} is committed (attempt {attempt_id}, {path}), but its 'committed' audit "
                               f"event could not be written: {exc.strerror or exc}; make {exc.filename or 'the audit log'} "
                               f"writable (space, size limit), then retry: the retry skips on the commit and "
                               f"records it")
    error._dlpipe_audited = True  # type: ignore[attr-defined]
    return error


# What a stage body returns: a small summary (rows, metrics...) recorded in the manifest.
Producer = Callable[[Path], dict]


def run_newest_version(key: StageKey, *, config: dict[str, Any], code: dict[str, Any], run: RunContext,
                       produce: Producer, home: Path | None = None) -> StageResult:
    """``run_stage`` for an output with no inputs that readers take newest first (a raw day):
    skipped when the newest version already has this config and code, else committed on top of
    it, also where an older version had them. Going back after a bad correction then works: the
    version committed again records which one it ``replaces``, so its fingerprint is new, and
    readers take it. (With ``run_stage`` alone the older fingerprint existed, so it was skipped
    and the bad version stayed in use.) Two commits of one partition at once take turns on a
    lock in its folder, so each replaces the version the other left, never both the same one."""
    import fcntl

    folder = key.dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".newest.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say who holds it: a stopped or hung writer holds it until it ends
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            log.warning("%s: waiting for %s, which is committing a version of this partition (lock %s)",
                        key.relpath, holder, lock.name)
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {platform.node()} since {audit.utcnow_iso()}\n")
        lock.flush()
        versions = committed(key, home)
        newest = versions[-1] if versions else None
        if newest is not None:
            same_config = without_replaces(newest["config"]) == config
            same_code = code_identity(fingerprinted_code(newest)) == code_identity(code)
            damaged = _damaged(newest, home) if same_config and same_code else None
            if damaged:
                log.warning("%s: its newest version %s is damaged (%s): the same files are committed again as a "
                            "new version, which readers take", key.relpath, newest["id"], damaged)
            keep = same_config and same_code and not damaged
            config = newest["config"] if keep else {**config, "replaces": newest["id"]}
        return run_stage(key, inputs=[], config=config, code=code, run=run, produce=produce, home=home)


def _why_new(key: StageKey, inputs: list[dict], config: dict, code: dict, home: Path | None) -> str | None:
    """Why this partition is computed again although a version of it exists (after a release,
    a spec change, an upstream correction): what differs from its newest version."""
    try:
        newest = committed(key, home)[-1:]
    except (IntegrityError, NewerFormatError):
        return None  # the stage names a damaged or newer manifest where it matters
    if not newest:
        return None
    m, found = newest[0], []
    if m["code"].get("sources_hash") != code.get("sources_hash"):
        found.append(f"the code (sources hash {str(m['code'].get('sources_hash'))[:12]} -> {code['sources_hash'][:12]})")
    elif {k: v for k, v in m["code"].items() if k in code} != code:
        found.append("a library version: " + ", ".join(f"{k} {m['code'].get(k)} -> {v}" for k, v in sorted(code.items())
                                                       if m["code"].get(k) != v))
    if m["config"] != config:
        keys = sorted(k for k in set(m["config"]) | set(config) if m["config"].get(k) != config.get(k))
        found.append(f"the config ({', '.join(map(str, keys))})")
    if sorted(i["fingerprint"] for i in m["inputs"]) != sorted(i["fingerprint"] for i in inputs):
        found.append("the inputs (" + ", ".join(i["id"] for i in inputs) + ")")
    return (f"computed anew: its newest version {m['id']} differs in " + "; ".join(found or ["its partition's other "
            "versions only"]))


def run_stage(
    key: StageKey,
    *,
    inputs: list[dict],
    config: dict[str, Any],
    code: dict[str, Any],
    run: RunContext,
    produce: Producer,
    home: Path | None = None,
    part_hashes: bool = False,
    unread: tuple[str, ...] = (),
) -> StageResult:
    """Run one stage under the commit protocol.

    ``inputs`` are the upstream manifests (their ids and fingerprints enter this stage's
    fingerprint). ``produce(attempt_dir)`` writes the outputs into a fresh directory and returns
    a summary dict. ``code`` must hold ``sources_hash``; any other key (a library version) enters
    the fingerprint too (``code_identity``); git commit and version are recorded.
    ``part_hashes`` records S3 part digests of large outputs (see ``describe_files``).
    ``unread`` names inputs the stage takes from their manifests alone (a drift baseline's
    statistics): their files are not checked before ``produce``, as every other input's are.
    """
    fp = stage_fingerprint(key, inputs, config, code)
    mid = manifest_id(key, fp)
    base = {"stage": key.stage, "manifest_id": mid, "fingerprint": fp}

    done = find_committed(key, fp, home)
    if done is not None:
        log.info("%s: already committed by %s (try %s); skipping", mid,
                 done["run"]["run_id"], done["run"]["try_number"])
        audit.record("skipped", run=run, reason="already committed", committed_attempt_id=done["attempt_id"], **base)
        return StageResult(done, skipped=True)

    attempt_id = uuid.uuid4().hex[:16]
    attempt_dir = key.dir(home) / "attempts" / attempt_id
    attempt_dir.mkdir(parents=True)
    started_at = audit.utcnow_iso()
    # what this attempt runs, on which inputs, with which code and config: a failed or killed
    # attempt leaves no manifest, and this event is then the only record of it
    recorded_code = {**code, "dlpipe_version": __version__, **git_version()}
    audit.record("started", run=run, attempt_id=attempt_id, inputs=[m["id"] for m in inputs],
                 config=config, code=recorded_code, **base)
    log.info("%s: attempt %s writing to %s", mid, attempt_id, attempt_dir)
    if why := _why_new(key, inputs, config, code, home):
        log.info("%s: %s", mid, why)
    path = _manifest_path(key, fp, home)
    try:
        for m in inputs:  # the stage reads them next: their files must still be the committed ones
            if m["id"] not in unread:
                check_unchanged(m, home)
        summary = produce(attempt_dir)
        sync_tree(attempt_dir)  # the data is durable before the manifest that names it
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "id": mid,
            "stage": key.stage,
            "name": key.name,
            "partition": key.partition,
            "fingerprint": fp,
            "inputs": [input_entry(m) for m in inputs],
            "config": config,
            "code": {**recorded_code, "packages": package_versions()},
            "outputs": {
                "location": attempt_dir.relative_to(home or settings.home()).as_posix(),
                "files": describe_files(attempt_dir, with_parts=part_hashes),
            },
            "summary": summary,
            "run": run.as_dict(),
            "attempt_id": attempt_id,
            "started_at": started_at,
            "committed_at": audit.utcnow_iso(),
            "commit_seq": next_commit_seq(key, home),
        }
        manifest["seal"] = content_seal(manifest)
        winner = _publish(path, manifest)
    except BaseException as exc:
        ours = _committed_despite(exc, path, attempt_id, run=run, base=base)
        if ours is None:
            audit.failed(exc, run=run, attempt_id=attempt_id, **base)
            raise
        if not isinstance(exc, Exception):
            raise  # an interrupt (task timeout, SIGTERM): the commit stands, the task still stops
        return StageResult(ours, skipped=False)
    if winner is not None:
        log.warning("%s: a concurrent attempt committed first; attempt %s is discarded",
                    mid, attempt_id)
        audit.record("conflict", run=run, attempt_id=attempt_id,
                     winner_attempt_id=winner["attempt_id"], **base)
        return StageResult(winner, skipped=True)
    # the seal tells the commits of one id apart (a stage run again after its outputs were removed)
    try:
        audit.record("committed", run=run, attempt_id=attempt_id, seal=manifest.get("seal"),
                     files=len(manifest["outputs"]["files"]), **base)
    except OSError as exc:  # a full disk, a size limit: the commit stands, and the error must say so
        raise _unaudited_commit(mid, attempt_id, path, exc) from exc
    log.info("%s: committed attempt %s (%d files)", mid, attempt_id,
             len(manifest["outputs"]["files"]))
    return StageResult(manifest, skipped=False)
