"""`dlpipe ingest-raw`: a team's own Parquet files committed as a raw day partition, the only
raw data the feature stage reads."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlpipe import cli, commit
from dlpipe.commit import StageKey
from dlpipe.errors import InputNotReady
from feature_jobs.feature_stage import committed_days

DAY = date(2026, 2, 1)


def _write(path: Path, rows: int, start: int = 0, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"trip_id": [f"t{i}" for i in range(start, start + rows)],
                             "prep_minutes": [float(i) for i in range(rows)], **extra}), path)
    return path


def _ingest(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["ingest-raw", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_files_are_committed_once_and_a_corrected_day_is_a_new_version(dlpipe_home, tmp_path, capsys):
    landed = tmp_path / "landing"
    _write(landed / "a.parquet", 5)
    _write(landed / "b.parquet", 3, start=5)

    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))
    assert code == 0 and "fraud_trips/dt=2026-02-01" in out and "committed" in out
    [first] = commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01"))
    assert first["summary"]["rows"] == 8
    copied = commit.files(first, ".parquet")
    assert [p.name for p in copied] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(copied[1]).column("trip_id").to_pylist() == ["t5", "t6", "t7"]
    commit.verify(first)  # the manifest vouches for the copies' bytes

    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed / "a.parquet"),
                           str(landed / "b.parquet"))
    assert code == 0 and "skipped (exists)" in out
    assert len(commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01"))) == 1

    _write(landed / "b.parquet", 4, start=5)  # the day landed again, corrected
    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))
    assert code == 0 and "committed: supersedes the version of 8 rows in 2 file(s)" in out
    [found], missing = committed_days("fraud_trips", "raw", [DAY], required=True)
    assert found["summary"]["rows"] == 9 and missing == []

    _write(landed / "b.parquet", 3, start=5)  # the correction was wrong: back to the first files
    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))
    assert code == 0 and "committed: supersedes the version of 9 rows" in out
    [found], _ = committed_days("fraud_trips", "raw", [DAY], required=True)
    assert found["summary"]["rows"] == 8 and found["config"]["files"] == first["config"]["files"]
    assert len(commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01"))) == 3
    assert "skipped (exists)" in _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))[1]


@pytest.mark.parametrize("make, args, shown, fix", [
    (lambda d: (d / "notes.parquet").write_text("not parquet"), ["notes.parquet"], "notes.parquet",
     "not a readable Parquet file"),
    (lambda d: (_write(d / "a.parquet", 2), _write(d / "b.parquet", 2, city=["x", "y"])), ["."], "b.parquet",
     "schema differs from a.parquet"),
    (lambda d: None, ["missing.parquet"], "missing.parquet", "no such file or directory"),
    (lambda d: (d / "empty").mkdir(), ["empty"], "empty", "holds no *.parquet file"),
])
def test_bad_files_are_refused_by_name_and_nothing_is_committed(dlpipe_home, tmp_path, capsys, make, args,
                                                                 shown, fix):
    landed = tmp_path / "landing"
    landed.mkdir()
    make(landed)
    code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", *[str(landed / a) for a in args])
    assert code == 2 and shown in err and fix in err
    assert commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01")) == []


def test_a_bad_name_or_day_is_refused(dlpipe_home, tmp_path, capsys):
    f = _write(tmp_path / "a.parquet", 2)
    code, _, err = _ingest(capsys, "Fraud Trips", "--day", "2026-02-01", str(f))
    assert code == 2 and "NAME='Fraud Trips'" in err and "features.raw" in err
    with pytest.raises(SystemExit):
        cli.main(["ingest-raw", "fraud_trips", "--day", "01/02/2026", str(f)])
    assert "01/02/2026" in capsys.readouterr().err


def test_files_written_straight_into_a_day_are_named_with_the_command_that_commits_them(dlpipe_home):
    with pytest.raises(InputNotReady, match=r"no committed raw partition fraud_trips/dt=2026-02-01 yet.*"
                                            r"dlpipe ingest-raw fraud_trips --day 2026-02-01 PATH"):
        committed_days("fraud_trips", "raw", [DAY], required=True, late_ok=True)
    folder = StageKey("raw", "fraud_trips", "dt=2026-02-01").dir()
    _write(folder / "part-0.parquet", 3)
    with pytest.raises(InputNotReady, match=r"1 Parquet file\(s\) sit in .*never committed.*"
                                            rf"dlpipe ingest-raw fraud_trips --day 2026-02-01 {folder}"):
        committed_days("fraud_trips", "raw", [DAY], required=True, late_ok=True)
    assert cli.main(["ingest-raw", "fraud_trips", "--day", "2026-02-01", str(folder)]) == 0
    [found], _ = committed_days("fraud_trips", "raw", [DAY], required=True, late_ok=True)
    assert found["summary"]["rows"] == 3
