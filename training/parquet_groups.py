"""The row groups of a committed Parquet/Petastorm split: listed from the file footers, read with
checks. Imports neither torch nor the rest of ``training``, so decoding worker processes
(``training.decode_pool``) start quickly."""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dlpipe.errors import ConfigError, redacted

# Decoded bytes per read in ``column_chunks``: two float32 columns of a 64k-row group. Small
# enough that a read's input and output stay in the core's cache until they are used.
# DLPIPE_DECODE_CHUNK_BYTES overrides it (decoding worker processes inherit it).
CHUNK_BYTES = 1 << 19

# Local files are memory-mapped, and the maps kept for the next read of the same file (this
# many, most recent first, per process): a read is then a slice of the page cache, with no copy
# and, after an epoch has touched the file, no page faults. DLPIPE_MEMORY_MAP=0 reads with
# pread instead (for file systems where mapping is unwise).
MAPS_KEPT = 64
_maps: collections.OrderedDict = collections.OrderedDict()
_maps_lock = threading.Lock()


def _forget_maps_after_fork() -> None:  # a forked child must not inherit a lock held by another thread
    global _maps, _maps_lock
    _maps, _maps_lock = collections.OrderedDict(), threading.Lock()


os.register_at_fork(after_in_child=_forget_maps_after_fork)


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    rows: int


