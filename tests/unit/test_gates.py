"""Gates with real Great Expectations: bad data and empty data fail with every reason listed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from dlpipe.gates import (ColumnRule, DataGateConfig, ModelGateConfig, judge_champion, judge_model, judge_slices,
                          validate_frames)
from training.evaluate import slice_summary

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


def test_a_committed_frame_is_identified_by_its_committed_fingerprint_not_a_row_hash():
    """The evidence names the data it judged: the files' committed hash when the frame carries
    it (no row hashing), GX's own row fingerprint otherwise; the verdicts are the same."""
    from dlpipe.gx_pandas import FINGERPRINT, with_fingerprint

    df = _frame()
    df.loc[5, "city_code"] = 9
    committed = with_fingerprint(df, "ab" * 32)
    assert FINGERPRINT not in df.attrs  # the caller's frame is left as it was
    f1, ev1 = validate_frames({"train": committed}, CFG)
    f2, ev2 = validate_frames({"train": df}, CFG)
    markers = [ev["splits"]["train"]["result"]["meta"]["batch_markers"] for ev in (ev1, ev2)]
    assert markers[0][FINGERPRINT] == "ab" * 32 and "pandas_data_fingerprint" not in markers[0]
    assert len(markers[1]["pandas_data_fingerprint"]) == 32 and FINGERPRINT not in markers[1]
    assert f1 == f2 and len(f1) == 1 and "observed 9" in f1[0]


@pytest.mark.parametrize("metrics,ok", [
    ({"val_mae": 4.0, "baseline_mae": 8.0}, True),
    ({"val_mae": 7.5, "baseline_mae": 8.0}, False),  # better, but not by 10%
    ({"val_mae": float("nan"), "baseline_mae": 8.0}, False),
    ({"baseline_mae": 8.0}, False),
    ({"val_mae": "4.0", "baseline_mae": 8.0}, False),  # a string from a hand-written metrics file
    ({"val_mae": 4.0, "baseline_mae": "8.0"}, False),
    ({"val_mae": True, "baseline_mae": 8.0}, False),
])
def test_model_gate(metrics, ok):
    failures = judge_model(metrics, ModelGateConfig(min_improvement=0.1))
    assert (failures == []) is ok


def test_model_gate_message_shows_value_and_threshold():
    [msg] = judge_model({"val_mae": 7.5, "baseline_mae": 8.0}, ModelGateConfig(min_improvement=0.1))
    assert msg == "val_mae=7.5000 must be <= 7.2000 (baseline_mae=8.0000 improved by 10%)"


def test_model_gate_names_a_metric_that_is_a_string():
    [msg] = judge_model({"val_mae": "4.0", "baseline_mae": 8.0}, ModelGateConfig())
    assert "val_mae" in msg and "'4.0'" in msg and "JSON number" in msg


def test_model_gate_lists_what_the_run_reported_when_its_metric_is_missing():
    """A trainer that wrote val_mae_kmh where the gate judges val_mae: say what there is."""
    [msg] = judge_model({"val_mae_kmh": 3.5, "baseline_mae": 8.0, "world_size": 2}, ModelGateConfig())
    assert msg.startswith("val_mae: missing") and "(it reported ['baseline_mae', 'val_mae_kmh', 'world_size'])" in msg


NAN = float("nan")


def test_a_champion_trained_under_another_split_is_not_compared_on_rows_it_trained_on():
    """validation_percent 20 -> 30: keys in buckets 20-29 were the champion's training rows and
    are now scored as validation, which favours it. The gate fails, saying why and what to do."""
    from dlpipe.gates import split_mismatch

    record = {"name": "eta", "version": 3, "lineage": {"config": {"dataset": {"validation_percent": 20}}}}
    dataset = {"config": {"validation_percent": 30}}
    why = split_mismatch(record, dataset)
    assert why and "eta@3 was trained with validation_percent=20, this dataset splits with 30" in why
    assert split_mismatch(record, {"config": {"validation_percent": 20}}) is None
    # a smaller share: the new validation keys were all the champion's validation keys (it was refused)
    assert split_mismatch(record, {"config": {"validation_percent": 10}}) is None
    assert split_mismatch({"name": "eta", "version": 1, "lineage": {}}, dataset) is None  # registered elsewhere
    ev = {"metric": "mae", "label": "MAE", "value": 1.0, "rows": 500, "slices": {}}
    failures, note = judge_champion(ev, {**ev, "value": 9.0, "ref": "eta@3", "split_mismatch": why}, ModelGateConfig())
    assert failures == [f"champion: {why}"] and "cannot compare" in note


@pytest.mark.parametrize("candidate,champion", [(NAN, 1.0), (1.0, NAN), (float("inf"), 1.0), (None, 1.0)])
def test_an_evaluation_that_is_not_a_number_fails_the_champion_check(candidate, champion):
    """Every comparison with NaN is false: without the check, a NaN on either side passed."""
    ev = lambda v: {"metric": "mae", "label": "MAE", "value": v, "rows": 500, "slices": {}}  # noqa: E731
    failures, _ = judge_champion(ev(candidate), {**ev(champion), "ref": "eta@3"}, ModelGateConfig())
    assert len(failures) == 1 and "not a finite number" in failures[0]
    assert judge_champion(ev(1.0), {**ev(1.0), "ref": "eta@3"}, ModelGateConfig())[0] == []


