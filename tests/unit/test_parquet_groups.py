"""Reading row groups a few columns at a time: every column once, in order, with the checks; local
files through kept memory maps."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training import parquet_groups
from training.parquet_groups import (CHUNK_BYTES, column_chunks, decode_chunk_bytes, list_row_groups,
                                     memory_map_enabled, open_file, shown)

NAMES = ["a", "b", "c", "d", "e"]


@pytest.fixture
def one_file(tmp_path):
    """One file, two row groups of 1000 rows; column k holds k * 10000 + row."""
    i = np.arange(2000)
    pq.write_table(pa.table({n: (k * 10000 + i).astype(np.float32) for k, n in enumerate(NAMES)}),
                   tmp_path / "part-0.parquet", row_group_size=1000)
    return tmp_path


@pytest.mark.parametrize("chunk_bytes, sizes", [
    (8000, [2, 2, 1]),  # 1000 rows x 4 bytes: two columns per read
    (100, [1, 1, 1, 1, 1]),  # smaller than one column: still one column per read
    (1 << 20, [5]),
])
def test_chunks_cover_every_column_once_in_order(one_file, chunk_bytes, sizes):
    fs, groups = list_row_groups(f"file://{one_file}")
    chunks = list(column_chunks(fs, groups[1], NAMES, chunk_bytes))
    assert [len(values) for _, values in chunks] == sizes
    assert [first for first, _ in chunks] == list(np.cumsum([0] + sizes[:-1]))
    columns = [v for _, values in chunks for v in values]
    for k, values in enumerate(columns):
        np.testing.assert_array_equal(values, k * 10000 + np.arange(1000, 2000, dtype=np.float32))


def test_a_null_in_a_later_chunk_is_named(tmp_path):
    data = {n: pa.array([1.0, 2.0], pa.float32()) for n in NAMES}
    data["d"] = pa.array([1.0, None], pa.float32())
    pq.write_table(pa.table(data), tmp_path / "part-0.parquet")
    fs, groups = list_row_groups(f"file://{tmp_path}")
    chunks = column_chunks(fs, groups[0], NAMES, chunk_bytes=8)  # one column per read
    with pytest.raises(ValueError, match="column 'd' has 1 nulls"):
        list(chunks)


def test_the_chunk_size_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("DLPIPE_DECODE_CHUNK_BYTES", raising=False)
    assert decode_chunk_bytes() == CHUNK_BYTES
    monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", "4096")
    assert decode_chunk_bytes() == 4096
    for bad in ("0", "-1", "half"):
        monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", bad)
        with pytest.raises(ValueError, match=f"DLPIPE_DECODE_CHUNK_BYTES='{bad}' must be a positive number"):
            decode_chunk_bytes()


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no .parquet files under file://{tmp_path}/absent: is it a committed"):
        list_row_groups(f"file://{tmp_path}/absent")


def test_urls_are_shown_without_credentials_or_query():
    assert shown("s3://KEY:SECRET@bucket/ds/train?endpoint_override=h:9000&scheme=http") == "s3://bucket/ds/train"
    assert shown("file:///data/ds/train") == "file:///data/ds/train"
    assert shown("s3://KEY:SEC/RET@bucket/ds/train") == "s3://bucket/ds/train"  # secret keys hold '/'s


def test_a_url_pyarrow_cannot_parse_is_refused_without_its_credentials():
    from dlpipe.errors import ConfigError

    url = "s3://AKIAEXAMPLE:wJalr/XUtnFEMI+K7MDENG@bucket/train?endpoint_override=127.0.0.1:9&scheme=http"
    with pytest.raises(ConfigError, match=r"dataset url='s3://bucket/train'.*AWS chain") as e:
        list_row_groups(url)  # pyarrow's own error repeated the URL, secret key and all
    assert "wJalr" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)
    with pytest.raises(ConfigError, match=r"pyarrow: .*bogus") as e:  # pyarrow's reason stays when it can
        list_row_groups("s3://bucket/train?bogus=1")


def test_local_files_are_mapped_once_and_the_map_reused(one_file, monkeypatch):
    monkeypatch.delenv("DLPIPE_MEMORY_MAP", raising=False)
    fs, groups = list_row_groups(f"file://{one_file}")
    first = open_file(fs, groups[0].path)
    assert isinstance(first, pa.MemoryMappedFile)
    assert open_file(fs, groups[1].path) is first  # the same file: the same map
    monkeypatch.setenv("DLPIPE_MEMORY_MAP", "0")
    assert not isinstance(open_file(fs, groups[0].path), pa.MemoryMappedFile)
    for values in (column_chunks(fs, groups[1], NAMES, 8000, memory_map=m) for m in (True, False)):
        np.testing.assert_array_equal([v for _, vs in values for v in vs][4], 40000 + np.arange(1000, 2000))


def test_a_file_replaced_at_the_same_path_is_read_afresh(tmp_path):
    """Maps are kept by the file's identity, not its path: a new version is not read from the old map."""
    path = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"a": np.zeros(10, np.float32)}), path)
    fs, groups = list_row_groups(f"file://{tmp_path}")
    assert list(column_chunks(fs, groups[0], ["a"], memory_map=True))[0][1][0].sum() == 0
    new = tmp_path / "part-0.parquet.new"
    pq.write_table(pa.table({"a": np.ones(10, np.float32)}), new)
    new.replace(path)  # what a commit does: write aside, rename over
    assert list(column_chunks(fs, groups[0], ["a"], memory_map=True))[0][1][0].sum() == 10
    assert [key[0] for key in parquet_groups._maps].count(str(path)) == 1  # the old version's map is gone


def test_no_more_maps_are_kept_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_groups, "MAPS_KEPT", 2)
    for k in range(4):
        pq.write_table(pa.table({"a": np.zeros(10, np.float32)}), tmp_path / f"part-{k}.parquet")
    fs, groups = list_row_groups(f"file://{tmp_path}")
    for g in groups:
        open_file(fs, g.path, memory_map=True)
    kept = [key[0] for key in parquet_groups._maps]
    assert kept == [groups[2].path, groups[3].path]


def test_the_memory_map_setting_is_checked(monkeypatch):
    monkeypatch.delenv("DLPIPE_MEMORY_MAP", raising=False)
    assert memory_map_enabled()
    monkeypatch.setenv("DLPIPE_MEMORY_MAP", "0")
    assert not memory_map_enabled()
    monkeypatch.setenv("DLPIPE_MEMORY_MAP", "yes")
    with pytest.raises(ValueError, match="DLPIPE_MEMORY_MAP='yes' must be 1 .map local Parquet files, the default. or 0"):
        memory_map_enabled()


def test_a_forked_child_starts_without_the_parents_maps(one_file):
    import os

    fs, groups = list_row_groups(f"file://{one_file}")
    open_file(fs, groups[0].path, memory_map=True)
    assert parquet_groups._maps
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report how many maps it sees, then read through a fresh one
        os.write(w, bytes([len(parquet_groups._maps)]))
        ok = list(column_chunks(fs, groups[0], NAMES, memory_map=True))[0][1][0][0] == 0
        os._exit(0 if ok else 1)
    inherited = os.read(r, 1)[0]
    _, status = os.waitpid(pid, 0)
    assert inherited == 0 and os.WEXITSTATUS(status) == 0
