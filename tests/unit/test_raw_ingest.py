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


def test_a_link_in_a_landing_folder_or_a_name_with_a_trailing_newline_commits_nothing(dlpipe_home, tmp_path, capsys):
    """A link planted in a landing folder copied whatever file it pointed at (one this account
    can read, another team's) into the partition, and recorded the link's path as the source.
    ``match`` with ``$`` took 'trips\\n' as a name no spec can read."""
    private = _write(tmp_path / "other_team" / "private.parquet", 2)
    landed = tmp_path / "landing"
    _write(landed / "a.parquet", 2)
    (landed / "b.parquet").symlink_to(private)
    code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))
    assert code == 2 and f"PATH='{landed / 'b.parquet'}'" in err and f"a symbolic link (to {private})" in err, err
    (landed / "b.parquet").unlink()
    (landed / "c.parquet").symlink_to(tmp_path / "gone.parquet")  # a dangling one too, not 'no such file'
    code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed))
    assert code == 2 and "a symbolic link" in err, err
    code, _, err = _ingest(capsys, "fraud_trips\n", "--day", "2026-02-01", str(landed / "a.parquet"))
    assert code == 2 and "NAME=" in err
    assert commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01")) == []
    assert not [p for p in dlpipe_home.rglob("*") if "\n" in p.name]


def test_the_same_files_committed_again_replace_a_damaged_newest_version(dlpipe_home, tmp_path, capsys):
    """The obvious repair of a damaged day, committing its files again, was skipped as 'exists':
    the newest version had the same config and code. Its files are now looked at first."""
    a = _write(tmp_path / "a.parquet", 5)
    assert _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a))[0] == 0
    key = StageKey("raw", "fraud_trips", "dt=2026-02-01")
    [first] = commit.committed(key)
    [copy] = commit.files(first)
    with open(copy, "r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a))
    assert code == 0 and "skipped" not in out
    old, new = commit.committed(key)
    assert old["id"] == first["id"] and new["config"]["replaces"] == first["id"]
    commit.verify(new)
    assert _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a))[1].count("skipped") == 1  # now sound


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


def test_a_file_named_twice_or_twin_bytes_or_no_rows_are_refused(dlpipe_home, tmp_path, capsys):
    landed = tmp_path / "landing"
    a = _write(landed / "a.parquet", 2)
    _write(landed / "b.parquet", 1, start=2)
    (tmp_path / "link.parquet").symlink_to(a)
    for args, shown, fix in (([str(landed), str(a)], "a.parquet", "named twice"),
                             ([str(a), str(tmp_path / "link.parquet")], "link.parquet", "a symbolic link")):
        code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", *args)
        assert code == 2 and shown in err and fix in err, err
    twin = tmp_path / "copy.parquet"
    twin.write_bytes(a.read_bytes())
    code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a), str(twin))
    assert code == 2 and "hold the same bytes" in err
    empty = _write(tmp_path / "empty" / "e.parquet", 0)
    code, _, err = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(empty))
    assert code == 2 and "hold no rows" in err
    assert commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01")) == []
    # the same files in another order are the same version
    assert _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(landed / "b.parquet"), str(a))[0] == 0
    code, out, _ = _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a), str(landed / "b.parquet"))
    assert code == 0 and "skipped (exists)" in out


def test_a_file_rewritten_while_it_is_committed_commits_nothing(dlpipe_home, tmp_path, monkeypatch):
    from dlpipe import raw_ingest
    from dlpipe.errors import IntegrityError
    from dlpipe.runctx import RunContext

    a = _write(tmp_path / "a.parquet", 2)
    real_copy = raw_ingest.shutil.copyfile

    def landing_job_rewrites_it(src, dst):  # the landing job rewrites the file between hash and copy
        _write(Path(src), 3)
        return real_copy(src, dst)

    monkeypatch.setattr(raw_ingest.shutil, "copyfile", landing_job_rewrites_it)
    with pytest.raises(IntegrityError, match="changed while it was being committed"):
        raw_ingest.commit_raw_files("fraud_trips", DAY, [a], RunContext())
    assert commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01")) == []


