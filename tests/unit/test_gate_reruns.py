"""Rerunning the gates and the registration (RELIABILITY.md rows 2 and 12): a verdict is judged
again when what it judged changed, and judging the same training again never registers its
files as a second version. Stage manifests are committed for real, without Spark or training:
only their ids, fingerprints, statistics and files matter here."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlpipe import audit, commit, registry
from dlpipe.errors import GateFailed
from dlpipe.gates import ColumnRule, DataGateConfig, DriftConfig, ModelGateConfig, run_data_gate, run_model_gate
from dlpipe.lineage import model_lineage
from dlpipe.runctx import RunContext
from dlpipe.storage import LocalStore


def _stage(stage: str, inputs: list[dict], produce) -> dict:
    return commit.run_stage(commit.StageKey(stage, "eta", "window_end=2026-01-03"), inputs=inputs, config={},
                            code={"sources_hash": "test"}, run=RunContext(), produce=produce).manifest


def _training() -> dict:
    dataset = _stage("datasets", [], lambda attempt: {"rows": {"train": 1, "validation": 1}})

    def train(attempt: Path) -> dict:
        (attempt / "model").mkdir()
        (attempt / "model" / "model.safetensors").write_bytes(b"weights")
        return {"metrics": {"val_mae": 1.0, "baseline_mae": 2.0}, "model_dir": "model"}

    return _stage("training", [dataset], train)


def _evaluation(value: float) -> dict:
    return {"metric": "mae", "label": "MAE", "value": value, "rows": 500, "slices": {}}


def _gate_and_register(training: dict, store, candidate: dict, champion_ref: str):
    """What ModelGateOperator then RegisterModelOperator do in one DAG run."""
    gate = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=candidate,
                          champion={**_evaluation(1.0), "ref": champion_ref})
    record, created = registry.register(store, "eta", commit.location(training) / "model",
                                        metrics=training["summary"]["metrics"],
                                        lineage=model_lineage(training["id"], [gate.id]), run=RunContext())
    return gate, record, created


def test_the_same_training_judged_again_is_not_registered_twice(dlpipe_home):
    training, store = _training(), LocalStore(dlpipe_home / "registry")
    gate, first, created = _gate_and_register(training, store, _evaluation(1.0), "eta@3")
    assert created and first["version"] == 1
    again, same, created = _gate_and_register(training, store, _evaluation(1.0), "eta@3")
    assert again.skipped and again.id == gate.id and (same["version"], created) == (1, False)
    # production moved (a rollback): the rerun judges the same training against another champion
    rejudged, same, created = _gate_and_register(training, store, _evaluation(1.0), "eta@1")
    assert not rejudged.skipped and rejudged.id != gate.id
    assert (same["version"], created) == (1, False)
    assert [r["version"] for r in registry.list_versions(store, "eta")] == [1]
    skipped = [e for e in audit.read() if e["stage"] == "registry" and e["event"] == "skipped"]
    assert skipped[-1]["gates"] == [rejudged.id]  # the new verdict is kept in the audit log


def test_a_changed_evaluation_is_judged_again(dlpipe_home):
    """The evaluations enter the verdict's fingerprint: new evaluator code or other validation
    rows give a new verdict instead of the old one, skipped."""
    training = _training()
    first = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(1.0),
                           champion={**_evaluation(1.0), "ref": "eta@3"})
    changed = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(0.9),
                             champion={**_evaluation(1.0), "ref": "eta@3"})
    assert not changed.skipped and changed.id != first.id
    assert changed.manifest["summary"]["candidate"] == {"mae": 0.9}


def _dataset(partition: str, stats: dict, config: dict) -> dict:
    """A committed one-split dataset of 3 float32 rows whose manifest carries ``stats`` for them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def produce(attempt: Path) -> dict:
        (attempt / "train").mkdir()
        pq.write_table(pa.table({"x": np.array([4.0, 5.0, 6.0], np.float32)}), attempt / "train" / "part-0.parquet")
        return {"rows": {"train": 3}, "splits": ["train"], "columns": [["x", "float"]], "stats": {"train": stats}}

    return commit.run_stage(commit.StageKey("datasets", "eta", partition), inputs=[], config=config,
                            code={"sources_hash": "test"}, run=RunContext(), produce=produce).manifest


def test_statistics_that_are_not_numbers_fail_the_drift_check_until_the_reference_is_rebuilt(dlpipe_home):
    """Statistics committed before NaN counted as missing can hold NaN; every comparison with it
    was false, so the drift check passed. Now the gate fails, every rerun alike, until the
    previous dataset is materialized again: its new version is the gate's input, so the rerun
    judges again and passes."""
    finite = {"count": 3, "nulls": 0, "min": 4.0, "max": 6.0, "mean": 5.0, "std": 0.8165}
    old = _dataset("window_end=2026-01-02", {"x": {**finite, "mean": float("nan"), "std": float("nan")}}, {})
    current = _dataset("window_end=2026-01-03", {"x": finite}, {})
    cfg = DataGateConfig(engine="pandas", min_rows={"train": 1}, columns={"x": ColumnRule(type="float32")},
                         drift=DriftConfig())
    for _ in range(2):
        with pytest.raises(GateFailed) as e:
            run_data_gate(current, cfg, run=RunContext())
        [failure] = e.value.failures
        assert failure.startswith("drift.x: mean nan, std nan in the previous dataset: not finite numbers")
        assert f"materialize it again ({old['id']})" in failure

    rebuilt = _dataset("window_end=2026-01-02", {"x": finite}, {"code": "NaN counted as missing"})
    gate = run_data_gate(current, cfg, run=RunContext())
    assert not gate.skipped and gate.manifest["summary"]["drift"] == {"previous": rebuilt["id"], "columns": 1}
    assert [i["id"] for i in gate.manifest["inputs"]] == [current["id"], rebuilt["id"]]
