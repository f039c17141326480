"""Atomic file writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

log = logging.getLogger(__name__)


@contextmanager
def _temp_beside(path: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A new hidden temporary file beside ``path``, open for writing; fsynced when the block
    ends, and removed if it fails (a full disk must not keep a partial file nothing removes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield tmp, f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temporary file beside ``path`` and fsync it."""
    with _temp_beside(path) as (tmp, f):
        f.write(data)
    return tmp


def copy_temp(path: Path, src: Path, chunk: int = 8 << 20) -> tuple[Path, str]:
    """Copy ``src`` to a new hidden temporary file beside ``path`` in chunks, fsync it, and
    return it with the SHA-256 of the bytes copied (a model file can be larger than memory)."""
    digest = hashlib.sha256()
    with _temp_beside(path) as (tmp, f), open(src, "rb") as fin:
        while block := fin.read(chunk):
            digest.update(block)
            f.write(block)
    return tmp, digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file, or a folder so that a rename or link inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every folder (their entries) up to ``root``.

    A manifest names files that a tool wrote without fsync (Spark, torch.save); it is fsynced
    itself before its link. Without this, a power loss could keep the manifest, which readers
    and skips trust, and lose or truncate the data it names."""
    paths = sorted(p for p in root.rglob("*") if not p.is_symlink())  # links: refused by describe_files
    for path in [p for p in paths if p.is_file()] + [p for p in reversed(paths) if p.is_dir()] + [root]:
        fsync_path(path)


def _remove_temp(tmp: Path) -> None:
    """Remove a temporary file whose link has been tried. The link decided the outcome (created,
    or FileExistsError for the loser of a race); a failed removal leaves only a hidden file that
    nothing reads, and must not replace that outcome with its own error."""
    try:
        tmp.unlink()
    except OSError as exc:
        log.warning("could not remove the temporary file %s (%s); it is unused, delete it by hand", tmp, exc)


def create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``; raise FileExistsError if it exists (one winner of a race).

    An error of the final directory fsync is raised although ``path`` then exists: whether the
    new name survives a power loss is in doubt, and only the caller knows whether it can stand
    (``commit.run_stage`` checks whose manifest the name holds)."""
    tmp = write_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and fails if another writer linked first
    finally:
        _remove_temp(tmp)
    fsync_path(path.parent)
