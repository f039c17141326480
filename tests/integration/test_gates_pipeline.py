"""Gates on real pipeline data (RELIABILITY.md rows 9 to 11), with real Spark, Great
Expectations and horovodrun: empty data, bad data, drift, and a model worse than production."""

from __future__ import annotations

import json
import math
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from dlpipe import audit, commit, registry
from dlpipe.commit import StageKey, run_stage
from dlpipe.demo_data import DemoDataConfig, generate_day, write_raw
from dlpipe.errors import GateFailed
from dlpipe.gates import DataGateConfig, DriftConfig, ModelGateConfig, run_data_gate, run_model_gate
from dlpipe.pipeline_config import load_pipeline, section
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import local_spark_submit
from feature_jobs.dataset_stage import DatasetConfig, materialize_dataset
from feature_jobs.feature_stage import FeatureJobConfig, extract_features
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
GATE = section(load_pipeline(ROOT / "pipelines" / "eta_training.yaml"), "data_gate", DataGateConfig)
DS = DatasetConfig(window_days=1, num_files=2)


def _commit_raw_day(day: date, table) -> None:
    import pyarrow.parquet as pq

    def produce(attempt: Path) -> dict:
        pq.write_table(table, attempt / "part-00000.parquet")
        return {"rows": table.num_rows, "day": day.isoformat()}

    run_stage(StageKey("raw", "trips", f"dt={day.isoformat()}"), inputs=[], config={"custom": day.isoformat()},
              code={"sources_hash": "test"}, run=RunContext(), produce=produce)


def _dataset(day: str, submit) -> dict:
    end = f"2026-01-{int(day[-2:]) + 1:02d}"
    extract_features(day, end, config=FeatureJobConfig(lookback_days=1), run=RunContext(), submit=submit)
    return materialize_dataset(day, end, config=DS, features=FeatureJobConfig(lookback_days=1), run=RunContext(),
                               submit=submit).manifest


def test_too_little_data_fails_the_data_gate_and_says_why():
    """An empty day never gets this far (the feature stage refuses it); a nearly empty one
    commits its features and dataset, and the gate refuses it."""
    cfg = DemoDataConfig(start=date(2026, 1, 2), days=1, rows_per_day=12)
    _commit_raw_day(date(2026, 1, 2), generate_day(cfg, date(2026, 1, 2)))
    ds = _dataset("2026-01-02", local_spark_submit())
    rows = ds["summary"]["rows"]
    assert rows["train"] + rows["validation"] == 12
    with pytest.raises(GateFailed) as e:
        run_data_gate(ds, GATE, run=RunContext())
    assert f"train: row count {rows['train']} is below the minimum 1000" in str(e.value)
    assert f"validation: row count {rows['validation']} is below the minimum 200" in str(e.value)
    assert commit.committed(StageKey("gates", "eta_data", ds["partition"])) == []
    assert [ev["event"] for ev in audit.read() if ev["stage"] == "gates"] == ["started", "failed"]


def test_nulls_and_out_of_range_values_fail_with_the_expectations_named():
    cfg = DemoDataConfig(start=date(2026, 1, 2), days=1, rows_per_day=3000, restaurants=40)
    df = generate_day(cfg, date(2026, 1, 2)).to_pandas()
    df.loc[:9, "pickup_lat"] = np.nan  # 10 trips without a pickup position
    df.loc[20:24, "dropoff_lat"] = 89.0  # 5 trips "delivered" near the North Pole
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)  # NaN becomes a Parquet null
    # 5 of the 10 as a stored NaN instead, as a computation upstream leaves it
    lat = pa.array(df["pickup_lat"].to_numpy(), mask=np.arange(len(df)) < 5)
    table = table.set_column(table.schema.get_field_index("pickup_lat"), "pickup_lat", lat)
    _commit_raw_day(date(2026, 1, 2), table)
    ds = _dataset("2026-01-02", local_spark_submit())
    # the dataset's statistics (the drift check's input) count NaN as missing, as the gate does
    stats = [ds["summary"]["stats"][split]["pickup_lat"] for split in ("train", "validation")]
    assert sum(st["nulls"] for st in stats) == 10
    assert all(math.isfinite(st[k]) for st in stats for k in ("min", "max", "mean", "std"))
    with pytest.raises(GateFailed) as e:
        run_data_gate(ds, GATE, run=RunContext())
    text = "\n".join(e.value.failures)
    assert "distance_km: expect_column_proportion_of_non_null_values_to_be_between" in text
    assert "pickup_lat: expect_column_proportion_of_non_null_values_to_be_between" in text
    assert "distance_km: expect_column_max_to_be_between {'max_value': 100.0} -> observed" in text
    assert not any("delivery_minutes" in f for f in e.value.failures)  # only the broken columns
    evidence = next((StageKey("gates", "eta_data", ds["partition"]).dir() / "attempts").glob("*/validation.json"))
    assert '"success": false' in evidence.read_text()
    # the evidence names exactly the committed files it judged, by their manifest hashes
    from dlpipe.gates import split_fingerprint

    splits = json.loads(evidence.read_text())["splits"]
    for split in ("train", "validation"):
        markers = splits[split]["result"]["meta"]["batch_markers"]
        assert markers["dlpipe_content_sha256"] == split_fingerprint(ds, split)
    assert split_fingerprint(ds, "train") != split_fingerprint(ds, "validation")
    assert next(evidence.parent.glob("data_docs/train.html")).read_text().lstrip().lower().startswith("<!doctype html")

    # the Spark engine, reading the same committed Parquet files, fails the same checks in the same words
    from dlpipe.gates import data_gate_spark

    try:
        with pytest.raises(GateFailed) as on_spark:
            run_data_gate(ds, GATE.model_copy(update={"engine": "spark"}), run=RunContext())
    finally:
        data_gate_spark().stop()
    assert on_spark.value.failures == e.value.failures


