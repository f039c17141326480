"""Feature and dataset stages under failure, with real Spark (RELIABILITY.md rows 1 to 5).

Also: a run of several intervals in a row (what a backfill does) gives, for each day, exactly
the partition a single-interval run of that day gives.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from dlpipe import audit, commit
from dlpipe.commit import StageKey
from dlpipe.datasets import open_reader, resolve
from dlpipe.errors import NotCommittedError, SubprocessFailed
from dlpipe.proc import kill_group
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import local_spark_submit
from feature_jobs.dataset_stage import DatasetConfig, materialize_dataset
from feature_jobs.feature_stage import FeatureJobConfig, extract_features
from tests.conftest import run_processes

pytestmark = pytest.mark.integration
CFG = FeatureJobConfig(lookback_days=2, num_files=3)
DAY3 = ("2026-01-03", "2026-01-04")
KEY3 = StageKey("features", "eta", "dt=2026-01-03")


def _raw(days: int = 3, rows: int = 3000) -> None:
    from dlpipe.demo_data import DemoDataConfig, write_raw

    write_raw(DemoDataConfig(start=date(2026, 1, 1), days=days, rows_per_day=rows, restaurants=40),
              RunContext())


def _reference_hash(tmp_path: Path, monkeypatch) -> str:
    """Content hash of day 3's features from an uninterrupted run in a separate home."""
    home = tmp_path / "reference_home"
    monkeypatch.setenv("DLPIPE_HOME", str(home))
    _raw()
    ref = extract_features(*DAY3, config=CFG, run=RunContext(), submit=local_spark_submit())
    return ref.manifest["summary"]["content_sha256"]


def test_killed_mid_write_then_retry_gives_the_uninterrupted_result(tmp_path, monkeypatch, dlpipe_home):
    reference = _reference_hash(tmp_path, monkeypatch)
    monkeypatch.setenv("DLPIPE_HOME", str(dlpipe_home))
    _raw()

    procs: list = []
    killed = threading.Event()

    def kill_when_output_appears() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            files = [p for p in (KEY3.dir() / "attempts").glob("*/data/**/*") if p.is_file()]
            if files and procs:
                kill_group(procs[0], grace_s=0)  # SIGTERM then SIGKILL the whole spark-submit group
                killed.set()
                return
            time.sleep(0.05)

    submit = local_spark_submit("local[2]", timeout_s=300, on_start=procs.append)

    watcher = threading.Thread(target=kill_when_output_appears, daemon=True)
    watcher.start()
    with pytest.raises(SubprocessFailed):
        extract_features(*DAY3, config=CFG, run=RunContext(try_number=1), submit=submit)
    assert killed.is_set(), "the job finished before any output file appeared"
    assert commit.committed(KEY3) == []  # the half-written attempt is not visible

    retry = extract_features(*DAY3, config=CFG, run=RunContext(try_number=2), submit=local_spark_submit())
    assert retry.manifest["summary"]["content_sha256"] == reference
    assert retry.manifest["summary"]["rows"] == 3000
    attempts = sorted(p.name for p in (KEY3.dir() / "attempts").iterdir())
    assert len(attempts) == 2 and retry.manifest["attempt_id"] in attempts
    # readers get only the committed attempt's files
    files = commit.files(retry.manifest, ".parquet")
    assert all(retry.manifest["attempt_id"] in str(p) for p in files) and len(files) == 3
    assert [e["event"] for e in audit.read() if e["stage"] == "features"] == ["started", "failed", "started", "committed"]


def test_rerun_after_success_skips_with_the_same_manifest():
    _raw()
    first = extract_features(*DAY3, config=CFG, run=RunContext(run_id="a"), submit=local_spark_submit())
    again = extract_features(*DAY3, config=CFG, run=RunContext(run_id="b"), submit=local_spark_submit())
    assert again.skipped and again.manifest == first.manifest
    events = [(e["event"], e["run"]["run_id"]) for e in audit.read() if e["stage"] == "features"]
    assert events == [("started", "a"), ("committed", "a"), ("skipped", "b")]


def _attempt(home: str, barrier, results) -> None:
    os.environ["DLPIPE_HOME"] = home
    from dlpipe.spark_submit import local_spark_submit as lss

    inner = lss("local[1]")

    def submit(app, args):
        inner(app, args)
        barrier.wait(timeout=300)  # both attempts have written all their data before committing

    r = extract_features(*DAY3, config=CFG, run=RunContext(run_id=f"p{os.getpid()}"), submit=submit)
    results.put((r.skipped, r.manifest["attempt_id"]))


def test_two_attempts_at_once_exactly_one_commits(dlpipe_home):
    _raw()
    got = run_processes(_attempt, [(str(dlpipe_home),)] * 2, timeout=600, barrier=True)
    assert sorted(s for s, _ in got) == [False, True]
    assert len({a for _, a in got}) == 1
    [winner] = commit.committed(KEY3)
    loser = next(p.name for p in (KEY3.dir() / "attempts").iterdir() if p.name != winner["attempt_id"])
    assert all(loser not in str(p) for p in commit.files(winner))
    assert sorted(e["event"] for e in audit.read() if e["stage"] == "features") == [
        "committed", "conflict", "started", "started"]


