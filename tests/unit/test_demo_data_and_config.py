"""Demo data determinism and structure; config errors that name the field, value and fix."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from dlpipe.demo_data import DemoDataConfig, generate_day, haversine_km, write_raw
from dlpipe.errors import ConfigError
from dlpipe.interval import interval_days
from dlpipe.pipeline_config import load_pipeline, section
from dlpipe.runctx import cli_context
from operators.factory import check_pipeline


def test_days_are_deterministic_and_independent():
    cfg = DemoDataConfig(rows_per_day=500)
    a = generate_day(cfg, date(2026, 1, 2))
    assert a.equals(generate_day(cfg, date(2026, 1, 2)))
    assert not a.equals(generate_day(cfg, date(2026, 1, 3)))
    assert a.num_rows == 500 and a.column("trip_id")[0].as_py() == "20260102-0000000"


def test_delivery_time_has_learnable_structure():
    t = generate_day(DemoDataConfig(rows_per_day=5000), date(2026, 1, 1)).to_pandas()
    dist = haversine_km(t.pickup_lat, t.pickup_lon, t.dropoff_lat, t.dropoff_lon)
    assert np.corrcoef(dist, t.delivery_minutes)[0, 1] > 0.3
    assert (t.delivery_minutes > t.prep_minutes).all()
    assert (t.pickup_ts > t.order_ts).all() and (t.dropoff_ts > t.pickup_ts).all()


def test_rerun_commits_nothing_new_and_more_days_keep_old_ones():
    run = cli_context("test")
    first = write_raw(DemoDataConfig(days=2, rows_per_day=100), run)
    again = write_raw(DemoDataConfig(days=3, rows_per_day=100), run)
    assert [r.skipped for r in first] == [False, False]
    assert [r.skipped for r in again] == [True, True, False]
    assert [r.id for r in again[:2]] == [r.id for r in first]


def test_bad_demo_config():
    with pytest.raises(ConfigError, match=r"invalid days=0: generate at least one day"):
        write_raw(DemoDataConfig(days=0), cli_context("test"))


def test_intervals_must_be_whole_days():
    assert interval_days("2026-01-03", "2026-01-05") == [date(2026, 1, 3), date(2026, 1, 4)]
    with pytest.raises(ConfigError, match="UTC midnight.*CronDataIntervalTimetable\\('@daily', timezone='UTC'\\)"):
        interval_days("2026-01-03T05:00:00+00:00", "2026-01-04")
    with pytest.raises(ConfigError, match="ISO-8601"):
        interval_days("x; touch /tmp/pwned", "2026-01-04")


def test_pipeline_section_errors_name_file_field_and_value(tmp_path):
    from training.config import ScaleConfig, TrainConfig

    p = tmp_path / "p.yaml"
    p.write_text("train: {epochs: 0}\nscale: {hosts: 'localhost:2; rm -rf /'}\n")
    pipeline = load_pipeline(p)
    with pytest.raises(ConfigError) as e:
        section(pipeline, "train", TrainConfig)
    assert f"{p}: train.epochs" in str(e.value) and "=0" in str(e.value) and "greater than or equal to 1" in str(e.value)
    with pytest.raises(ConfigError, match=r"scale.hosts.*is not host:slots"):
        section(pipeline, "scale", ScaleConfig)
    p.write_text("train: {epochs: 2, learning_rte: 0.1}\n")
    with pytest.raises(ConfigError, match=r"train.learning_rte.*Extra inputs are not permitted; did you mean "
                                          r"'learning_rate'\? the fields here are \['batch_size', "):
        section(load_pipeline(p), "train", TrainConfig)


def test_every_problem_of_a_section_is_named_in_one_error(tmp_path):
    """One edit fixes a spec: the first problem with its value, then the others by field and rule
    (a typo with its likely field), so a user does not meet them one run at a time."""
    from training.config import TrainConfig

    p = tmp_path / "p.yaml"
    p.write_text("train: {epochs: 0, batch_size: -4, seed: abc, learning_rte: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        section(load_pipeline(p), "train", TrainConfig)
    message = str(e.value)
    assert "train.epochs=0: Input should be greater than or equal to 1; this section has 3 more problems: " in message
    assert "train.batch_size (Input should be greater than or equal to 1)" in message
    assert "train.seed (Input should be a valid integer" in message
    assert "train.learning_rte (an unknown field; did you mean 'learning_rate'?)" in message
    p.write_text("train: {" + ", ".join(f"x{i}: 1" for i in range(9)) + "}\n")
    with pytest.raises(ConfigError, match=r"train.x0=1: Extra inputs .* 8 more problems: train.x1 \(an unknown "
                                          r"field\); .*train.x5 \(an unknown field\); and 3 more$"):
        section(load_pipeline(p), "train", TrainConfig)


def test_an_alias_bomb_or_a_recursive_alias_is_refused_on_load_and_shown_values_are_cut(tmp_path):
    """Ten anchors of ten aliases each: 3 KB of YAML, 10^10 values for whatever walks them (the
    error message that shows a misplaced section ran out of memory). Aliases that expand to a
    spec's size still load."""
    items = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                                                      for i in range(1, 10)]
    p = tmp_path / "p.yaml"
    for text, said in (("lol: [" + ", ".join(items) + "]", r"with its aliases \(\*name\) expanded, the document "
                                                          r"holds more than 100,000 values"),
                       ("lol: &a [1, *a]", r"line 2, column 6: an alias refers to the collection that holds it")):
        p.write_text(f"kind: eta_regressor\n{text}\n")
        with pytest.raises(ConfigError, match=said):
            load_pipeline(p)
    p.write_text("base: &b {epochs: 2, batch_size: 64}\ntrain: *b\nother: [*b, *b]\n")
    assert load_pipeline(p)["train"] == {"epochs": 2, "batch_size": 64}
    p.write_text("kind: eta_regressor\nlol: [" + ", ".join(["x" * 10] * 500) + "]\n")
    with pytest.raises(ConfigError) as e:
        check_pipeline(load_pipeline(p))
    assert len(str(e.value)) < 1000 and "... (7,000 characters)" in str(e.value)