def test_drift_against_the_previous_dataset_version():
    write_raw(DemoDataConfig(start=date(2026, 1, 1), days=2, rows_per_day=3000, restaurants=40), RunContext())
    cfg = DemoDataConfig(start=date(2026, 1, 3), days=1, rows_per_day=3000, restaurants=40)
    df = generate_day(cfg, date(2026, 1, 3)).to_pandas()
    df["delivery_minutes"] *= 2.5  # a unit bug upstream: the label distribution jumps
    import pyarrow as pa

    _commit_raw_day(date(2026, 1, 3), pa.Table.from_pandas(df, preserve_index=False))
    submit = local_spark_submit()
    # one-day windows of a Friday and a Saturday: is_weekend moves by design (in a 7-day window
    # it would not), so it is left out of the watched columns
    watched = [c for c in GATE.columns if c not in ("trip_id", "is_weekend")]
    gate = GATE.model_copy(update={"drift": DriftConfig(max_mean_shift_std=0.5, columns=watched)})
    # A backfill's order: day 3 is built and gated before day 2 exists; nothing earlier to
    # compare with, so it passes with a note.
    day3 = _dataset("2026-01-03", submit)
    early = run_data_gate(day3, gate, run=RunContext())
    assert early.manifest["summary"]["drift"]["previous"] is None
    day2 = _dataset("2026-01-02", submit)
    ok = run_data_gate(day2, gate, run=RunContext())  # nothing earlier: passes with a note
    assert ok.manifest["summary"]["drift"]["previous"] is None
    # Day 2 is an input of day 3's drift check now: the rerun judges again instead of skipping
    with pytest.raises(GateFailed) as e:
        run_data_gate(day3, gate, run=RunContext())
    drift = [f for f in e.value.failures if f.startswith("drift.")]
    assert drift and all(f.startswith("drift.delivery_minutes:") for f in drift)  # only the broken column
    assert any("mean moved" in f and "threshold 0.5" in f for f in drift)
    assert any("std changed" in f and "threshold 2.0" in f for f in drift)


def test_a_model_worse_than_production_fails_and_production_is_unchanged(small_raw, tmp_path):
    from training.config import ScaleConfig, TrainConfig
    from training.evaluate import evaluate
    from training.launcher import horovod_launcher
    from training.stages import train_model

    submit = local_spark_submit()
    extract_features("2026-01-03", "2026-01-04", config=FeatureJobConfig(lookback_days=2), run=RunContext(),
                     submit=submit)
    ds = materialize_dataset("2026-01-03", "2026-01-04", config=DS, features=FeatureJobConfig(lookback_days=2),
                             run=RunContext(), submit=submit).manifest
    scale = ScaleConfig(num_proc=2, hosts="localhost:2")
    launch = horovod_launcher(scale)
    good = train_model(ds, config=TrainConfig(epochs=6), scale=scale, run=RunContext(), launch=launch).manifest
    bad = train_model(ds, config=TrainConfig(epochs=1, learning_rate=1e-5, seed=3), scale=scale,
                      run=RunContext(), launch=launch).manifest

    from dlpipe.storage import LocalStore

    store = LocalStore(tmp_path / "registry")
    rec, _ = registry.register(store, "eta", commit.location(good) / "model", metrics=good["summary"]["metrics"],
                               lineage={"training": good["id"]}, run=RunContext())
    registry.promote(store, "eta", "production", rec["version"], run=RunContext(), reason="launch")

    champion_dir = tmp_path / "champion"
    registry.download(store, "eta", rec["version"], champion_dir)
    champion = {"ref": f"eta@{rec['version']}", **evaluate(champion_dir, ds)}
    candidate = evaluate(commit.location(bad) / "model", ds)
    assert candidate["value"] > champion["value"]
    cfg = ModelGateConfig(min_improvement=0.0)  # judged by the champion check alone
    with pytest.raises(GateFailed) as e:
        run_model_gate(bad, cfg, run=RunContext(), candidate=candidate, champion=champion)
    assert any(f.startswith(f"champion: MAE {candidate['value']:.4f} is worse than eta@1") for f in e.value.failures)
    assert registry.get_alias(store, "eta", "production")["version"] == rec["version"]
    assert len(registry.get_alias(store, "eta", "production")["history"]) == 1

    # the good model passes against itself as champion, slices included, and says so
    passed = run_model_gate(good, cfg, run=RunContext(), candidate=evaluate(commit.location(good) / "model", ds),
                            champion=champion)
    assert passed.manifest["summary"]["verdict"] == "passed"
    assert "eta@1" in passed.manifest["summary"]["note"]
    assert set(candidate["slices"]) >= {"city=berlin", "city=rome", "hour=lunch", "hour=dinner"}
