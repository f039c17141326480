"""The row groups of a committed Parquet/Petastorm split: listed from the file footers, read with
checks. Imports neither torch nor the rest of ``training``, so decoding worker processes
(``training.decode_pool``) start quickly."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    rows: int


def list_row_groups(url: str) -> tuple[pafs.FileSystem, list[RowGroup]]:
    """Every row group of the ``*.parquet`` files under ``url`` (file:// or s3://), in path order."""
    fs, root = pafs.FileSystem.from_uri(url)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    paths = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                   and not i.base_name.startswith((".", "_")))
    if not paths:
        raise FileNotFoundError(f"no .parquet files under {url}: is it a committed dataset split?")
    groups = []
    for path in paths:
        meta = pq.ParquetFile(fs.open_input_file(path)).metadata
        groups += [RowGroup(path, i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return fs, groups


def read_row_group(fs: pafs.FileSystem, g: RowGroup, columns: list[str]):
    """One row group's ``columns`` as an Arrow table, checked against its footer's row count and
    for nulls: a truncated file or an incomplete row fails here, with the file and column named."""
    table = pq.ParquetFile(fs.open_input_file(g.path)).read_row_group(g.index, columns=columns,
                                                                      use_threads=False)
    if table.num_rows != g.rows:  # a truncated or concurrently replaced file
        raise IOError(f"{g.path} row group {g.index}: read {table.num_rows} rows, its footer says {g.rows}")
    for name in columns:
        nulls = table.column(name).null_count
        if nulls:
            raise ValueError(f"{g.path} row group {g.index}: column {name!r} has {nulls} nulls; "
                             f"training needs complete rows (the data gate's not_null rule catches this)")
    return table