def test_an_unknown_field_names_the_fields_of_the_mapping_that_holds_it(tmp_path):
    """Nested too: a column rule of the data gate (a mapping of rules), its own fields listed."""
    from dlpipe.gates import DataGateConfig

    p = tmp_path / "p.yaml"
    p.write_text("data_gate:\n  columns:\n    delivery_minutes: {nullable: false}\n")
    with pytest.raises(ConfigError) as e:
        section(load_pipeline(p), "data_gate", DataGateConfig)
    assert "data_gate.columns.delivery_minutes.nullable" in str(e.value)
    assert "the fields here are ['max', 'min', 'not_null', 'type']" in str(e.value)


def test_duplicate_keys_sections_that_are_not_mappings_and_impossible_values_are_refused(tmp_path):
    from dlpipe.gates import DataGateConfig
    from training.config import DigitsTrainConfig, TrainConfig

    p = tmp_path / "p.yaml"
    p.write_text("train:\n  epochs: 6\n  batch_size: 64\n  epochs: 60\n")
    with pytest.raises(ConfigError, match=r"the key 'epochs' is given twice, on lines 2 and 4; keep one"):
        load_pipeline(p)
    p.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"p.yaml: train=\[1, 2\]: a section is a mapping of fields.*'epochs'"):
        section(load_pipeline(p), "train", TrainConfig)
    for widths in ("[-3]", "[0]", "[64, 0]"):
        p.write_text(f"train: {{hidden: {widths}}}\n")
        with pytest.raises(ConfigError, match=r"train.hidden.\d+.*greater than 0"):
            section(load_pipeline(p), "train", TrainConfig)
    p.write_text("train: {channels: [16, -1]}\n")
    with pytest.raises(ConfigError, match=r"train.channels.1.*greater than 0"):
        section(load_pipeline(p), "train", DigitsTrainConfig)
    for kind in (TrainConfig, DigitsTrainConfig):  # the shuffle's generator takes no negative seed:
        p.write_text("train: {seed: -1}\n")  # before, every rank failed in its first epoch
        with pytest.raises(ConfigError, match=r"train.seed.*greater than or equal to 0"):
            section(load_pipeline(p), "train", kind)
    p.write_text("data_gate: {min_rows: {trian: 1000}}\n")  # would have left train's floor at 1
    with pytest.raises(ConfigError, match=r"data_gate.min_rows.trian.*'train' or 'validation'"):
        section(load_pipeline(p), "data_gate", DataGateConfig)


