"""A feature partition's manifest lists the lookback days it was computed without, by date, so
that someone reading it can backfill exactly those raw days (a count would not say which)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
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


def test_missing_history_days_are_listed_as_dates(small_raw):
    # small_raw commits 2026-01-01..03; day 3 with a 4-day lookback lacks 2025-12-30 and -31
    start = datetime(2026, 1, 3, tzinfo=timezone.utc)
    end = datetime(2026, 1, 4, tzinfo=timezone.utc)
    summary = extract_features(start, end, config=FeatureJobConfig(lookback_days=4), run=RunContext(),
                               submit=_fake_spark_job).manifest["summary"]
    assert summary["history_days"] == 2
    assert summary["missing_history_days"] == ["2025-12-30", "2025-12-31"]
