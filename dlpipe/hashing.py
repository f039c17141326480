"""Content hashes: files by SHA-256, configs and inputs by a canonical-JSON fingerprint."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
# Part size of S3 multipart uploads. Files at least this big also get per-part SHA-256 digests
# in their manifests, so the registry can send S3 the committed checksums without rehashing.
S3_PART_SIZE = 16 * 1024 * 1024


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_with_parts(path: str | Path, part_size: int = S3_PART_SIZE) -> tuple[str, list[str]]:
    """One read: the file's SHA-256 (hex) and each ``part_size`` slice's (base64, as S3 wants)."""
    whole, parts = hashlib.sha256(), []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            whole.update(chunk)
            parts.append(base64.b64encode(hashlib.sha256(chunk).digest()).decode())
    return whole.hexdigest(), parts


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj``."""
    return sha256_bytes(canonical_json(obj).encode())


def content_hash(files: list[dict], by_name: bool = True) -> str:
    """One hash for a set of committed files (manifest entries with ``path`` and ``sha256``).

    ``by_name=True`` hashes (path, sha256) pairs: for outputs with deterministic file names.
    ``by_name=False`` hashes the sorted file digests only: for outputs whose writer names files
    at random (Spark under Petastorm), so equal content gives an equal hash whatever the names.
    """
    items = sorted((f["path"], f["sha256"]) for f in files) if by_name else sorted(f["sha256"] for f in files)
    return fingerprint(items)


def sources_hash(paths: list[str | Path]) -> str:
    """Hash of source files' contents (not their mtimes): the code version of a stage.

    A stage's fingerprint uses this instead of the git commit so that unrelated commits do
    not invalidate every committed output.
    """
    h = hashlib.sha256()
    for p in sorted(str(x) for x in paths):
        h.update(Path(p).name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()