def test_the_note_says_when_the_champion_check_is_off():
    ev = {"metric": "mae", "label": "MAE", "value": 1.0, "rows": 500, "slices": {}}
    assert judge_champion(ev, None, ModelGateConfig(champion_alias=None)) == \
        ([], "no champion check (model_gate.champion_alias is null)")  # it said "the None alias"
    assert "no model holds the 'production' alias yet" in judge_champion(ev, None, ModelGateConfig())[1]


def test_a_slice_or_an_overall_value_that_is_not_a_number_fails_the_slice_check():
    cfg = ModelGateConfig(slice_max_ratio=4.0, slice_min_rows=25)
    good = _digits_evaluation({8: 1})
    assert judge_slices(good, cfg) == []
    [msg] = judge_slices({**good, "value": NAN}, cfg)
    assert msg.startswith("slices: the overall error rate is nan")
    slices = {**good["slices"], "digit=8": {"value": NAN, "rows": 30, "stderr": NAN}}
    assert judge_slices({**good, "slices": slices}, cfg) == ["slice digit=8: error rate is nan on 30 rows, not a finite number"]
    assert judge_slices({**good, "value": 0.0}, cfg) == []  # an overall 0 sets no limit to compare with


def _digits_evaluation(errors: dict[int, int], rows: int = 30) -> dict:
    """An error-rate evaluation of 10 digits of ``rows`` images each, ``errors[d]`` wrong in digit d."""
    wrong = np.concatenate([np.arange(rows) < errors.get(d, 0) for d in range(10)]).astype(np.float64)
    digit = np.repeat(np.arange(10), rows)
    return {"label": "error rate", "value": float(wrong.mean()), "rows": len(wrong),
            "slices": {f"digit={d}": slice_summary(wrong, digit == d) for d in range(10)}}


def test_slice_summary_gives_the_mean_and_its_standard_error():
    loss, mask = np.array([1.0, 2.0, 3.0, 10.0]), np.array([True, True, True, False])
    assert slice_summary(loss, mask) == {"value": 2.0, "rows": 3, "stderr": pytest.approx(1 / np.sqrt(3))}
    assert slice_summary(loss, np.array([True, False, False, False]))["stderr"] is None  # one row: no spread
    assert slice_summary(loss, np.zeros(4, bool)) == {"value": None, "rows": 0, "stderr": None}


def test_a_small_slice_with_a_few_unlucky_errors_is_noise_but_a_broken_one_fails():
    cfg = ModelGateConfig(slice_max_ratio=4.0, slice_min_rows=25)  # the digits pipeline's thresholds
    # 6 errors in 300 images, 3 of them on one digit: 0.10 on that digit, 5x the overall 0.02, but
    # within one standard error (0.056) of the 0.08 limit: not evidence of a bad digit
    noisy = _digits_evaluation({8: 3, 1: 1, 3: 1, 5: 1})
    assert judge_slices(noisy, cfg) == []
    assert len(judge_slices(noisy, cfg.model_copy(update={"slice_z": 0.0}))) == 1  # the point rule flags it
    # a digit the model has lost: 12 of its 30 wrong, 0.40 against a limit of 4 x 0.05
    [msg] = judge_slices(_digits_evaluation({8: 12, 1: 1, 3: 1, 5: 1}), cfg)
    assert msg == ("slice digit=8: error rate 0.4000 (standard error 0.0910 on 30 rows) is above 4.0 x overall "
                   "0.0500 (= 0.2000) by more than slice_z=1 standard errors")
    # slices under slice_min_rows are reported, not judged; an evaluator without stderr is judged on its value
    assert judge_slices(_digits_evaluation({8: 12, 1: 1, 3: 1, 5: 1}, rows=20), cfg) == []
    no_stderr = {**noisy, "slices": {k: {"value": v["value"], "rows": v["rows"]} for k, v in noisy["slices"].items()}}
    assert [m.split(":")[0] for m in judge_slices(no_stderr, cfg)] == ["slice digit=8"]


def test_the_slice_rule_seldom_fails_a_model_for_where_its_errors_fell_but_catches_a_lost_digit():
    """2,000 draws each, fixed seed. A model with a 2% error rate whose errors land on random
    digits (none worse than another) fails the point rule on 30-image digits about one time in
    six, the rule with one standard error almost never. A model that gets half of one digit
    wrong fails both almost always."""
    rng, cfg = np.random.default_rng(3), ModelGateConfig(slice_max_ratio=4.0, slice_min_rows=25)
    point = ModelGateConfig(slice_max_ratio=4.0, slice_min_rows=25, slice_z=0.0)

    def failures(draw_errors) -> tuple[int, int]:
        evaluations = [_digits_evaluation(dict(enumerate(draw_errors().tolist()))) for _ in range(2000)]
        return (sum(bool(judge_slices(e, point)) for e in evaluations),
                sum(bool(judge_slices(e, cfg)) for e in evaluations))

    anywhere = failures(lambda: np.bincount(rng.choice(10, size=6), minlength=10))  # 6 errors in 300 images
    assert anywhere[0] > 200 and anywhere[1] < 20, anywhere

    def lost_digit() -> np.ndarray:  # digit 8 wrong half the time, 6 more errors on the other digits
        others = np.delete(np.arange(10), 8)
        errors = np.bincount(rng.choice(others, size=6), minlength=10)
        errors[8] = rng.binomial(30, 0.5)
        return errors

    lost = failures(lost_digit)
    assert lost[0] > 1950 and lost[1] > 1900, lost