def test_bad_dates_numbers_and_files_name_the_file_line_and_fix(tmp_path):
    p = tmp_path / "p.yaml"
    for value, said in (("2026-02-30", "day is out of range for month"), ("2026-13-01", "month must be in 1..12")):
        p.write_text(f"dag:\n  start_date: {value}\n")  # a bare ValueError before, which Airflow retried
        with pytest.raises(ConfigError, match=rf"fix the YAML at line 2, column 15: '{value}' is not a valid "
                                              rf"date \({said}\); write a real date"):
            load_pipeline(p)
    p.write_text("train: {learning_rate: !!float abc}\n")
    with pytest.raises(ConfigError, match=r"'abc' is not a number"):
        load_pipeline(p)
    p.write_text("registry:\n  root: s3://AKIAEXAMPLE:wJalrSECRET-LEAK@bucket/models: staging\n")
    with pytest.raises(ConfigError, match=r"at line 2, column \d+: mapping values are not allowed") as e:
        load_pipeline(p)  # PyYAML's own message copies the line, cut to lose the '://' that masks it
    assert "SECRET-LEAK" not in str(e.value)
    for tagged in ("!!int abc", "!!bool maybe"):  # a bare ValueError and KeyError before
        p.write_text(f"train: {{epochs: {tagged}}}\n")
        with pytest.raises(ConfigError, match=r"a tagged value could not be read"):
            load_pipeline(p)
    p.write_text("train: {epochs: 2}\x01\n")
    with pytest.raises(ConfigError, match=r"fix the YAML at character 18: special characters are not allowed \(U\+0001\)"):
        load_pipeline(p)
    with pytest.raises(ConfigError, match=r"this is a directory; point at a YAML file in it"):
        load_pipeline(tmp_path)
    p.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"the file is not UTF-8 text"):
        load_pipeline(p)


def test_yaml_booleans_strings_and_infinity_are_no_counts_in_any_section(tmp_path):
    from feature_jobs.dataset_stage import DatasetConfig
    from feature_jobs.digits_stage import DigitsConfig
    from feature_jobs.feature_stage import FeatureJobConfig
    from operators.factory import DagSpec

    models = {"features": FeatureJobConfig, "dataset": DatasetConfig, "digits": DigitsConfig, "dag": DagSpec}
    dag = "dag_id: a, owner: b, start_date: 2026-01-01, "
    p = tmp_path / "p.yaml"
    for name, body, field in (("features", "num_files: yes", "num_files=True"),  # read as 1 before
                              ("features", "lookback_days: no", "lookback_days=False"),
                              ("features", "lookback_days: '7'", "lookback_days='7'"),
                              ("features", "default_prep_minutes: true", "default_prep_minutes=True"),
                              ("features", "default_prep_minutes: .inf", "default_prep_minutes=inf"),
                              ("dataset", "window_days: yes", "window_days=True"),
                              ("digits", "num_files: yes", "num_files=True"),
                              ("dag", dag + "retries: yes", "retries=True")):
        p.write_text(f"{name}: {{{body}}}\n")
        with pytest.raises(ConfigError, match=rf"{name}.{field}"):
            section(load_pipeline(p), name, models[name])
    p.write_text("features: {default_prep_minutes: 12, lookback_days: 3}\n")
    assert section(load_pipeline(p), "features", FeatureJobConfig).default_prep_minutes == 12.0