def list_row_groups(url: str) -> tuple[pafs.FileSystem, list[RowGroup]]:
    """Every row group of the ``*.parquet`` files under ``url`` (file:// or s3://), in path order."""
    try:
        fs, root = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, ValueError) as exc:  # pyarrow repeats the URL, a secret key's '/' and all
        login = url.partition("://")[2].rpartition("@")[0]
        detail = str(exc).replace(url, shown(url))
        said = f"pyarrow: {detail}; " if not (login and login in detail) else ""
        raise ConfigError("dataset url", shown(url), f"{said}give a file:// or s3://bucket/prefix URL; credentials "
                          "come from the AWS chain (environment, profile, role), not the URL") from None
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except FileNotFoundError:  # no such directory or prefix: the same answer as an empty one
        infos = []
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and not i.base_name.startswith((".", "_")))
    if not paths:
        raise FileNotFoundError(f"no .parquet files under {shown(url)}: is it a committed dataset split?")
    groups = []
    for path in paths:
        meta = pq.ParquetFile(fs.open_input_file(path)).metadata
        groups += [RowGroup(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return fs, groups


def deal(groups: list[RowGroup], size: int) -> list[list[RowGroup]]:
    """The row groups of each of ``size`` ranks, as even in rows as whole groups allow: the
    largest group first, each to the rank with the fewest rows so far (ties: the lower rank),
    each rank's groups then in path order. Every rank computes the same deal from the same
    footers. Dealt by position instead (``groups[rank::size]``), files of full groups plus a
    small tail gave some ranks every tail; each rank trains the smallest shard's step count, so
    the others' extra rows went unused every epoch (a third of them in a common layout)."""
    loads = [0] * size
    shards: list[list[RowGroup]] = [[] for _ in range(size)]
    for group in sorted(groups, key=lambda g: (-g.rows, g.path, g.index)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        shards[rank].append(group)
        loads[rank] += group.rows
    order = {(g.path, g.index): i for i, g in enumerate(groups)}
    return [sorted(shard, key=lambda g: order[(g.path, g.index)]) for shard in shards]


def check_numeric_columns(fs: pafs.FileSystem, group: RowGroup, url: str, columns: list[str]) -> None:
    """Refuse, before any epoch, columns that the dataset lacks or that are not numbers, naming
    them (the first file's schema stands for all: a committed split has one schema)."""
    check_column_kinds(fs, group, url, {c: "number" for c in columns})


_KINDS = {"number": lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
          "integer": pa.types.is_integer, "binary": lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)}
_FIX = {"number": "the loader reads integer and float columns only; encode it as numbers in the dataset job",
        "integer": "the label must be an integer class column",
        "binary": "the image must be a column of encoded images (NdarrayCodec bytes)"}


def check_column_kinds(fs: pafs.FileSystem, group: RowGroup, url: str, kinds: dict[str, str]) -> None:
    """Refuse, before any epoch, columns the dataset lacks or whose type is not the kind asked
    for ("number", "integer" or "binary"), naming the column, its type and the fix."""
    schema = pq.ParquetFile(fs.open_input_file(group.path)).schema_arrow
    missing = [c for c in kinds if c not in schema.names]
    if missing:
        raise ValueError(f"columns {missing} are not in the dataset at {shown(url)}; it has {schema.names}")
    for name, kind in kinds.items():
        found = schema.field(name).type
        if not _KINDS[kind](found):
            raise ValueError(f"column {name!r} is {found}: {_FIX[kind]}")


def shown(url: str) -> str:
    """``url`` fit for a message or a log: without the credentials an S3 URL may carry
    (``s3://KEY:SECRET@bucket/...``) and without its query (server options)."""
    parts = urlsplit(str(redacted(url)))  # the login runs to the last '@': secret keys hold '/'s
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def memory_map_enabled() -> bool:
    """``DLPIPE_MEMORY_MAP``: 1 (the default) maps local files, 0 reads them with pread."""
    raw = os.environ.get("DLPIPE_MEMORY_MAP", "1")
    if raw not in ("0", "1"):
        raise ValueError(f"DLPIPE_MEMORY_MAP={raw!r} must be 1 (map local Parquet files, the default) "
                         f"or 0 (read them with pread)")
    return raw == "1"


def open_file(fs: pafs.FileSystem, path: str, memory_map: bool | None = None):
    """A random-access file for ``path``. A local one is memory-mapped (unless ``memory_map`` is
    False, or None and ``DLPIPE_MEMORY_MAP=0``), and its map reused by later reads in this
    process. Maps are keyed by the file's identity (inode, size, modification time), so a file
    replaced at the same path is mapped afresh (and the old map dropped); a file must not be
    truncated in place while it is read (committed splits never are)."""
    if not isinstance(fs, pafs.LocalFileSystem) or not (memory_map_enabled() if memory_map is None else memory_map):
        return fs.open_input_file(path)
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _maps_lock:
        mm = _maps.get(key)
        if mm is not None:
            _maps.move_to_end(key)
            return mm
    mm = pa.memory_map(path)  # thread-safe for the positional reads that Parquet makes
    with _maps_lock:
        for old in [k for k in _maps if k[0] == path]:  # a replaced file's map: let its space go
            del _maps[old]
        _maps[key] = mm
        while len(_maps) > MAPS_KEPT:  # an evicted map closes once no reader holds it
            _maps.popitem(last=False)
    return mm


def read_row_group(fs: pafs.FileSystem, g: RowGroup, columns: list[str]):
    """One row group's ``columns`` as an Arrow table, checked against its footer's row count and
    for nulls: a truncated file or an incomplete row fails here, with the file and column named."""
    table = pq.ParquetFile(open_file(fs, g.path)).read_row_group(g.index, columns=columns, use_threads=False)
    _check(table, g, columns)
    return table


def decode_chunk_bytes() -> int:
    """The decoded bytes per read: ``DLPIPE_DECODE_CHUNK_BYTES`` if set, else ``CHUNK_BYTES``."""
    raw = os.environ.get("DLPIPE_DECODE_CHUNK_BYTES")
    if raw is None:
        return CHUNK_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"DLPIPE_DECODE_CHUNK_BYTES={raw!r} must be a positive number of bytes "
                         f"(unset it for the default, {CHUNK_BYTES})")
    return value


def column_chunks(fs: pafs.FileSystem, g: RowGroup, columns: list[str], chunk_bytes: int | None = None,
                  memory_map: bool | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """One row group's ``columns`` a few at a time: ``(index of the first, their numpy arrays)``,
    with ``read_row_group``'s checks. Use each chunk before asking for the next.

    Why not the whole row group at once: pyarrow then reads every column chunk before decoding
    any, so by the time a column is decoded, and again when it is copied out, its bytes have
    left the cache. Two columns at a time decode the same row groups 1.6x to 1.8x faster
    (``benchmarks/loader.py``, docs/benchmarks.md). Values are taken as 4 bytes wide to size
    the chunks; ``chunk_bytes`` defaults to ``decode_chunk_bytes()``.

    On S3 and other remote file systems a request costs more than the cache: the row group is
    read whole, its column chunks fetched in a few coalesced requests (pyarrow's ``pre_buffer``)
    instead of one request each: 26x faster against moto's S3 server (``benchmarks/loader_s3.py``).
    Local files are read through ``open_file``'s kept memory maps (``memory_map``: as there)."""
    remote = not isinstance(fs, pafs.LocalFileSystem)
    per = len(columns) if remote else max(1, (chunk_bytes or decode_chunk_bytes()) // max(1, 4 * g.rows))
    pf = pq.ParquetFile(open_file(fs, g.path, memory_map), pre_buffer=remote)
    for first in range(0, len(columns), per):
        names = columns[first:first + per]
        table = pf.read_row_group(g.index, columns=names, use_threads=False)
        _check(table, g, names)
        yield first, [table.column(name).to_numpy() for name in names]


def _check(table, g: RowGroup, columns: list[str]) -> None:
    if table.num_rows != g.rows:  # a truncated or concurrently replaced file
        raise IOError(f"{g.path} row group {g.index}: read {table.num_rows} rows, its footer says {g.rows}")
    for name in columns:
        nulls = table.column(name).null_count
        if nulls:
            raise ValueError(f"{g.path} row group {g.index}: column {name!r} has {nulls} nulls; "
                             f"training needs complete rows (the data gate's not_null rule catches this)")