@pytest.mark.parametrize("swap", ["more rows", "another schema"])
def test_a_file_replaced_between_its_footer_read_and_its_hash_commits_nothing(dlpipe_home, tmp_path, monkeypatch,
                                                                               swap):
    """The landing job swaps the file after its rows and schema were read but before it is
    hashed: the hash then matches the copy, and only the copy's own footer shows the change."""
    from dlpipe import raw_ingest
    from dlpipe.errors import ConfigError, IntegrityError
    from dlpipe.runctx import RunContext

    a, b = _write(tmp_path / "a.parquet", 2), _write(tmp_path / "b.parquet", 2, start=2)
    real_hash, swapped = raw_ingest.sha256_file, []

    def swapped_first(path):
        if Path(path) == b and not swapped:  # after the footers were read, before b is hashed
            swapped.append(_write(b, 5, start=2, **({"extra": [1] * 5} if swap == "another schema" else {})))
        return real_hash(path)

    monkeypatch.setattr(raw_ingest, "sha256_file", swapped_first)
    raised = IntegrityError if swap == "more rows" else ConfigError
    with pytest.raises(raised, match="changed while it was being committed" if swap == "more rows" else "schema"):
        raw_ingest.commit_raw_files("fraud_trips", DAY, [a, b], RunContext())
    assert commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01")) == []


def test_an_upgrade_of_dlpipe_does_not_make_the_same_bytes_a_new_version(dlpipe_home, tmp_path, capsys):
    """The code identity of an ingested day is a format version, not the module's hash: with
    the hash, every re-ingest after an upgrade recomputed every feature and dataset downstream."""
    from dlpipe import raw_ingest

    a = _write(tmp_path / "a.parquet", 2)
    assert _ingest(capsys, "fraud_trips", "--day", "2026-02-01", str(a))[0] == 0
    [m] = commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01"))
    assert m["code"]["sources_hash"] == raw_ingest.RAW_FORMAT


def test_two_corrections_committed_at_once_chain_one_after_the_other(dlpipe_home, tmp_path):
    """Both read the same newest version and replaced it: the chain forked, and one correction
    was silently shadowed. The partition's lock makes the second replace the first."""
    import threading

    from dlpipe import raw_ingest
    from dlpipe.runctx import RunContext

    _write(tmp_path / "v1.parquet", 2)
    raw_ingest.commit_raw_files("fraud_trips", DAY, [tmp_path / "v1.parquet"], RunContext())
    fixes = [_write(tmp_path / f"fix{k}.parquet", 3 + k) for k in range(2)]
    barrier = threading.Barrier(2)
    results = []

    def ingest(f: Path) -> None:
        barrier.wait()
        results.append(raw_ingest.commit_raw_files("fraud_trips", DAY, [f], RunContext()))

    threads = [threading.Thread(target=ingest, args=(f,)) for f in fixes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    versions = commit.committed(StageKey("raw", "fraud_trips", "dt=2026-02-01"))
    assert len(versions) == 3 and not any(r.skipped for r in results)
    assert versions[1]["config"]["replaces"] == versions[0]["id"]
    assert versions[2]["config"]["replaces"] == versions[1]["id"]  # not versions[0]: no fork


def test_demo_data_never_replaces_a_day_a_team_ingested(dlpipe_home, tmp_path, capsys):
    a = _write(tmp_path / "a.parquet", 2)
    assert _ingest(capsys, "trips", "--day", "2026-01-02", str(a))[0] == 0
    code = cli.main(["demo-data", "--days", "3", "--rows-per-day", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "raw/trips/dt=2026-01-02 holds data that demo-data did not write" in err
    assert commit.committed(StageKey("raw", "trips", "dt=2026-01-01")) == []  # refused before any day
    [found], _ = committed_days("trips", "raw", [date(2026, 1, 2)], required=True)
    assert found["summary"]["rows"] == 2
