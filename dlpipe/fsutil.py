"""Atomic file writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new hidden temporary file beside ``path`` and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``; raise FileExistsError if it exists (one winner of a race)."""
    tmp = write_temp(path, data)
    try:
        os.link(tmp, path)  # atomic, and fails if another writer linked first
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