# --- the Spark engine: the same suite on the same Parquet data, through GX's Spark datasource ---


@pytest.fixture(scope="module")
def spark():
    """One local SparkSession for the module (start-up is the slow part)."""
    from dlpipe.gates import data_gate_spark

    session = data_gate_spark("local[2]")
    yield session
    session.stop()


def _both_engines(df: pd.DataFrame, tmp_path, spark, cfg: DataGateConfig = CFG) -> dict:
    """Write ``df`` to Parquet, read it back with each engine, validate: engine -> (failures, evidence)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    frames = {"pandas": pq.read_table(path).to_pandas(), "spark": spark.read.parquet(f"file://{path}")}
    return {engine: validate_frames({"train": f}, cfg) for engine, f in frames.items()}


def test_engines_agree_on_good_data(tmp_path, spark):
    out = _both_engines(_frame(), tmp_path, spark)
    for engine, (failures, evidence) in out.items():
        assert failures == [], engine
        assert evidence["splits"]["train"]["engine"] == engine
        assert evidence["splits"]["train"]["expectations"] == 10
        assert evidence["splits"]["train"]["rows"] == 50


def test_engines_report_nulls_and_out_of_range_values_alike(tmp_path, spark):
    df = _frame()
    df.loc[3, "distance_km"] = np.nan  # stored as a Parquet null
    df.loc[5, "city_code"] = 9
    df.loc[7, "distance_km"] = -1.5
    out = _both_engines(df, tmp_path, spark)
    assert out["pandas"][0] == out["spark"][0]
    assert out["spark"][0] == [
        "train.city_code: expect_column_max_to_be_between {'max_value': 3.0} -> observed 9",
        "train.distance_km: expect_column_min_to_be_between {'min_value': 0.0} -> observed -1.5",
        "train.distance_km: expect_column_proportion_of_non_null_values_to_be_between {'min_value': 1.0} "
        "-> observed 0.98",
    ]
    for failures, evidence in out.values():
        assert evidence["splits"]["train"]["failed"] == 3
        assert evidence["splits"]["train"]["result"]["success"] is False


def test_engines_agree_on_an_empty_split(tmp_path, spark):
    out = _both_engines(_frame(0), tmp_path, spark)
    assert out["pandas"][0] == out["spark"][0]
    assert out["spark"][0][0] == "train: row count 0 is below the minimum 10"


def test_engines_name_a_wrong_type_and_a_missing_column_in_the_same_words(tmp_path, spark):
    out = _both_engines(_frame().astype({"distance_km": "float64"}), tmp_path, spark)
    assert out["pandas"][0] == out["spark"][0] == [
        "train.distance_km: expect_column_values_to_be_of_type {'type_': 'float32'} -> observed 'float64'"]
    out = _both_engines(_frame().drop(columns=["city_code"]), tmp_path, spark)
    assert out["pandas"][0] == out["spark"][0]
    assert "train.city_code: expect_column_to_exist  -> column missing" in out["spark"][0]
    assert len(out["spark"][0]) == 5  # exists, type, non-null, min, max


def test_spark_treats_nan_as_missing_like_pandas(spark):
    from pyspark.sql import functions as F

    sdf = spark.range(20).select(F.col("id").cast("float").alias("distance_km"),
                                 (F.col("id") % 4).cast("int").alias("city_code"))
    sdf = sdf.withColumn("distance_km", F.when(F.col("city_code") == 1, F.lit(float("nan")))
                         .otherwise(F.col("distance_km")).cast("float"))
    failures, _ = validate_frames({"train": sdf}, CFG)
    assert failures == ["train.distance_km: expect_column_proportion_of_non_null_values_to_be_between "
                        "{'min_value': 1.0} -> observed 0.75"]


def test_auto_engine_follows_the_manifest_row_counts():
    cfg = DataGateConfig(spark_min_rows=1000)
    assert [cfg.engine_for(n) for n in (0, 999, 1000, 10**9)] == ["pandas", "pandas", "spark", "spark"]
    assert DataGateConfig(engine="pandas", spark_min_rows=1).engine_for(10**9) == "pandas"
    assert DataGateConfig(engine="spark").engine_for(0) == "spark"
    assert DataGateConfig().spark_min_rows == 2_000_000


def _committed_dataset(df: pd.DataFrame, validation_rows: int, missing_days: list[str] | None = None) -> dict:
    """A committed dataset (train and validation splits) whose manifest records rows per split
    (and, given ``missing_days``, the window days it was made without)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe import commit
    from dlpipe.runctx import RunContext

    splits = {"train": df, "validation": df.head(validation_rows)}

    def produce(attempt):
        for split, part in splits.items():
            (attempt / split).mkdir()
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), attempt / split / "part-0.parquet")
        return {"rows": {s: len(p) for s, p in splits.items()}, "splits": sorted(splits),
                "columns": [["distance_km", "float"], ["city_code", "int"]],
                **({"missing_feature_days": missing_days} if missing_days is not None else {})}

    return commit.run_stage(commit.StageKey("datasets", "eta", "window_end=2026-01-02"), inputs=[],
                            config={}, code={"sources_hash": "test"}, run=RunContext(), produce=produce).manifest


