"""A feature partition's manifest lists the lookback days it was computed without, by date, so
that someone reading it can backfill exactly those raw days (a count would not say which)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

from dlpipe.runctx import RunContext
from feature_jobs.feature_stage import FeatureJobConfig, extract_features


def _fake_spark_job(app: str, args: list[str]) -> None:
    """Stands in for spark-submit: one Parquet part file in the spec's output directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = json.loads(Path(args[args.index("--spec") + 1]).read_text())
    out = Path(spec["output_dir"])
    out.mkdir(parents=True)
    pq.write_table(pa.table({"trip_id": ["a"], "n_inputs": [len(spec["input_files"])]}),
                   out / "part-00000-0c9e.snappy.parquet")
    Path(spec["stats_path"]).write_text(json.dumps({"input_rows": 1, "rows_in_interval": 1, "ordered_before_interval": 0,
                                                    "before_interval_not_in_lookback": 0, "ordered_after_interval": 0,
                                                    "after_lookback_reach": 0}))


def test_missing_history_days_are_listed_as_dates(small_raw):
    # small_raw commits 2026-01-01..03; day 3 with a 4-day lookback lacks 2025-12-30 and -31
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    end = datetime(2026, 1, 4, tzinfo=timezone.utc)
    summary = extract_features(start, end, config=FeatureJobConfig(lookback_days=4), run=RunContext(),
                               submit=_fake_spark_job).manifest["summary"]
    assert summary["history_days"] == 2
    assert summary["missing_history_days"] == ["2025-12-30", "2025-12-31"]


def test_a_history_day_without_a_column_the_job_reads_is_refused_before_spark(small_raw):
    """Spark takes a schema from one file and reads a column another file lacks as nulls: a
    history day written by an older ingestion without prep_minutes would quietly drop out of
    the restaurant means. The stage reads every input's footer first and names the file."""
    import pyarrow.parquet as pq
    import pytest

    from dlpipe import commit
    from dlpipe.errors import ConfigError

    from dlpipe.raw_ingest import commit_raw_files

    day2 = commit.latest(commit.StageKey("raw", "trips", "dt=2026-01-02"))
    [path] = commit.files(day2, ".parquet")
    older = path.parent.parent / "older.parquet"
    pq.write_table(pq.read_table(path).drop(["prep_minutes"]), older)  # the older ingestion's file
    commit_raw_files("trips", date(2026, 1, 2), [older], RunContext())
    submitted = []
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match=r"raw file .*dt=2026-01-02.*column prep_minutes='\(missing\)'.*floating"):
        extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=4), run=RunContext(),
                         submit=lambda app, args: submitted.append(app))
    assert submitted == []


def test_a_gap_in_the_raw_history_is_a_warning_that_says_what_to_clear(small_raw, caplog):
    """Days before the raw data's first day are no history yet (info). A day missing after it is
    late or lost data, and the features of the lookback_days days after it lack it too: a
    warning that names the day and the clear that recomputes them once it lands."""
    import logging
    import shutil

    from dlpipe import commit

    shutil.rmtree(commit.StageKey("raw", "trips", "dt=2026-01-02").dir() / "manifests")  # day 2 not landed
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    with caplog.at_level(logging.INFO, logger="feature_jobs.feature_stage"):
        summary = extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=4),
                                   run=RunContext(), submit=_fake_spark_job).manifest["summary"]
    assert summary["missing_history_days"] == ["2025-12-30", "2025-12-31", "2026-01-02"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "raw/trips/2026-01-02 is not committed though earlier days are" in warnings[0]
    assert "--task-regex extract_features --downstream --start-date 2026-01-02 --end-date 2026-01-06" in warnings[0]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "missing history" in r.getMessage()]
    assert [m.split()[0] for m in infos] == ["raw/trips/2025-12-30", "raw/trips/2025-12-31"]


def test_a_gap_is_warned_also_when_it_is_the_lookbacks_first_day(small_raw, caplog):
    """The last day whose lookback reaches the lost day has it first in its window: the raw
    data's first day is looked up over all partitions, so it is still a gap (with lookback_days 1
    a gap was never warned)."""
    import logging
    import shutil

    from dlpipe import commit

    shutil.rmtree(commit.StageKey("raw", "trips", "dt=2026-01-02").dir() / "manifests")
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    with caplog.at_level(logging.INFO, logger="feature_jobs.feature_stage"):
        extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=1), run=RunContext(),
                         submit=_fake_spark_job)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "raw/trips/2026-01-02 is not committed though earlier days are" in warnings[0]


def test_history_files_written_but_never_committed_are_named_with_the_command(small_raw, caplog):
    """A team's ingestion that writes a day's files but does not commit them: the day counts as
    missing history, and the warning says why and how to commit them."""
    import logging

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe import commit

    folder = commit.StageKey("raw", "trips", "dt=2025-12-31").dir()
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"trip_id": ["x"]}), folder / "part-0.parquet")
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    with caplog.at_level(logging.WARNING, logger="feature_jobs.feature_stage"):
        summary = extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=4),
                                   run=RunContext(), submit=_fake_spark_job).manifest["summary"]
    assert "2025-12-31" in summary["missing_history_days"]
    assert ("raw/trips/dt=2025-12-31 holds 1 Parquet file(s) that were never committed" in caplog.text
            and f"dlpipe ingest-raw trips --day 2025-12-31 {folder}" in caplog.text)


def test_a_damaged_raw_day_fails_with_its_name_and_fix_before_spark(small_raw):
    """A raw file cut short after its commit failed the task with pyarrow's 'Parquet magic bytes
    not found', naming no file, and Airflow retried it. A footer damaged in place (the committed
    size, an old modification time: a disk's own damage) is named too."""
    import os

    import pytest

    from dlpipe import commit
    from dlpipe.errors import IntegrityError

    submitted = []
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    day2 = commit.latest(commit.StageKey("raw", "trips", "dt=2026-01-02"))
    [path] = commit.files(day2, ".parquet")
    intact, stat = path.read_bytes(), path.stat()
    path.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(IntegrityError, match=r"raw/trips/dt=2026-01-02@\w+: part-00000.parquet is not the file that "
                                             r"was committed .*dlpipe ingest-raw trips --day 2026-01-02 PATH"):
        extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=4), run=RunContext(),
                         submit=lambda app, args: submitted.append(app))
    path.write_bytes(intact[:-8] + b"\0" * 8)  # the footer's length and magic bytes gone, the size kept
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(IntegrityError, match=r"raw file .*dt=2026-01-02.* is committed but cannot be read as Parquet"):
        extract_features(start, start.replace(day=4), config=FeatureJobConfig(lookback_days=4), run=RunContext(),
                         submit=lambda app, args: submitted.append(app))
    assert submitted == []
