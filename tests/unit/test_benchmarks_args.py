"""The benchmark scripts' guards: argument checks through argparse, a --data folder of real files
left alone, and the GPU stall's baseline timed as the loaders are (run on the CPU here)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import loader as bench_loader
from benchmarks.common import int_at_least, positive_int
from benchmarks.horovod_overhead import widths


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench")
    ap.add_argument("--rows", type=positive_int, default=10)
    ap.add_argument("--repeats", type=int_at_least(2, ": the medians leave out round 1"), default=3)
    return ap


@pytest.mark.parametrize("argv, expected", [
    (["--rows", "0"], "argument --rows: 0 is below 1; give 1 or more"),
    (["--rows", "-5"], "argument --rows: -5 is below 1; give 1 or more"),
    (["--rows", "2M"], "argument --rows: '2M' is not a whole number; give one >= 1"),
    (["--repeats", "1"], "argument --repeats: 1 is below 2: the medians leave out round 1; give 2 or more"),
])
def test_a_bad_number_stops_argparse_naming_the_flag_the_value_and_the_fix(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    assert expected in capsys.readouterr().err


def test_good_numbers_pass():
    assert vars(_parser().parse_args(["--rows", "8", "--repeats", "2"])) == {"rows": 8, "repeats": 2}


@pytest.mark.parametrize("argv, expected", [
    (["--repeats", "1"], "argument --repeats: 1 is below 2"),
    (["--rows", "100"], "--rows 100 is below --batch 8192"),
    (["--rows", "5", "--batch", "4"], "--rows 5 is below 8: the dataset has 8 files"),
    (["--workers", "0"], "argument --workers: 0 is below 1"),
    (["--launch-ops", "-1"], "argument --launch-ops: -1 is below 0"),
])
def test_the_loader_benchmark_refuses_bad_arguments_before_writing_data(argv, expected, tmp_path, monkeypatch,
                                                                         capsys):
    data = tmp_path / "data"
    monkeypatch.setattr(sys, "argv", ["loader", "--no-gpu", "--data", str(data), *argv])
    with pytest.raises(SystemExit) as e:
        bench_loader.main()
    assert e.value.code == 2
    assert expected in capsys.readouterr().err
    assert not data.exists()


def test_a_data_folder_with_other_files_is_refused_and_left_intact(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    (tmp_path / "part-00000.parquet").write_text("not ours: no marker")
    with pytest.raises(SystemExit, match=r"--data .* holds files this benchmark did not write \(notes.txt\)"):
        bench_loader.make_dataset(tmp_path, 64, 2)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    assert (tmp_path / "part-00000.parquet").read_text() == "not ours: no marker"


def test_part_files_without_a_marker_are_not_taken_for_ours(tmp_path):
    (tmp_path / "part-00000.parquet").write_text("someone else's")
    with pytest.raises(SystemExit, match=r"part-\*\.parquet files but no _rows=\.\.\. marker"):
        bench_loader.make_dataset(tmp_path, 64, 2)
    assert (tmp_path / "part-00000.parquet").exists()


def test_an_empty_folder_is_written_and_a_dataset_of_another_size_replaced(tmp_path):
    bench_loader.make_dataset(tmp_path, 64, 2)
    assert pq.read_table(tmp_path).num_rows == 64
    bench_loader.make_dataset(tmp_path, 80, 2)
    assert pq.read_table(tmp_path).num_rows == 80
    assert sorted(p.name for p in tmp_path.glob("_rows=*")) == ["_rows=80,features=2"]


def test_a_write_cut_short_is_still_ours(tmp_path):
    (tmp_path / "_rows=incomplete").touch()
    (tmp_path / "part-00000.parquet").write_text("half written")
    bench_loader.make_dataset(tmp_path, 16, 2)
    assert pq.read_table(tmp_path).num_rows == 16


def test_every_file_gets_a_row(tmp_path):
    bench_loader.make_dataset(tmp_path, 9, 2)  # ceil-sized files would leave the last ones empty or negative
    counts = [pq.ParquetFile(f).metadata.num_rows for f in sorted(tmp_path.glob("part-*.parquet"))]
    assert counts == [2, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="rows=7 is below files=8"):
        bench_loader.make_dataset(tmp_path / "small", 7, 2)


def test_the_cache_budget_is_the_dataset_decoded(tmp_path):
    bench_loader.make_dataset(tmp_path, 64, 3)
    assert bench_loader.decoded_bytes(tmp_path, 3) == 64 * 4 * 4  # 3 features and the label, float32
    pinned = bench_loader.decoded_bytes(tmp_path, 3, pinned=True)  # 8 blocks of 128 bytes
    assert pinned == 8 * 128


def test_the_stall_baseline_is_the_best_of_two_passes_like_each_loader(monkeypatch):
    passes = []

    def recording_best_pass(batches, consume, passes_=2):
        passes.append(passes_)
        return real(batches, consume, passes_)

    real = bench_loader.best_pass
    monkeypatch.setattr(bench_loader, "best_pass", recording_best_pass)
    x, y = np.ones((8, 4), np.float32), np.ones(8, np.float32)
    out = bench_loader.gpu_stall({"in memory": lambda: [(x, y), (x, y)]}, features=4, batch=8, rows=16,
                                 device="cpu")
    assert passes == [2, 2]  # the pre-staged baseline, then the loader
    assert [r["fed by"] for r in out] == ["batches already on the GPU", "in memory"]
    with pytest.raises(ValueError, match="rows=4 is below batch=8"):
        bench_loader.gpu_stall({}, features=4, batch=8, rows=4, device="cpu")


def test_hidden_widths_are_checked():
    assert widths("256,128") == [256, 128]
    for bad in ("256,,1", "0,4", "wide"):
        with pytest.raises(argparse.ArgumentTypeError):
            widths(bad)
