"""Opening committed datasets: readers get URLs only through a manifest that vouches for them.

Petastorm stores its Unischema as a pickle in the Parquet metadata, so opening a dataset
unpickles: only datasets committed by this platform may be opened, and only while their metadata
files still hash as committed (``check_split``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from dlpipe import commit, settings
from dlpipe.errors import ConfigError, IntegrityError, NotCommittedError
from dlpipe.hashing import sha256_file

# Parquet metadata files: Petastorm unpickles the Unischema stored in them
_METADATA = frozenset({"_common_metadata", "_metadata"})


def split_url(dataset_manifest: dict, split: str) -> str:
    """``file://`` URL of one split of a committed dataset (refuses anything else).

    A wrong manifest and a wrong split name are told apart: the fix differs (pass the dataset
    stage's id; pick one of the splits it committed)."""
    splits = dataset_manifest.get("summary", {}).get("splits") or []
    if dataset_manifest.get("stage") != "datasets" or not splits:
        raise NotCommittedError(
            f"{dataset_manifest.get('id')!r} is not a committed dataset with splits; "
            f"pass the manifest id that the dataset stage returned")
    if split not in splits:
        raise ConfigError("split", split, f"dataset {dataset_manifest.get('id')} has the splits {sorted(splits)}; "
                                          f"use one of them")
    check_split(dataset_manifest, split)
    return f"file://{commit.location(dataset_manifest)}/{split}"


def check_split(manifest: dict, split: str) -> None:
    """Refuse a split whose directory no longer holds what its manifest lists.

    Petastorm reads every Parquet file in the directory, so a file deleted early (retention done
    in the wrong order, a partial copy) would silently train on part of the data, and a stray one
    on data nobody committed. This costs one listing and a stat per file; the metadata files,
    which get unpickled, and any file written since the commit are also re-hashed
    (``commit.file_problem``). ``dlpipe lineage ID --verify`` re-hashes everything.
    """
    root, mid = commit.location(manifest), manifest["id"]
    fix = (f"the dataset was changed after its commit. To recompute it, delete "
           f"{manifest['stage']}/{manifest['name']}/{manifest['partition']}/manifests/{manifest['fingerprint']}.json "
           f"and run its task again (docs/operations.md, Retention)")
    listed = {f["path"]: f for f in manifest["outputs"]["files"] if f["path"].startswith(f"{split}/")}
    for rel, entry in listed.items():
        problem = commit.file_problem(manifest, entry)
        if problem is None and (root / rel).name in _METADATA and sha256_file(root / rel) != entry["sha256"]:
            problem = f"{rel} is not the file that was committed (its SHA-256 differs)"
        if problem:
            raise IntegrityError(f"{mid}: {problem} in {root}; {fix}")
    if stray := commit.unlisted_files(manifest, split):  # Petastorm does read '_metadata': it is listed
        raise IntegrityError(f"{mid}: {stray[0]} is in the dataset's directory but not in its manifest; "
                             f"remove it, or {fix}")


def resolve(ref: str) -> dict:
    """A committed dataset manifest from its id, or from a path (or file:// URL) inside it.

    A path is accepted only if a committed manifest's location contains it; an attempt that
    never committed, or a directory nobody vouches for, is refused.
    """
    if "@" in ref and not ref.startswith(("/", "file:")):
        manifest = commit.load_manifest(ref)
        if manifest["stage"] != "datasets":
            raise NotCommittedError(f"{ref!r} is a {manifest['stage']} manifest, not a dataset")
        return manifest
    path = Path(ref.removeprefix("file://")).resolve()
    root = settings.home() / "datasets"
    for mfile in root.glob("*/*/manifests/*.json"):
        manifest = commit.read_manifest(mfile)
        location = commit.location(manifest)
        if path == location or location in path.parents:
            return manifest
    versions = _partition_versions(ref, path, root)
    if versions:
        raise NotCommittedError(f"{ref} is a dataset partition, which may hold several versions; pass one of "
                                f"its committed versions (newest first): {', '.join(versions)}")
    raise NotCommittedError(
        f"{ref} is not inside any committed dataset under {root}: it may be an attempt that never "
        f"committed (or was superseded). Use the dataset id a committed run reported "
        f"(`dlpipe audit`), e.g. datasets/eta/window_end=2026-01-03@<fingerprint>")


def _partition_versions(ref: str, path: Path, root: Path) -> list[str]:
    """Where ``ref`` names a dataset partition (its directory, or its id without ``@``), the ids
    of its committed versions, newest first: several may exist, so none is picked silently."""
    for d in (path, root.parent / ref):
        d = d.parent if d.name == "manifests" else d
        if d.parent.parent == root:
            try:
                key = commit.StageKey("datasets", d.parent.name, d.name)
            except ValueError:  # a name no stage could have written
                continue
            ids = [m["id"] for m in reversed(commit.committed(key))]
            if ids:
                return ids
    return []


def open_reader(ref: str, split: str, *, batch: bool = True, **kwargs: Any):
    """Petastorm's ``make_batch_reader`` (or ``make_reader`` with ``batch=False``) on a split of a
    committed dataset; ``kwargs`` go to Petastorm (sharding, schema_fields, num_epochs...)."""
    manifest = resolve(ref)
    url = split_url(manifest, split)
    if batch:
        _refuse_undecoded(manifest, kwargs.get("schema_fields"))
    # petastorm 0.13.1 with pyarrow 14 sometimes ends an epoch with no rows when row groups are
    # shuffled (measured: 5 of 100 reads of one 605-row split; 0 of 300 without shuffling).
    kwargs.setdefault("shuffle_row_groups", False)
    with warnings.catch_warnings():  # the caller's own warning filters stay as they were
        warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
        warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
        from petastorm import make_batch_reader, make_reader

        return (make_batch_reader if batch else make_reader)(url, **kwargs)


def _refuse_undecoded(manifest: dict, schema_fields: Any) -> None:
    """``make_batch_reader`` returns Petastorm-encoded fields (an image's NdarrayCodec) as raw
    bytes: refuse that instead of handing a team bytes where it expects arrays."""
    schema = manifest.get("summary", {}).get("schema") or []
    encoded = [f["name"] for f in schema if f.get("codec", "ScalarCodec") != "ScalarCodec"]
    if schema_fields is not None:  # names or regular expressions, as Petastorm takes them
        wanted = [getattr(f, "name", f) for f in schema_fields]
        encoded = [n for n in encoded if any(re.fullmatch(str(w), n) for w in wanted)]
    if encoded:
        raise ConfigError("batch", True, f"dataset {manifest['id']} stores {encoded} with a Petastorm codec, "
                                         f"which make_batch_reader does not decode; pass batch=False "
                                         f"(make_reader decodes them), or leave them out of schema_fields")