def test_crash_between_data_and_manifest_publishes_nothing():
    _raw()

    class Crash(Exception):
        pass

    def submit_then_crash(app, args):
        local_spark_submit()(app, args)  # all data written...
        raise Crash("worker lost before the commit")  # ...but the manifest never is

    with pytest.raises(Crash):
        extract_features(*DAY3, config=CFG, run=RunContext(), submit=submit_then_crash)
    assert commit.committed(KEY3) == []
    with pytest.raises(NotCommittedError):
        commit.latest(KEY3)
    retry = extract_features(*DAY3, config=CFG, run=RunContext(), submit=local_spark_submit())
    assert [m["id"] for m in commit.committed(KEY3)] == [retry.id]


def test_reader_refuses_uncommitted_data_and_reads_committed_data():
    _raw()
    submit = local_spark_submit()
    extract_features(*DAY3, config=CFG, run=RunContext(), submit=submit)

    def crash(app, args):
        submit(app, args)
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        materialize_dataset(*DAY3, config=DatasetConfig(window_days=1, num_files=2), features=CFG, run=RunContext(),
                            submit=crash)
    [orphan] = (commit.StageKey("datasets", "eta", "window_end=2026-01-03").dir() / "attempts").iterdir()
    with pytest.raises(NotCommittedError, match="not inside any committed dataset"):
        open_reader(str(orphan), "train")
    with pytest.raises(NotCommittedError, match="not inside any committed dataset"):
        resolve(f"file://{orphan}/train")

    ds = materialize_dataset(*DAY3, config=DatasetConfig(window_days=1, num_files=2), features=CFG, run=RunContext(),
                             submit=submit)
    rows = ds.manifest["summary"]["rows"]
    with open_reader(ds.id, "train", num_epochs=1) as reader:  # make_batch_reader
        assert sum(len(b.trip_id) for b in reader) == rows["train"]
    with open_reader(str(commit.location(ds.manifest) / "validation"), "validation", batch=False,
                     num_epochs=1) as reader:  # make_reader, decoding through the Unischema codecs
        assert sum(1 for _ in reader) == rows["validation"]
    import json
    import subprocess
    import sys

    shown = json.loads(subprocess.run([sys.executable, "-m", "dlpipe.cli", "dataset", "show", ds.id, "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert shown == json.loads(json.dumps(ds.manifest))  # what was committed, as stored
    table = subprocess.run([sys.executable, "-m", "dlpipe.cli", "dataset", "show",
                            str(commit.location(ds.manifest) / "train")], capture_output=True, text=True,
                           check=True).stdout
    assert "column statistics (train)" in table and "delivery_minutes" in table
    refused = subprocess.run([sys.executable, "-m", "dlpipe.cli", "dataset", "show", str(orphan)],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "not inside any committed dataset" in refused.stderr
    stats = ds.manifest["summary"]["stats"]["train"]
    assert stats["delivery_minutes"]["count"] == rows["train"] and stats["delivery_minutes"]["nulls"] == 0
    assert 0 < stats["distance_km"]["min"] <= stats["distance_km"]["mean"] <= stats["distance_km"]["max"]


def test_backfill_of_several_days_equals_single_day_runs(tmp_path, monkeypatch, dlpipe_home):
    _raw()
    backfill = {}
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        end = f"2026-01-0{int(day[-1]) + 1}"
        r = extract_features(day, end, config=CFG, run=RunContext(run_id=f"backfill {day}"),
                             submit=local_spark_submit())
        backfill[day] = r.manifest
    assert [len(commit.committed(StageKey("features", "eta", f"dt={d}"))) for d in backfill] == [1, 1, 1]

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "single"))
    _raw()
    single = extract_features(*DAY3, config=CFG, run=RunContext(), submit=local_spark_submit())
    assert single.manifest["summary"]["content_sha256"] == backfill["2026-01-03"]["summary"]["content_sha256"]
    assert single.manifest["summary"]["rows"] == backfill["2026-01-03"]["summary"]["rows"] == 3000


def test_rows_without_an_order_time_are_counted_by_the_job(tmp_path, monkeypatch, dlpipe_home, caplog):
    """A null order_ts compares neither before, in nor after the day: the Spark job counts those
    rows in its own partition, and the stage says so (they were in no count before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "source"))
    _raw()
    import json

    source = tmp_path / "source"
    mfile = next((source / "raw" / "trips" / "dt=2026-01-03" / "manifests").glob("*.json"))
    (day3,) = commit.files(json.loads(mfile.read_text()), ".parquet", source)
    table = pq.read_table(day3)
    order_ts = table.column("order_ts").to_pylist()
    order_ts[:7] = [None] * 7
    broken = table.set_column(table.schema.get_field_index("order_ts"), "order_ts",
                              pa.array(order_ts, table.schema.field("order_ts").type))
    monkeypatch.setenv("DLPIPE_HOME", str(dlpipe_home))
    _raw(days=2)

    def produce(attempt: Path) -> dict:
        pq.write_table(broken, attempt / "part-00000.parquet")
        return {"rows": broken.num_rows}

    commit.run_stage(StageKey("raw", "trips", "dt=2026-01-03"), inputs=[], config={"day": "2026-01-03"},
                     code={"sources_hash": "test"}, run=RunContext(), produce=produce)
    with caplog.at_level("WARNING", logger="feature_jobs.feature_stage"):
        summary = extract_features(*DAY3, config=CFG, run=RunContext(), submit=local_spark_submit()).manifest["summary"]
    assert summary["without_order_ts"] == 7 and summary["rows"] == summary["rows_in_interval"] - summary["duplicate_rows"]
    assert summary["interval_raw_rows"] == broken.num_rows
    assert "7 row(s) of raw/trips/dt=2026-01-03 have no order_ts" in caplog.text