def test_gate_runs_each_split_on_the_engine_its_row_count_picks(spark):
    import json

    from dlpipe import commit
    from dlpipe.gates import run_data_gate
    from dlpipe.runctx import RunContext

    ds = _committed_dataset(_frame(40), validation_rows=12)
    cfg = CFG.model_copy(update={"min_rows": {"train": 10, "validation": 5}, "spark_min_rows": 30})
    summary = run_data_gate(ds, cfg, run=RunContext()).manifest["summary"]
    assert summary["engines"] == {"train": "spark", "validation": "pandas"}
    assert summary["rows"] == {"train": 40, "validation": 12}
    gate = commit.committed(commit.StageKey("gates", "eta_data", ds["partition"]))[0]
    evidence = json.loads((commit.location(gate) / "validation.json").read_text())
    assert {s: e["engine"] for s, e in evidence["splits"].items()} == {"train": "spark", "validation": "pandas"}
    assert (commit.location(gate) / "data_docs" / "train.html").read_text().lstrip().lower().startswith("<!doctype")


def test_a_window_missing_more_feature_days_than_allowed_fails_the_gate():
    """The dataset stage only warns about window days without features; with
    max_missing_feature_days the gate refuses the shorter window, listing the days."""
    from dlpipe.errors import GateFailed
    from dlpipe.gates import run_data_gate
    from dlpipe.runctx import RunContext

    ds = _committed_dataset(_frame(40), validation_rows=12, missing_days=["2025-12-30", "2025-12-31"])
    cfg = CFG.model_copy(update={"min_rows": {"train": 10, "validation": 5}, "engine": "pandas"})
    assert run_data_gate(ds, cfg, run=RunContext()).manifest["summary"]["verdict"] == "passed"  # default: any
    with pytest.raises(GateFailed) as failed:
        run_data_gate(ds, cfg.model_copy(update={"max_missing_feature_days": 1}), run=RunContext())
    assert failed.value.failures == [
        "window: no feature partition for 2 of its days ['2025-12-30', '2025-12-31'], more than "
        "max_missing_feature_days=1; run the feature task for those days, then this run's dataset task again "
        "(or raise the limit)"]
    assert run_data_gate(ds, cfg.model_copy(update={"max_missing_feature_days": 2}),
                         run=RunContext()).manifest["summary"]["verdict"] == "passed"


def test_bad_engine_or_spark_type_is_a_config_error():
    from dlpipe.errors import ConfigError
    from dlpipe.gates import run_data_gate
    from dlpipe.pipeline_config import section
    from dlpipe.runctx import RunContext

    with pytest.raises(ConfigError) as e:
        section({"_source": "p.yaml", "data_gate": {"engine": "dask"}}, "data_gate", DataGateConfig)
    assert "data_gate.engine" in str(e.value) and "'dask'" in str(e.value) and "'spark'" in str(e.value)

    cfg = DataGateConfig(engine="auto", columns={"distance_km": ColumnRule(type="float16")})
    with pytest.raises(ConfigError) as e:  # before any data is read or Spark is started
        run_data_gate({"id": "x", "partition": "p", "summary": {}}, cfg, run=RunContext())
    assert e.value.field == "data_gate.columns.distance_km.type" and e.value.value == "float16"
    assert "engine: pandas" in e.value.fix and "float32" in e.value.fix
    validate_frames({"train": _frame()}, cfg.model_copy(update={"engine": "pandas"}))  # pandas: any dtype


# --- column types: one meaning on both engines, or refused when the spec is loaded ---


def _load_gate(**data_gate) -> DataGateConfig:
    from dlpipe.pipeline_config import section

    return section({"_source": "p.yaml", "data_gate": data_gate}, "data_gate", DataGateConfig)


def test_documented_string_type_names_pass_a_string_column_on_both_engines(tmp_path, spark):
    """docs/gates.md maps object, str and string to Spark's StringType. GX's pandas check did not
    know 'string' and failed every string column with 'no result', while Spark passed it."""
    df = pd.DataFrame({"a": [f"t{i}" for i in range(20)], "b": [f"u{i}" for i in range(20)],
                       "c": [f"v{i}" for i in range(20)], "code": np.arange(20, dtype=np.int32)})
    cfg = DataGateConfig(min_rows={"train": 1}, columns={
        "a": ColumnRule(type="string"), "b": ColumnRule(type="str"), "c": ColumnRule(type="StringDtype"),
        "code": ColumnRule(type="string")})
    out = _both_engines(df, tmp_path, spark, cfg)
    assert out["pandas"][0] == out["spark"][0] == [
        "train.code: expect_column_values_to_be_of_type {'type_': 'string'} -> observed 'int32'"]


def test_int_and_float_mean_any_width_on_both_engines(tmp_path, spark):
    """Python's int and float name every integer and every float column alike on both engines
    (GX's pandas check read them as numpy's int64 and float64 only, and failed int32/float32)."""
    df = pd.DataFrame({"f32": np.arange(20, dtype=np.float32), "f64": np.arange(20, dtype=np.float64),
                       "i32": np.arange(20, dtype=np.int32), "i64": np.arange(20, dtype=np.int64),
                       "bad": np.arange(20, dtype=np.float32)})
    cfg = DataGateConfig(min_rows={"train": 1}, columns={
        "f32": ColumnRule(type="float"), "f64": ColumnRule(type="float"), "i32": ColumnRule(type="int"),
        "i64": ColumnRule(type="long"), "bad": ColumnRule(type="int")})
    out = _both_engines(df, tmp_path, spark, cfg)
    assert out["pandas"][0] == out["spark"][0] == [
        ("train.bad: expect_column_values_to_be_in_type_list {'type_list': ['int8', 'int16', 'int32', 'int64']} "
         "-> observed 'float32'")]