def test_shipped_pipeline_config_is_valid():
    from dlpipe.gates import DataGateConfig, ModelGateConfig
    from feature_jobs.dataset_stage import DatasetConfig
    from feature_jobs.feature_stage import FeatureJobConfig
    from training.config import ScaleConfig, TrainConfig
    from tests.conftest import ROOT

    pipeline = load_pipeline(ROOT / "pipelines" / "eta_training.yaml")
    for name, model in [("features", FeatureJobConfig), ("dataset", DatasetConfig),
                        ("data_gate", DataGateConfig), ("train", TrainConfig),
                        ("scale", ScaleConfig), ("model_gate", ModelGateConfig)]:
        assert section(pipeline, name, model) is not None
    assert section(pipeline, "scale", ScaleConfig).num_proc == 2


def test_error_values_hide_logins_and_credentials_but_not_what_the_user_must_fix():
    from dlpipe.errors import ConfigError

    cases = {
        "s3://AKIA:wJal/K7MD@bucket/m": "s3://***@bucket/m",  # an AWS secret key holds '/'
        "http://u:p@h/x and s3://bucket/x": "http://***@h/x and s3://bucket/x",
        "s3://bucket/models/eta@3/model.pt": "s3://bucket/models/eta@3/model.pt",  # an '@' in a path
    }
    for value, shown in cases.items():
        assert ConfigError("f", value, "fix").value == shown
    section = {"aws_secret_access_key": "zzz", "session_token": "t", "order_key": {"min": 0},
               "tokenizer": "bert", "root": "s3://k:s@b/r"}
    assert ConfigError("f", section, "fix").value == {
        "aws_secret_access_key": "***", "session_token": "***", "order_key": {"min": 0},
        "tokenizer": "bert", "root": "s3://***@b/r"}


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def _validate(pipeline: dict) -> None:
    """What loading a spec does: its top-level keys are checked, then each section."""
    from dlpipe.registry import RegistryConfig
    from operators.factory import check_pipeline
    from training.config import TrainConfig

    check_pipeline(pipeline)
    section(pipeline, "registry", RegistryConfig)
    section(pipeline, "train", TrainConfig)


@pytest.mark.parametrize("yaml_text, field", [
    (f"registry:\n  root: s3://models/eta\n  aws_secret_access_key: {SECRET}\n", "registry.aws_secret_access_key"),
    (f"aws_secret_access_key: {SECRET}\n", "aws_secret_access_key"),  # a line misplaced at the top level
    ("train:\n  api_key: 1234567890123\n", "train.api_key"),  # YAML reads it as a number
])
def test_a_credential_misplaced_in_the_yaml_is_not_echoed(tmp_path, yaml_text, field):
    """A ConfigError whose field path ends in a credential's name shows '***' for the value,
    whatever raised it (a section's validation, the check of top-level keys), so neither the task
    log nor the audit log's 'failed' event holds it. Before, only credentials inside a shown
    mapping (a misspelt section) were masked."""
    from dlpipe import audit

    p = tmp_path / "p.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        _validate(load_pipeline(p))
    message = str(e.value)
    assert f"{p}: {field}='***'" in message, message
    audit.failed(e.value, stage="t", run=cli_context("t"))
    log = audit.settings.audit_log_path().read_text()
    assert SECRET not in log and "1234567890123" not in log and field in log


def test_only_the_value_under_a_credentials_name_is_hidden():
    assert ConfigError("p.yaml: registry.session_token", "t0k3n", "fix").value == "***"
    assert ConfigError("p.yaml: registry.root", "s3://bucket/x", "fix").value == "s3://bucket/x"
    assert ConfigError("p.yaml: train.tokenizer", "bert", "fix").value == "bert"  # not a token
    assert ConfigError("my.secrets.d/p.yaml: train.epochs", 0, "fix").value == 0  # the file's name does not count
    assert ConfigError("p.yaml: registry.use_credentials", True, "fix").value is True  # a switch says nothing
    # a mapping under such a name is looked into, as in a shown section
    assert ConfigError("p.yaml: credentials", {"region": "eu", "secret": "s"}, "fix").value == {
        "region": "eu", "secret": "***"}
