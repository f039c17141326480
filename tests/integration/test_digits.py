"""Non-tabular data: scikit-learn's digits images through a Petastorm ndarray field, bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.datasets import open_reader
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import local_spark_submit
from feature_jobs.digits_stage import DigitsConfig, materialize_digits

pytestmark = pytest.mark.integration


def test_digits_images_round_trip_bit_exact():
    from sklearn.datasets import load_digits

    ds = materialize_digits(config=DigitsConfig(), run=RunContext(), submit=local_spark_submit())
    rows = ds.manifest["summary"]["rows"]
    assert rows["train"] + rows["validation"] == 1797 and 250 < rows["validation"] < 470
    digits = load_digits()
    seen = set()
    for split in ("train", "validation"):
        with open_reader(ds.id, split, batch=False, num_epochs=1, shuffle_row_groups=False) as reader:
            for row in reader:
                assert row.image.dtype == np.float64 and row.image.shape == (8, 8)
                assert np.array_equal(row.image, digits.images[row.image_id])
                assert row.image.tobytes() == digits.images[row.image_id].tobytes()  # bit for bit
                assert row.label == digits.target[row.image_id]
                seen.add(int(row.image_id))
    assert seen == set(range(1797))  # every image once, in exactly one split
    again = materialize_digits(config=DigitsConfig(), run=RunContext(), submit=local_spark_submit())
    assert again.skipped and again.id == ds.id


def test_digits_classifier_trains_with_horovod_and_a_worse_model_fails_its_gate(tmp_path):
    """The second pipeline kind end to end on its stages: real Spark, real horovodrun (2 Gloo
    ranks), real GX; then a deliberately weak CNN is judged against the registered champion."""
    from sklearn.datasets import load_digits

    from dlpipe import commit, registry
    from dlpipe.errors import GateFailed
    from dlpipe.gates import DataGateConfig, ModelGateConfig, run_data_gate, run_model_gate
    from dlpipe.pipeline_config import load_pipeline, section
    from dlpipe.storage import LocalStore
    from operators.kinds import kind_of
    from tests.conftest import ROOT
    from training.config import ScaleConfig
    from training.digits_model import DigitsModel
    from training.launcher import horovod_launcher
    from training.stages import train_model

    pipeline = load_pipeline(ROOT / "pipelines" / "digits.yaml")
    kind = kind_of(pipeline)
    sections = kind.sections()
    ds = kind.dataset("2026-01-05", "2026-01-12", config=section(pipeline, "dataset", sections["dataset"]),
                      run=RunContext(), submit=local_spark_submit()).manifest
    gate = run_data_gate(ds, section(pipeline, "data_gate", DataGateConfig), run=RunContext(), name="digits_data")
    assert gate.manifest["summary"]["verdict"] == "passed"
    # the same spec on the Spark engine: the image column is BinaryType there (type: binary)
    from dlpipe.gates import data_gate_spark

    try:
        on_spark = run_data_gate(ds, section(pipeline, "data_gate", DataGateConfig).model_copy(
            update={"engine": "spark"}), run=RunContext(), name="digits_data_spark")
    finally:
        data_gate_spark().stop()
    assert on_spark.manifest["summary"]["verdict"] == "passed"

    scale = section(pipeline, "scale", ScaleConfig)
    launch = horovod_launcher(scale)
    cfg = section(pipeline, "train", sections["train"])
    good = train_model(ds, config=cfg, scale=scale, run=RunContext(), launch=launch, name="digits",
                       entry=kind.train_entry).manifest
    m = good["summary"]["metrics"]
    assert m["world_size"] == 2 and m["allreduce"] == "Gloo" and m["train_rows"] + m["val_rows"] == 1797
    assert m["val_error"] < 0.08 and m["baseline_error"] > 0.8  # about 0.03 against 0.92
    evaluation = kind.evaluate(commit.location(good) / "model", ds)
    assert evaluation["value"] == pytest.approx(m["val_error"], abs=1e-9)  # same rows, same answer
    assert set(evaluation["slices"]) == {f"digit={d}" for d in range(10)}
    assert sum(s["rows"] for s in evaluation["slices"].values()) == m["val_rows"]

    # the saved model is usable on its own: it classifies scikit-learn's images as stored
    digits = load_digits()
    model = DigitsModel.load(commit.location(good) / "model")
    assert (model.predict(digits.images).numpy() == digits.target).mean() > 0.95

    store = LocalStore(tmp_path / "registry")
    rec, _ = registry.register(store, "digits", commit.location(good) / "model", metrics=m,
                               lineage={"training": good["id"]}, run=RunContext())
    registry.promote(store, "digits", "production", rec["version"], run=RunContext(), reason="launch")
    champion_dir = tmp_path / "champion"
    registry.download(store, "digits", rec["version"], champion_dir)
    champion = {"ref": f"digits@{rec['version']}", **kind.evaluate(champion_dir, ds)}

    weak_cfg = cfg.model_copy(update={"channels": [2], "hidden": [8], "epochs": 1, "learning_rate": 5e-4})
    weak = train_model(ds, config=weak_cfg, scale=scale, run=RunContext(), launch=launch, name="digits",
                       entry=kind.train_entry).manifest
    candidate = kind.evaluate(commit.location(weak) / "model", ds)
    gate_cfg = section(pipeline, "model_gate", ModelGateConfig)
    with pytest.raises(GateFailed) as e:
        run_model_gate(weak, gate_cfg, run=RunContext(), name="digits_model", candidate=candidate,
                       champion=champion)
    assert any(f.startswith(f"champion: error rate {candidate['value']:.4f} is worse than digits@1")
               for f in e.value.failures), e.value.failures
    assert any(f.startswith("val_error=") and "exceeds max_value=0.08" in f for f in e.value.failures)
    assert registry.get_alias(store, "digits", "production")["version"] == rec["version"]

    passed = run_model_gate(good, gate_cfg, run=RunContext(), name="digits_model", candidate=evaluation,
                            champion=champion)
    assert passed.manifest["summary"]["verdict"] == "passed"
