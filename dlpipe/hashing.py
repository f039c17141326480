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


def checkpoint_name(dataset_id: str, config: dict, sources_hash: str) -> str:
    """The checkpoint folder of a training: one per (dataset, config, code), so any change
    starts from scratch, and `dlpipe gc` can tell which commit a folder belongs to."""
    return fingerprint({"dataset": dataset_id, "config": config, "code": sources_hash})[:16]


def parquet_rows_hash(path: str | Path) -> str:
    """SHA-256 of a Parquet file's rows (schema, values, order), not of its bytes.

    Spark's Parquet writer (parquet-mr) does not produce byte-identical files for identical
    rows: the footer lists each column's encodings from a Java hash set, whose order changes
    between JVMs. Hashing the Arrow IPC form of the decoded table is stable. The schema's
    key-value metadata is left out: it holds the writer's version (org.apache.spark.version),
    which a Spark upgrade changes for the same rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path).combine_chunks().replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sha256_bytes(sink.getvalue().to_pybytes())


def content_hash(paths: list[Path], root: Path, by_name: bool = True) -> str:
    """One hash of the rows of a set of Parquet files.

    ``by_name=True`` hashes (relative path, rows hash) pairs: for outputs whose file names are
    deterministic. ``by_name=False`` hashes (folder, rows hash) pairs: for outputs whose writer
    names files at random (Spark under Petastorm), so equal content gives an equal hash, while
    rows moved from one folder (split) to another do not.
    """
    hashes = [(Path(p).relative_to(root).as_posix(), parquet_rows_hash(p)) for p in paths]
    return fingerprint(sorted(hashes) if by_name else sorted((str(Path(n).parent), h) for n, h in hashes))


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