@pytest.mark.parametrize("name", ["Int", "Float", "Str", "FLOAT32", "list", "dict", "none", "string_types",
                                  "Int64Dtype", "CategoricalDtype"])
def test_a_type_name_that_matches_no_column_is_refused_on_load(name):
    """These loaded (GX resolves them, case-insensitively for Python names), then failed every
    column on every run: a Python name in another case, a pandas dtype class, a container type."""
    from dlpipe.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _load_gate(columns={"distance_km": {"type": name}})
    assert e.value.field == "p.yaml: data_gate.columns.distance_km.type" and e.value.value == name
    assert ("use one of int8, int16, int32, int64, float32, float64, bool, object, binary, str, string, StringDtype, "
            "int, long, float (both engines), or another numpy dtype name such as float16 (pandas engine only)"
            in e.value.fix)


@pytest.mark.parametrize("bound", ["min", "max"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_bound_that_is_not_a_finite_number_is_refused_on_load(bound, value):
    """YAML's .nan passed every check on load, then failed every value on every run (every
    comparison with NaN is false); .inf is no bound at all."""
    import yaml

    from dlpipe.errors import ConfigError

    loaded = yaml.safe_load(f"{{type: float32, {bound}: {yaml.safe_dump(value).splitlines()[0]}}}")
    with pytest.raises(ConfigError) as e:
        _load_gate(columns={"distance_km": loaded})
    assert e.value.field == f"p.yaml: data_gate.columns.distance_km.{bound}"
    assert "not a finite number" in e.value.fix and f"leave {bound} out" in e.value.fix


def test_an_expectations_arguments_are_checked_before_any_stage_naming_each_bad_one(tmp_path):
    """Before, a misspelt argument passed every check and failed the gate, after the Spark
    stages had committed, with GX's multi-line message and no argument named. Every task
    checks the pipeline when it starts (check_pipeline(at_run=True)), the first one included."""
    from dlpipe.errors import ConfigError
    from dlpipe.gates import check_expectations
    from dlpipe.pipeline_config import load_pipeline
    from operators.factory import check_pipeline
    from tests.conftest import ROOT

    shipped = (ROOT / "pipelines" / "eta_training.yaml").read_text()
    spec = tmp_path / "p.yaml"
    spec.write_text(shipped.replace("{column: trip_id}", "{colum: trip_id}", 1))
    assert "colum: trip_id" in spec.read_text()
    check_pipeline(load_pipeline(spec))  # at DAG parse: no Great Expectations import
    with pytest.raises(ConfigError) as e:
        check_pipeline(load_pipeline(spec), at_run=True)
    assert e.value.field == f"{spec}: data_gate.expectations[0].kwargs"
    assert ("the arguments of expect_column_values_to_be_unique do not fit it: column: field required; "
            "colum: extra fields not permitted; fix them") in e.value.fix
    with pytest.raises(ConfigError, match=r"min_value: value is not a valid float; kwargs: min_value and "
                                          r"max_value cannot both be None; fix them"):
        check_expectations(_load_gate(expectations=[{"type": "expect_column_values_to_be_between",
                                                     "kwargs": {"column": "a", "min_value": "x"}}]))
    with pytest.raises(ConfigError, match=r"row_condition"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # GX 1.9 deprecates string conditions, still takes them
        check_expectations(_load_gate(expectations=[{"type": "expect_column_values_to_be_unique", "kwargs": {
            "column": "a", "row_condition": 'col("a")>', "condition_parser": "great_expectations"}}]))
    check_pipeline(load_pipeline(ROOT / "pipelines" / "eta_training.yaml"), at_run=True)


def test_a_row_condition_is_taken_only_in_gx_syntax_on_plain_column_names(tmp_path):
    """The pandas parser hands a condition to DataFrame.query, where '@pd.io.common.os.system(...)'
    runs a command on the worker; GX's own syntax pastes a column name between backticks, so a
    name holding one is code again. Both are refused before anything is validated; a condition
    in GX syntax on a real column still filters the rows judged."""
    from dlpipe.errors import ConfigError
    from dlpipe.gates import check_expectations

    marker = tmp_path / "ran"
    code = f"@pd.io.common.os.system('touch {marker}')"
    between = {"column": "a", "min_value": 0, "max_value": 5}
    refused = [({"condition_parser": "pandas", "row_condition": f"a > {code}"}, r"condition_parser='pandas'"),
               ({"condition_parser": "spark", "row_condition": "a > 1"}, r"condition_parser='spark'"),
               ({"row_condition": "a > 1"}, r"condition_parser=None"),
               ({"condition_parser": "great_expectations",
                 "row_condition": {"type": "pass_through", "pass_through_filter": f"a > {code}"}}, r"row_condition=")]
    for kwargs, shown in refused:
        with pytest.raises(ConfigError, match=r"p.yaml: data_gate.expectations.0.kwargs." + shown
                                              + r".*own syntax, with condition_parser: great_expectations"):
            _load_gate(expectations=[{"type": "expect_column_values_to_be_between", "kwargs": {**between, **kwargs}}])
    sneaky = _load_gate(min_rows={"train": 1}, expectations=[{"type": "expect_column_values_to_be_between", "kwargs": {
        **between, "condition_parser": "great_expectations", "row_condition": f'col("a` + {code} + `")>1'}}])
    with pytest.raises(ConfigError, match=r"data_gate.expectations\[0\].kwargs.row_condition=.*a plain column name"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        check_expectations(sneaky)
    df = pd.DataFrame({"a": [1.0, 2.0, 9.0, 9.0]})
    with pytest.raises(ConfigError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        validate_frames({"train": df}, sneaky)
    assert not marker.exists()
    ok = _load_gate(min_rows={"train": 1}, expectations=[{"type": "expect_column_values_to_be_between", "kwargs": {
        **between, "condition_parser": "great_expectations", "row_condition": 'col("a")<3'}}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert validate_frames({"train": df}, ok)[0] == []  # the two 9s are not judged
        assert validate_frames({"train": df}, _load_gate(min_rows={"train": 1}, expectations=[
            {"type": "expect_column_values_to_be_between", "kwargs": between}]))[0]  # without it, they fail


def test_data_values_are_escaped_in_the_data_docs_page(tmp_path):
    """GX writes unexpected and observed values into the page as they are: a trip id holding a
    script ran in the browser of whoever opened the committed evidence. The failure messages and
    the JSON evidence keep the values as they are."""
    script = "<script>alert('x')</script>"
    cfg = _load_gate(min_rows={"train": 1}, expectations=[
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "trip_id"}},
        {"type": "expect_column_most_common_value_to_be_in_set", "kwargs": {"column": "trip_id", "value_set": ["t1"]}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 0, "max_value": 1}}])
    df = pd.DataFrame({"trip_id": [script] * 3 + ["t1"], "x": [5.0, 0.5, 7.0, 0.1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        failures, evidence = validate_frames({"train": df}, cfg, docs_dir=tmp_path)
    page = (tmp_path / "train.html").read_text()
    assert "<script>alert" not in page and page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") >= 2
    assert "&amp;lt;" not in page and 'show-scrollbars">7.0' in page  # escaped once; numbers as they were
    assert any(script in f for f in failures) and script in json.dumps(evidence)


# --- GX's own exception text reaches the failure message ---


def test_an_expectation_that_raises_names_the_error_on_both_engines(spark):
    """GX 1.x keys a metric's exception by its metric id (pandas here); an error in the
    expectation itself is one flat record (Spark here). Both reach the message."""
    from dlpipe.gates import ExpectationSpec

    cfg = DataGateConfig(min_rows={"train": 1}, expectations=[
        ExpectationSpec(type="expect_column_values_to_be_of_type", kwargs={"column": "s", "type_": "no_such_type"})])
    [on_pandas], _ = validate_frames({"train": pd.DataFrame({"s": ["a", "b"]})}, cfg)
    assert on_pandas == ("train.s: expect_column_values_to_be_of_type {'type_': 'no_such_type'} -> no result "
                         "(error: Unrecognized numpy/python type: no_such_type)")
    [on_spark], _ = validate_frames({"train": spark.createDataFrame([("a",), ("b",)], "s string")}, cfg)
    assert on_spark.endswith("-> no result (error: No recognized spark types in expected_types_list)")


# --- drift: NaN is missing, and a statistic that is not a number fails ---


def test_column_stats_count_nan_as_null_like_the_gate(spark):
    """Spark counted NaN as a value and gave NaN means: a column that turned half NaN passed the
    drift check, since every comparison with NaN is false."""
    import json

    from dlpipe.gates import DriftConfig, check_drift
    from feature_jobs.materialize import column_stats

    rows = [(float(i % 10), float(i % 10), i) for i in range(100)]
    old = spark.createDataFrame(rows, "x double, y float, n int")
    new = spark.createDataFrame([(x if i % 2 else float("nan"), y, n) for i, (x, y, n) in enumerate(rows)],
                                "x double, y float, n int")
    stats = json.loads(json.dumps(column_stats(new, ["x", "y", "n"])))  # as stats.json round-trips it
    assert {k: stats["x"][k] for k in ("count", "nulls", "min", "max")} == {"count": 50, "nulls": 50, "min": 1.0,
                                                                              "max": 9.0}
    assert stats["x"]["mean"] == 5.0 and stats["x"]["std"] == pytest.approx(np.std([1, 3, 5, 7, 9]))
    assert stats["y"] == json.loads(json.dumps(column_stats(old, ["y"])))["y"]  # no NaN: as before
    assert stats["n"]["nulls"] == 0 and stats["n"]["mean"] == 49.5

    def manifest(st: dict, day: int) -> dict:
        return {"id": f"datasets/d/window_end=2026-01-0{day}@{day}", "summary": {"stats": {"train": st}}}

    failures, report = check_drift(manifest(stats, 3), manifest(column_stats(old, ["x", "y", "n"]), 2),
                                   DriftConfig())
    assert failures == ["drift.x: null rate rose by 0.5000, threshold 0.01"]
    assert report["columns"]["x"]["null_rate_increase"] == 0.5


def _stats(mean: float, std: float, count: int = 100, nulls: int = 0) -> dict:
    return {"count": count, "nulls": nulls, "min": 0.0, "max": 10.0, "mean": mean, "std": std}


@pytest.mark.parametrize("cur,old,expected", [
    (_stats(float("nan"), float("nan")), _stats(5.0, 2.0),
     "drift.x: mean nan, std nan in this dataset: not finite numbers, so its drift cannot be judged"),
    (_stats(float("inf"), float("nan")), _stats(5.0, 2.0),
     "drift.x: mean inf, std nan in this dataset: not finite numbers, so its drift cannot be judged"),
    (_stats(5.0, 2.0), _stats(float("nan"), float("nan")),
     "drift.x: mean nan, std nan in the previous dataset: not finite numbers, so its drift cannot be judged"),
])
def test_drift_fails_on_a_statistic_that_is_not_a_finite_number(cur, old, expected):
    """A statistic that is NaN or infinite (a column holding inf, or statistics committed before
    NaN counted as missing) compares false with every threshold: it passed. It fails, saying so."""
    import json

    from dlpipe.gates import DriftConfig, check_drift

    def manifest(st: dict, day: int) -> dict:  # through JSON, as the manifest stores it
        return json.loads(json.dumps({"id": f"datasets/d/window_end=2026-01-0{day}@{day}",
                                      "summary": {"stats": {"train": {"x": st, "ok": _stats(5.0, 2.0)}}}}))

    failures, report = check_drift(manifest(cur, 3), manifest(old, 2), DriftConfig())
    assert len(failures) == 1 and failures[0].startswith(expected), failures
    assert report["columns"]["x"]["mean_shift_std"] is None and report["columns"]["ok"]["mean_shift_std"] == 0.0
    json.dumps(report, allow_nan=False)  # the evidence stays plain JSON


def test_a_column_that_lost_every_value_is_still_judged():
    """With NaN counted as missing, an all-NaN column has no mean: it must not drop out of the
    default column list, which took only columns with a mean in this version."""
    from dlpipe.gates import DriftConfig, check_drift

    empty = {"count": 0, "nulls": 100, "min": None, "max": None, "mean": None, "std": None}
    cur = {"id": "c", "summary": {"stats": {"train": {"x": empty, "s": {**empty, "count": 100, "nulls": 0}}}}}
    old = {"id": "o", "summary": {"stats": {"train": {"x": _stats(5.0, 2.0),
                                                      "s": {**empty, "count": 100, "nulls": 0}}}}}
    failures, _ = check_drift(cur, old, DriftConfig())
    assert failures == ["drift.x: null rate rose by 1.0000, threshold 0.01"]


def test_a_split_is_read_without_columns_made_from_its_path(dlpipe_home):
    """The dataset lives under datasets/eta/window_end=.../: pyarrow's dataset reader added a
    window_end column from that path, which the gate then judged (or let through) as data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe import commit
    from dlpipe.gates import read_split
    from dlpipe.runctx import RunContext

    def produce(attempt) -> dict:
        (attempt / "train").mkdir()
        pq.write_table(pa.table({"x": [1.0, 2.0]}), attempt / "train" / "part-0.parquet")
        return {"columns": [("x", "float")], "splits": ["train"]}

    dataset = commit.run_stage(commit.StageKey("datasets", "eta", "window_end=2026-01-04"), inputs=[], config={},
                               code={"sources_hash": "t"}, run=RunContext(), produce=produce).manifest
    assert list(read_split(dataset, "train").columns) == ["x"]


def test_drift_compares_a_single_partition_dataset_with_its_earlier_version(tmp_path, monkeypatch):
    """The digits corpus has one partition ('all'): a new version (another scikit-learn, say)
    is compared with the one committed before it. An earlier partition, where there is one,
    still comes first."""
    import json

    from dlpipe.commit import StageKey
    from dlpipe.gates import DriftConfig, check_drift, previous_dataset

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))

    def manifest(name, partition, fp, when, label_mean):
        m = {"id": f"datasets/{name}/{partition}@{fp[:16]}", "stage": "datasets", "name": name,
             "partition": partition, "fingerprint": fp, "committed_at": when, "inputs": [],
             "summary": {"stats": {"train": {"label": {"count": 1400, "nulls": 0, "min": 0, "max": 9,
                                                       "mean": label_mean, "std": 2.9}}}}}
        folder = StageKey("datasets", name, partition).dir() / "manifests"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{fp}.json").write_text(json.dumps(m))
        return m

    old = manifest("digits", "all", "a" * 64, "2026-01-05T00:00:00.000+00:00", 4.5)
    new = manifest("digits", "all", "b" * 64, "2026-02-05T00:00:00.000+00:00", 8.0)
    assert previous_dataset(old) is None  # the first version has nothing before it
    assert previous_dataset(new)["id"] == old["id"]
    failures, report = check_drift(new, previous_dataset(new), DriftConfig(columns=["label"]))
    assert report["previous"] == old["id"] and failures == [
        "drift.label: mean moved 1.21 previous std (4.5 -> 8), threshold 0.5"]

    day1 = manifest("eta", "window_end=2026-01-02", "c" * 64, "2026-01-02T01:00:00.000+00:00", 4.0)
    day2_old = manifest("eta", "window_end=2026-01-03", "d" * 64, "2026-01-03T01:00:00.000+00:00", 4.0)
    day2_new = manifest("eta", "window_end=2026-01-03", "e" * 64, "2026-01-04T01:00:00.000+00:00", 4.0)
    assert previous_dataset(day2_new)["id"] == day1["id"]  # the window before, not an older build of this one
    assert previous_dataset(day2_old)["id"] == day1["id"]


def test_a_gate_spark_master_with_a_login_is_refused_without_showing_it():
    """The gate's config is written into its manifest: a master URL with a password would be too."""
    from dlpipe.errors import ConfigError
    from dlpipe.gates import DataGateConfig
    from dlpipe.pipeline_config import section

    with pytest.raises(ConfigError, match=r"data_gate\.spark_master=.*holds a login") as err:
        section({"_source": "p.yaml", "data_gate": {"spark_master": "k8s://https://admin:s3cr3t@api:6443"}},
                "data_gate", DataGateConfig)
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigError, match=r"holds a login") as err:  # a token alone is a login too
        section({"data_gate": {"spark_master": "k8s://https://s3cr3t@api:6443"}}, "data_gate", DataGateConfig)
    assert "s3cr3t" not in str(err.value)
    for master in ("k8s://https://admin:Kube/Pass@api:6443", "spark://u:pa/ss@h:7077", "k8s://https://tok/en@api"):
        with pytest.raises(ConfigError, match=r"holds a login") as err:  # a '/' in the password hid it before
            section({"data_gate": {"spark_master": master}}, "data_gate", DataGateConfig)
        assert "Pass" not in str(err.value) and "pa/ss" not in str(err.value) and "tok/en" not in str(err.value)
    assert section({"data_gate": {"spark_master": "spark://master:7077"}}, "data_gate",
                   DataGateConfig).spark_master == "spark://master:7077"


def test_the_shipped_eta_gates_refuse_a_trip_twice_in_a_split():
    """A trip filed under two days' raw partitions reaches a dataset window twice."""
    import yaml

    from dlpipe.pipeline_config import section
    from tests.conftest import ROOT

    for spec in ("eta_training.yaml", "marketplace_eta.yaml"):
        cfg = section({"_source": spec, **yaml.safe_load((ROOT / "pipelines" / spec).read_text())}, "data_gate",
                      DataGateConfig).model_copy(update={"min_rows": {}, "columns": {}})
        ids = pd.DataFrame({"trip_id": ["a", "b", "c"]})
        assert validate_frames({"train": ids}, cfg)[0] == []
        failures = validate_frames({"train": pd.concat([ids, ids.iloc[:1]])}, cfg)[0]
        assert len(failures) == 1 and "train.trip_id: expect_column_values_to_be_unique" in failures[0], spec


@pytest.mark.parametrize("cur,old,expected", [
    (_stats(15.0, 0.0), _stats(15.4, 4.1),  # a broken join: every row gets the default
     ["drift.x: the column became constant: std (4.1 -> 0), threshold 2.0"]),
    # constant before (a new pipeline's first window: no history yet): no scale, not judged
    (_stats(1.9, 2.3), _stats(0.0, 0.0), []),
    (_stats(1.0, 0.0), _stats(1.0, 0.0), []),
])
def test_drift_fails_when_a_column_becomes_constant(cur, old, expected):
    """A std of 0 in this dataset turned both checks off (shift 0, ratio 1)."""
    from dlpipe.gates import DriftConfig, check_drift

    def manifest(st: dict, day: int) -> dict:
        return {"id": f"datasets/d/window_end=2026-01-0{day}@{day}", "summary": {"stats": {"train": {"x": st}}}}

    failures, report = check_drift(manifest(cur, 3), manifest(old, 2), DriftConfig())
    assert failures == expected
    json.dumps(report, allow_nan=False)  # the report goes into a manifest  # the report goes into a manifest: no inf or NaN in it


def test_a_champion_trained_on_other_feature_code_is_not_compared_on_these_rows(capsys):
    """After a feature release a column can hold another quantity (a count become a daily mean):
    the old production model then scored an error of thousands, and every candidate passed."""
    from dlpipe.commit import StageKey, run_stage
    from dlpipe.gates import feature_mismatch
    from dlpipe.runctx import RunContext
    from operators import ModelGateOperator

    def features(code: str, day: str = "dt=2026-01-03") -> dict:
        return run_stage(StageKey("features", "eta", day), inputs=[], config={"lookback_days": 7},
                         code={"sources_hash": code * 16}, run=RunContext(),
                         produce=lambda attempt: (attempt / "part-0.parquet").write_bytes(b"x") and {}).manifest

    old, new = features("a"), features("b")
    record = {"name": "eta", "version": 1, "lineage": {"feature_partitions": [old["id"]]}}
    op = ModelGateOperator(task_id="g", training_id="x", pipeline_config="p.yaml")
    assert op._feature_manifests(record) == [old]
    why = feature_mismatch(record, [old], [new])
    assert why and why.startswith("eta@1 was trained on features made by other feature code or settings "
                                  "(feature sources aaaaaaaaaaaa, this dataset's bbbbbbbbbbbb)")
    assert "model_gate.champion_alias: null" in why
    assert feature_mismatch(record, [old], [old]) is None
    ev = {"metric": "mae", "label": "MAE", "value": 1.0, "rows": 500, "slices": {}}
    failures, note = judge_champion(ev, {**ev, "value": 3000.0, "ref": "eta@1", "feature_mismatch": why},
                                    ModelGateConfig())
    assert failures == [f"champion: {why}"] and "cannot compare" in note
    # a champion whose features this DLPIPE_HOME lacks (trained elsewhere): compared, with a warning
    gone = {"name": "eta", "version": 2, "lineage": {"feature_partitions": ["features/eta/dt=2026-01-01@" + "c" * 16]}}
    assert op._feature_manifests(gone) == [] and feature_mismatch(gone, [], [new]) is None
    assert "cannot tell which features eta@2 was trained on" in capsys.readouterr().out  # the task log
