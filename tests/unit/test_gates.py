"""Gates with real Great Expectations: bad data and empty data fail with every reason listed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dlpipe.gates import ColumnRule, DataGateConfig, ModelGateConfig, judge_model, validate_frames

CFG = DataGateConfig(min_rows={"train": 10}, columns={
    "distance_km": ColumnRule(type="float32", min=0, max=100),
    "city_code": ColumnRule(type="int32", min=0, max=3),
})


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"distance_km": rng.uniform(0, 10, n).astype(np.float32),
                         "city_code": rng.integers(0, 4, n).astype(np.int32)})


def test_good_data_passes_and_every_expectation_ran():
    failures, evidence = validate_frames({"train": _frame()}, CFG)
    assert failures == []
    # per column: exists + type + non-null proportion + min + max
    assert evidence["splits"]["train"]["expectations"] == 10


def test_nulls_and_out_of_range_values_are_named():
    df = _frame()
    df.loc[3, "distance_km"] = np.nan
    df.loc[5, "city_code"] = 9
    failures, _ = validate_frames({"train": df}, CFG)
    text = "\n".join(failures)
    assert "train.distance_km: expect_column_proportion_of_non_null_values_to_be_between" in text
    assert "observed 0.98" in text  # 49 of 50 values present
    assert "train.city_code: expect_column_max_to_be_between {'max_value': 3.0} -> observed 9" in text
    assert len(failures) == 2


def test_empty_partition_fails_on_row_count():
    failures, _ = validate_frames({"train": _frame(0)}, CFG)
    assert failures[0] == "train: row count 0 is below the minimum 10"


def test_wrong_type_and_missing_column():
    df = _frame().drop(columns=["city_code"]).astype({"distance_km": "float64"})
    failures = "\n".join(validate_frames({"train": df}, CFG)[0])
    assert "observed 'float64'" in failures
    assert "train.city_code: expect_column_to_exist" in failures and "column missing" in failures


@pytest.mark.parametrize("metrics,ok", [
    ({"val_mae": 4.0, "baseline_mae": 8.0}, True),
    ({"val_mae": 7.5, "baseline_mae": 8.0}, False),  # better, but not by 10%
    ({"val_mae": float("nan"), "baseline_mae": 8.0}, False),
    ({"baseline_mae": 8.0}, False),
])
def test_model_gate(metrics, ok):
    failures = judge_model(metrics, ModelGateConfig(min_improvement=0.1))
    assert (failures == []) is ok


def test_model_gate_message_shows_value_and_threshold():
    [msg] = judge_model({"val_mae": 7.5, "baseline_mae": 8.0}, ModelGateConfig(min_improvement=0.1))
    assert msg == "val_mae=7.5000 must be <= 7.2000 (baseline_mae=8.0000 improved by 10%)"
