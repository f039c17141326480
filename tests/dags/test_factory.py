"""Pipelines from spec files: validated at parse time, one DAG per spec, a bad spec breaks only
its own DAG and the DagBag says which file and why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dlpipe.errors import ConfigError
from operators.factory import load_spec, pipeline_dag
from tests.conftest import ROOT

SPEC = ROOT / "pipelines" / "marketplace_eta.yaml"


def _spec(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of the shipped spec with ``section.field`` changes (None deletes the field)."""
    data = yaml.safe_load(SPEC.read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_spec_becomes_its_dag():
    dag = pipeline_dag(SPEC)
    assert dag.dag_id == "marketplace_eta" and dag.owner == "marketplace"
    assert [t.task_id for t in dag.topological_sort()][:3] == ["extract_features", "materialize_dataset", "data_gate"]
    assert {"dlpipe", "marketplace", "eta"} <= set(dag.tags) and dag.catchup is False
    assert dag.get_task("train").execution_timeout.total_seconds() == 7200
    # a registry store that stops answering ends them (no S3 deadline held register_model for minutes)
    assert {dag.get_task(t).execution_timeout.total_seconds() for t in ("register_model", "promote_staging")} == {1800}
    assert dag.get_task("materialize_dataset").depends_on_past
    assert dag.params["reason"] == ""  # params are validated by JSON schema when a run starts
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param reason.*too long"):
        dag.params["reason"] = "x" * 501


def test_the_digits_spec_is_a_second_kind_without_a_feature_stage():
    dag = pipeline_dag(ROOT / "pipelines" / "digits.yaml")
    assert dag.dag_id == "digits_classifier" and dag.owner == "vision"
    assert [t.task_id for t in dag.topological_sort()] == [
        "materialize_dataset", "data_gate", "train", "model_gate", "register_model", "promote_staging"]


def test_kind_decides_which_sections_a_spec_may_have(tmp_path):
    digits = yaml.safe_load((ROOT / "pipelines" / "digits.yaml").read_text())
    digits["features"] = {"lookback_days": 7}
    path = tmp_path / "digits_with_features.yaml"
    path.write_text(yaml.safe_dump(digits))
    with pytest.raises(ConfigError, match=r"features.*a digits_classifier pipeline has the sections"):
        load_spec(path)
    digits.pop("features")
    digits["train"]["hidden_layers"] = [64]  # the digits CNN's fields, not the ETA MLP's
    path.write_text(yaml.safe_dump(digits))
    with pytest.raises(ConfigError, match=r"train.hidden_layers"):
        load_spec(path)


def test_a_kind_whose_training_sources_are_not_listed_is_refused_when_parsed(tmp_path, monkeypatch):
    """Otherwise its feature, dataset and data-gate stages commit before the train task fails."""
    import dataclasses

    from operators import kinds

    fraud = dataclasses.replace(kinds.KINDS["eta_regressor"], name="fraud_classifier", train_entry="training.train_fraud")
    monkeypatch.setitem(kinds.KINDS, "fraud_classifier", fraud)
    spec = yaml.safe_load(SPEC.read_text())
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump({**spec, "kind": "fraud_classifier"}))
    with pytest.raises(ConfigError) as e:
        load_spec(path)
    assert e.value.field.endswith("fraud.yaml: kind") and e.value.value == "fraud_classifier"
    assert "'training.train_fraud'" in e.value.fix and "ENTRY_SOURCES" in e.value.fix


@pytest.mark.parametrize("gap, field", [({"gate_metrics": ()}, "gate_metrics"),
                                        ({"baseline_metrics": ()}, "baseline_metrics"),
                                        ({"baseline_metrics": ("val_mae",)}, "baseline_metrics"),
                                        ({"dataset_columns": None}, "dataset_columns")])
def test_a_kind_missing_its_own_declarations_is_named_not_the_spec(tmp_path, monkeypatch, gap, field):
    """No gate_metrics blamed the spec's model_gate.metric ('use one of []'); no dataset_columns
    let a misspelt data-gate column through unchecked."""
    import dataclasses

    from operators import kinds

    maps = dataclasses.replace(kinds.KINDS["eta_regressor"], name="maps_speed", **gap)
    monkeypatch.setitem(kinds.KINDS, "maps_speed", maps)
    spec = yaml.safe_load(SPEC.read_text())
    path = tmp_path / "maps.yaml"
    path.write_text(yaml.safe_dump({**spec, "kind": "maps_speed"}))
    with pytest.raises(ConfigError, match=rf"operators/kinds.py: kind maps_speed: {field}="):
        load_spec(path)


def test_a_spec_without_a_kind_says_which_kind_judged_it_and_a_default_says_it_is_one(tmp_path):
    spec = yaml.safe_load(SPEC.read_text())
    spec.pop("kind", None)
    spec["data_gate"]["columns"]["probe_id"] = {"not_null": True}
    path = tmp_path / "copied.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"data_gate.columns.probe_id.*this spec names no kind: it is judged as "
                                          r"a eta_regressor pipeline, the default; set kind:"):
        load_spec(path)
    from operators.factory import check_pipeline

    digits = yaml.safe_load((SPEC.parent / "digits.yaml").read_text())
    digits["model_gate"].pop("metric")
    with pytest.raises(ConfigError, match=r"model_gate.metric='val_mae': use one of \['val_error'\].*"
                                          r"model_gate.metric is not set: this is its default"):
        check_pipeline({**digits, "_source": "d.yaml"})


def test_every_shipped_kind_lists_its_training_sources():
    from operators.kinds import KINDS
    from training.stages import ENTRY_SOURCES

    assert {k.train_entry for k in KINDS.values()} <= set(ENTRY_SOURCES)


@pytest.mark.parametrize("changes, field, value, fix", [
    ({"dag__owner": None}, "dag.owner", "(missing)", "Field required: add dag.owner"),
    ({"dag__schedule": "every day at noon"}, "dag.schedule", "every day at noon", "not a cron expression"),
    ({"dag__schedule": "0 6 * * *"}, "dag.schedule", "0 6 * * *", "one partition per UTC day"),
    ({"dag__schedule": "@hourly"}, "dag.schedule", "@hourly", "one partition per UTC day"),
    # midnight, a day apart for a while, then a gap: a run would cover several days
    ({"dag__schedule": "0 0 * * 0,2-6"}, "dag.schedule", "0 0 * * 0,2-6", "a cron that skips days"),
    ({"dag__schedule": "0 0 1-28 * *"}, "dag.schedule", "0 0 1-28 * *", "a cron that skips days"),
    ({"dag__schedule": "0 0 * 1-11 *"}, "dag.schedule", "0 0 * 1-11 *", "a cron that skips days"),
    ({"dag__dag_id": "bad id!"}, "dag.dag_id", "bad id!", "should match pattern"),
    ({"dag__end_date": "2025-12-01"}, "dag.end_date", "2025-12-01", "must not be before dag.start_date"),
    ({"train__epochs": 0}, "train.epochs", "0", "greater than or equal to 1"),
    ({"scale__run_timeout_s": 14400}, "dag.train_timeout_s", "7200", "longer than scale.run_timeout_s=14400"),
    # a second more than the job is no time to end it and keep the ranks' output
    ({"scale__run_timeout_s": 7199}, "dag.train_timeout_s", "7200", "at least 60 s longer than scale.run_timeout_s"),
    ({"train__epochs": True}, "train.epochs", "True", "valid integer"),  # YAML's `yes`
    ({"train__learning_rate": "fast"}, "train.learning_rate", "fast", "write a number, e.g. 0.002"),
    ({"scale__num_proc": 2.5}, "scale.num_proc", "2.5", "valid integer"),
    ({"scale__hosts": "gpu-1 8"}, "scale.hosts", "gpu-1 8", "write hosts as host:slots,host:slots (e.g. node1:4"),
    ({"scale__hosts": "a:2,a:2", "scale__num_proc": 4}, "scale.hosts", "a:2,a:2", "host 'a' is listed twice"),
    ({"scale__network_interface": "--foo"}, "scale.network_interface", "--foo", "not starting with '-'"),
    ({"scale__max_np": 4}, "scale.min_np", "None", "elastic training needs both min_np and host_discovery_script"),
    ({"trian__epochs": 3}, "trian", "{'epochs': 3}", "remove it or fix its name"),
    ({"regsitry__root": "s3://AKIAX:hunter2@models/reg"}, "regsitry", "s3://***@models/reg", "remove it or fix its name"),
    ({"registry": "s3://AKIAX:hun/ter2@models/reg"}, "registry", "s3://***@models/reg", "a section is a mapping"),
    ({"dag": None}, "dag", "None", "add a dag: section"),
    # no default name: teams that left it out shared 'model@N', its aliases and its champion
    ({"model_name": None}, "model_name", "(missing)", "add model_name: the registry name"),
    ({"kind": "gpt"}, "kind", "gpt", "use one of ['digits_classifier', 'eta_regressor']"),
    ({"features__name": "Team ETA"}, "features.name", "Team ETA", "should match pattern"),
    ({"model_gate__metric": "val_mea"}, "model_gate.metric", "val_mea", "use one of ['val_mae']"),
    # the pair reversed passed models worse than the baseline; a metric against itself passed all;
    # the training split's error passed an overfit model
    ({"model_gate__metric": "baseline_mae", "model_gate__baseline_metric": "val_mae"},
     "model_gate.metric", "baseline_mae", "use one of ['val_mae']"),
    ({"model_gate__baseline_metric": "val_mae"}, "model_gate.baseline_metric", "val_mae",
     "use one of ['baseline_mae']"),
    ({"model_gate__metric": "train_mae"}, "model_gate.metric", "train_mae", "an overfit model wins them"),
    # YAML's `yes` read as 1.0 (no ceiling on an error rate); infinity turned a check off
    ({"model_gate__max_value": True}, "model_gate.max_value", "True", "valid number"),
    ({"model_gate__min_improvement": 10}, "model_gate.min_improvement", "10", "for 10% write 0.1"),
    ({"model_gate__slice_min_rows": True}, "model_gate.slice_min_rows", "True", "valid integer"),
    ({"model_gate__slice_z": float("inf")}, "model_gate.slice_z", "inf", "not a finite number"),
    ({"model_gate__min_improvement": float("nan")}, "model_gate.min_improvement", "nan", "not a finite number"),
    ({"data_gate__drift": {"max_std_ratio": float("inf")}}, "data_gate.drift.max_std_ratio", "inf",
     "not a finite number"),
    ({"data_gate__min_rows": {"train": True}}, "data_gate.min_rows.train", "True", "valid integer"),
    ({"train__learning_rate": float("nan")}, "train.learning_rate", "nan", "not a finite number"),
    ({"model_gate__champion_alias": "Prod/x"}, "model_gate.champion_alias", "Prod/x", "should match pattern"),
    ({"registry__promote_to": "Staging"}, "registry.promote_to", "Staging", "should match pattern"),
    # the pattern in words as well: pydantic shows only the regular expression
    ({"registry__promote_to": "Staging"}, "registry.promote_to", "Staging", "a lower-case letter, then up to 31"),
    ({"dataset__name": "Fraud"}, "dataset.name", "Fraud", "a lower-case letter or digit, then up to 62"),
    ({"dag__dag_id": "fraud eta"}, "dag.dag_id", "fraud eta", "1 to 200 letters, digits, '_', '.' or '-'"),
    ({"registry__root": "http://x"}, "registry.root", "http://x", "use a local directory or s3://BUCKET"),
    ({"registry__root": "s3://"}, "registry.root", "s3://", "needs a bucket"),
    ({"registry__root": "s3:/ml-models/registry"}, "registry.root", "s3:/ml-models/registry", "(two slashes)"),
    ({"registry__root": "models/registry"}, "registry.root", "models/registry", "another registry on every worker"),
    ({"registry__root": "s3://AKIAX:hunter2@models/reg"}, "registry.root", "s3://***@models/reg",
     "credentials do not belong in the URI"),
    ({"scale__hosts": "localhost:0", "scale__num_proc": 1}, "scale.hosts", "localhost:0", "at least 1 slot"),
    ({"scale__hosts": "localhost:2", "scale__num_proc": 8}, "scale.num_proc", "8", "more than the 2 slot(s)"),
])
def test_spec_errors_name_the_file_the_field_the_value_and_the_fix(tmp_path, changes, field, value, fix):
    path = _spec(tmp_path, "team", **changes)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and field in message and value in message and fix in message, message
    assert "hunter2" not in message and "hunter2" not in repr(err.value.__cause__)
    assert "Value error" not in message


def test_a_bad_spec_breaks_only_its_own_dag_and_the_dagbag_says_why(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    good = _spec(tmp_path, "good", dag__dag_id="team_good")
    bad = _spec(tmp_path, "bad", dag__dag_id="team_bad", train__epochs=0)
    dags = tmp_path / "dags"
    dags.mkdir()
    for name, spec in (("good", good), ("bad", bad)):
        (dags / f"{name}.py").write_text(
            "# An Airflow DAG from a dlpipe spec (Airflow parses files that mention airflow and dag)\n"
            f"from operators.factory import pipeline_dag\ndag = pipeline_dag({str(spec)!r})\n")
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dags) == {"team_good"}
    assert list(bag.import_errors) == [str(dags / "bad.py")]
    error = bag.import_errors[str(dags / "bad.py")]
    assert str(bad) in error and "train.epochs" in error and "greater than or equal to 1" in error, error


def test_task_log_summary_names_bulky_fields_instead_of_printing_them():
    from operators.base import brief

    summary = {"rows": {"train": 16086, "validation": 3914}, "content_sha256": "ab" * 32,
               "stats": {f"col{i}": {"count": 16086, "max": 98.18436431884766, "mean": 35.184161054010524,
                                     "min": 5.425265312194824, "nulls": 0} for i in range(20)},
               "schema": [{"name": f"col{i}", "codec": "ScalarCodec"} for i in range(20)]}
    line = brief(summary)
    assert line.startswith("{'rows': {'train': 16086, 'validation': 3914}, 'content_sha256': 'abab")
    assert line.endswith("; stats, schema: in the manifest")
    assert "col3" not in line and len(line) < 300
    assert brief({"version": 1, "moved": False}) == "{'version': 1, 'moved': False}"
    metrics = {"val_mae": 3.74, "samples_per_s": 51200.8,
               "ranks": [{"rank": r, "compute_s": 1.3, "data_wait_s": 0.5} for r in range(8)]}
    assert brief({"metrics": metrics}) == ("{'metrics': {'val_mae': 3.74, 'samples_per_s': 51200.8}}; "
                                           "metrics.ranks: in the manifest")


def test_a_task_refuses_a_misspelt_section_of_its_pipeline_before_doing_anything(tmp_path):
    """The shipped eta DAG is not a spec (no dag: section), so its YAML is checked when a task
    starts: a misspelt section fails the task without retry, instead of leaving the defaults."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from operators import DataGateOperator

    data = yaml.safe_load((ROOT / "pipelines" / "eta_training.yaml").read_text())
    data["trian"] = data.pop("train")
    path = tmp_path / "eta.yaml"
    path.write_text(yaml.safe_dump(data))
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="data_gate", try_number=1)
    context = {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}}
    op = DataGateOperator(task_id="data_gate", dataset_id="datasets/eta/window_end=2026-01-04@" + "0" * 16,
                          pipeline_config=str(path))
    with pytest.raises(AirflowFailException, match=rf"{path}: trian=.*remove it or fix its name.*'train'"):
        op.execute(context)
    from dlpipe import audit  # failed before any stage began, and still audited

    [event] = list(audit.read())
    assert (event["event"], event["stage"], event["run"]["task_id"]) == ("failed", "DataGateOperator", "data_gate")
    assert "trian" in event["error"]


def test_horovod_arguments_are_checked_when_the_dag_is_parsed_and_named_as_arguments():
    from operators import HorovodTrainOperator

    for kwargs, shown in [({"num_proc": 0}, "num_proc=0"), ({"hosts": "localhost:x"}, "hosts='localhost:x'"),
                          ({"controller": "nccl"}, "controller='nccl'"), ({"hosts": "a:2,a:2"}, "hosts='a:2,a:2'"),
                          ({"network_interface": "-x"}, "network_interface='-x'")]:
        with pytest.raises(ConfigError, match=rf"HorovodTrainOperator\(task_id='train'\) argument {re.escape(shown)}"):
            HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", **kwargs)
    op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", num_proc=4,
                              hosts="gpu-1:2,gpu-2:2", host_discovery_script="/opt/discover.sh")
    assert op.scale_overrides == {"num_proc": 4, "hosts": "gpu-1:2,gpu-2:2", "host_discovery_script": "/opt/discover.sh"}


def test_the_model_gate_looks_for_its_champion_where_the_operator_says(tmp_path):
    from operators import ModelGateOperator, RegisterModelOperator

    pipeline = {"registry": {"root": str(tmp_path / "from-yaml")}, "_source": "p.yaml"}
    own = ModelGateOperator(task_id="g", training_id="x", pipeline_config="p.yaml",
                            registry_root=str(tmp_path / "team-registry"))
    assert own.champion_store(pipeline).uri == str(tmp_path / "team-registry")
    register = RegisterModelOperator(task_id="r", training_id="x", pipeline_config="p.yaml", gate_ids=["g"],
                                     registry_root=str(tmp_path / "team-registry"))
    assert register._settings(pipeline)[1].uri == own.champion_store(pipeline).uri  # the same registry
    default = ModelGateOperator(task_id="g2", training_id="x", pipeline_config="p.yaml")
    assert default.champion_store(pipeline).uri == str(tmp_path / "from-yaml")


def test_a_run_without_a_data_interval_fails_once_saying_how_to_run_a_day():
    """Airflow 3 gives a run triggered without a logical date no data interval: the Spark
    stages fail without retry and say what to do (the template used before failed to render,
    and Airflow retried it)."""
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from operators import PetastormDatasetOperator, SparkFeatureOperator

    ti = SimpleNamespace(dag_id="eta_training", run_id="manual__x", task_id="t", try_number=1)
    context = {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {},
               "data_interval_start": None, "data_interval_end": None}
    for cls in (SparkFeatureOperator, PetastormDatasetOperator):
        op = cls(task_id="t", pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
        with pytest.raises(AirflowFailException, match=r"data interval=None: this run has none.*--logical-date.*"
                                                       r"airflow backfill create"):
            op.execute(context)
    from dlpipe import audit

    assert [(e["event"], e["stage"]) for e in audit.read()] == [("failed", "SparkFeatureOperator"),
                                                               ("failed", "PetastormDatasetOperator")]


def test_a_learning_rate_written_1e_3_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3, with no dot, as a string; the train section takes it."""
    from dlpipe.pipeline_config import load_pipeline, section
    from training.config import TrainConfig

    path = tmp_path / "p.yaml"
    path.write_text("train: {learning_rate: 1e-3}\n")
    pipeline = load_pipeline(path)
    assert pipeline["train"]["learning_rate"] == "1e-3"  # what YAML gives
    assert section(pipeline, "train", TrainConfig).learning_rate == 0.001


@pytest.mark.parametrize("schedule", ["@daily", "@midnight", "0 0 * * *", "00 00 * * *", "0 0 */1 * *",
                                      "0 0 * * 0-6", "0 0 1-31 * *"])
def test_daily_midnight_schedules_are_accepted(tmp_path, schedule):
    spec, _ = load_spec(_spec(tmp_path, "team", dag__schedule=schedule))
    assert spec.schedule == schedule


def test_a_relative_spec_path_is_found_from_the_dag_file_not_from_dlpipe_or_the_working_directory(tmp_path,
                                                                                               monkeypatch):
    """A deployment keeps dags/ and pipelines/ side by side wherever it likes (the image: under
    /opt/dlpipe/app, with dlpipe installed in site-packages). The DAG file names its spec
    relative to itself or to its parent folder, and the scheduler's working directory is
    another one still."""
    from airflow.dag_processing.dagbag import DagBag

    app = tmp_path / "app"
    (app / "dags").mkdir(parents=True)
    (app / "pipelines").mkdir()
    _spec(app / "pipelines", "team", dag__dag_id="team_beside")
    (app / "dags" / "team.py").write_text(
        "# Airflow DAG from a dlpipe spec\nfrom operators.factory import pipeline_dag\n"
        "dag = pipeline_dag('pipelines/team.yaml')\n")
    (app / "dags" / "missing.py").write_text(
        "# Airflow DAG from a dlpipe spec\nfrom operators.factory import pipeline_dag\n"
        "dag = pipeline_dag('pipelines/nowhere.yaml')\n")
    monkeypatch.chdir(tmp_path)
    bag = DagBag(dag_folder=str(app / "dags"))
    assert set(bag.dags) == {"team_beside"}
    error = bag.import_errors[str(app / "dags" / "missing.py")]
    assert "pipelines/nowhere.yaml" in error and str(app / "pipelines" / "nowhere.yaml") in error
    assert "relative to the DAG file's folder or its parent" in error


def test_a_spec_that_promotes_no_alias_gets_no_promote_task(tmp_path):
    """``registry.promote_to: null`` means register only; before, the DAG still had the promote
    task, which failed every run after the model was registered."""
    path = _spec(tmp_path, "team", registry__promote_to=None)
    data = yaml.safe_load(path.read_text())
    data["registry"]["promote_to"] = None  # _spec deletes a None; here it must be an explicit null
    path.write_text(yaml.safe_dump(data))
    dag = pipeline_dag(path)
    assert [t.task_id for t in dag.topological_sort()][-1] == "register_model"
    assert "promote_staging" not in dag.task_ids


def test_a_day_whose_raw_data_is_not_committed_yet_is_retried_not_failed(dlpipe_home):
    """Late ingestion: the interval's raw partition may land after the run starts. The feature
    task raises InputNotReady, which Airflow retries (retries, retry_delay), where the other
    uncommitted inputs (a wrong dataset id) fail at once. It fails before any Spark job."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from dlpipe.errors import InputNotReady
    from operators import SparkFeatureOperator

    ti = SimpleNamespace(dag_id="eta_training", run_id="scheduled__x", task_id="t", try_number=1)
    day = datetime(2030, 1, 1, tzinfo=timezone.utc)
    context = {"ti": ti, "dag_run": SimpleNamespace(run_type="scheduled"), "params": {},
               "data_interval_start": day, "data_interval_end": day.replace(day=2)}
    op = SparkFeatureOperator(task_id="t", pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
    with pytest.raises(InputNotReady, match=r"no committed raw partition trips/dt=2030-01-01 yet.*retries") as err:
        op.execute(context)
    assert not isinstance(err.value, AirflowFailException)


def test_run_context_records_the_run_type_by_its_value():
    """Audit events of scheduled runs say 'scheduled', not the Task SDK enum's repr."""
    from types import SimpleNamespace

    from airflow.sdk.api.datamodels._generated import DagRunType

    from operators.base import run_context

    ti = SimpleNamespace(dag_id="d", run_id="scheduled__x", task_id="t", try_number=1)
    for dag_run, who in ((SimpleNamespace(run_type=DagRunType.SCHEDULED), "scheduled"),
                         (SimpleNamespace(run_type="manual"), "manual"),
                         (SimpleNamespace(run_type=DagRunType.MANUAL, triggering_user_name="ana"), "ana")):
        assert run_context({"ti": ti, "dag_run": dag_run, "params": {}}).triggered_by == who
    # `airflow backfill create` names its user as the trigger: how the run started is kept apart
    backfill = run_context({"ti": ti, "dag_run": SimpleNamespace(run_type=DagRunType.BACKFILL,
                                                                 triggering_user_name="ana"), "params": {}})
    assert (backfill.triggered_by, backfill.run_type) == ("ana", "backfill")


def test_a_conf_key_the_dag_does_not_declare_is_named_and_the_reason_read_from_conf_too(caplog):
    """`-c '{"reasn": "..."}'` was accepted and the reason silently lost; with [core]
    dag_run_conf_overrides_params off, params never carry the conf's reason."""
    import runpy
    from types import SimpleNamespace

    from operators.base import run_context

    dag = runpy.run_path(str(ROOT / "dags" / "eta_training.py"))["dag"]
    ti = SimpleNamespace(dag_id="eta_training", run_id="manual__x", task_id="t", try_number=1)
    typo = run_context({"ti": ti, "dag": dag, "params": {"reason": "", "reasn": "label fix"},
                        "dag_run": SimpleNamespace(run_type="manual", conf={"reasn": "label fix"})})
    assert typo.reason == "" and "conf has keys ['reasn'] that are not params of the DAG (its params: ['reason'])" \
        in caplog.text
    caplog.clear()
    from_conf = run_context({"ti": ti, "dag": dag, "params": {"reason": ""},
                             "dag_run": SimpleNamespace(run_type="manual", conf={"reason": "label fix"})})
    assert from_conf.reason == "label fix" and "not params" not in caplog.text
    # read past the params, the conf's reason skipped their schema (a string of at most 500)
    for hostile, kept in (("x" * 10_000, "x" * 500), ({"nested": ["a"]}, '{"nested": ["a"]}')):
        run = run_context({"ti": ti, "dag": dag, "params": {"reason": ""},
                           "dag_run": SimpleNamespace(run_type="manual", conf={"reason": hostile})})
        assert run.reason == kept and "kept as its first 500 characters" in caplog.text


def test_a_killed_task_leaves_a_failed_event_even_with_the_log_locked(dlpipe_home):
    """Airflow's SIGTERM handler calls on_kill and SIGKILL follows: a gate or an upload, which
    has no tool to stop, would otherwise leave only its 'started' event."""
    import fcntl
    import os

    from dlpipe import audit, settings
    from dlpipe.runctx import RunContext
    from operators import DataGateOperator

    op = DataGateOperator(task_id="data_gate", dataset_id="x", pipeline_config="p.yaml")
    op.on_kill()  # before execute: nothing to audit yet, and no error
    op._run = RunContext(dag_id="eta_training", run_id="r", task_id="data_gate", try_number=1)
    op.on_kill()
    op.on_kill()  # Airflow may signal twice: one event
    events = [e for e in audit.read() if e["event"] == "failed"]
    assert len(events) == 1 and events[0]["error"].startswith("killed: Airflow stopped the task")
    assert events[0]["stage"] == "DataGateOperator" and events[0]["run"]["task_id"] == "data_gate"

    import time

    op2 = DataGateOperator(task_id="data_gate2", dataset_id="x", pipeline_config="p.yaml")
    op2._run = RunContext(task_id="data_gate2")
    fd = os.open(settings.audit_log_path(), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the interrupted code was writing an event
        began = time.monotonic()
        op2.on_kill()  # returns after its short wait instead of hanging
        assert time.monotonic() - began < 5
    finally:
        os.close(fd)
    assert op2._killed and not [e for e in audit.read() if e["run"]["task_id"] == "data_gate2"]


def _gate_task_whose_stage(monkeypatch, stage):
    """A data gate task whose stage is ``stage(op)`` (called in place of its run_stage), on a
    spec it does not read: (operator, Airflow context)."""
    from types import SimpleNamespace

    import operators.base as base
    from operators import DataGateOperator

    op = DataGateOperator(task_id="data_gate", dataset_id="x", pipeline_config="p.yaml")
    monkeypatch.setattr(op, "run_stage", lambda context, pipeline, run: stage(op))
    monkeypatch.setattr(base, "load_pipeline", lambda path: {"kind": "eta_regression", "_source": path})
    monkeypatch.setattr("operators.factory.check_pipeline", lambda pipeline, **_: None)
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="data_gate", try_number=1)
    return op, {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}}


def test_a_kill_is_audited_once_and_only_while_the_task_runs(dlpipe_home, monkeypatch):
    """Airflow calls on_kill again after a timeout that execute already audited, and a late
    SIGTERM can come after the task's output was committed: neither adds a 'failed' event. A
    kill that makes the stage fail is one event, not two."""
    from dlpipe import audit

    def killed_mid_stage(op):
        op.on_kill()  # SIGTERM arrives while the stage runs; the stage then fails because of it
        raise RuntimeError("the gate was interrupted")

    op, context = _gate_task_whose_stage(monkeypatch, killed_mid_stage)
    with pytest.raises(RuntimeError):
        op.execute(context)
    op.on_kill()  # Airflow's call after the failure: nothing more
    failed = [e for e in audit.read() if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("killed:")


def test_a_timeout_audited_by_execute_is_not_audited_again_by_the_kill_after_it(dlpipe_home, monkeypatch):
    """Airflow's task runner calls on_kill after execute raised its timeout: one event."""
    from dlpipe import audit

    def times_out(op):
        raise TimeoutError("Timeout, PID: 1")  # as AirflowTaskTimeout would, from execute

    op, context = _gate_task_whose_stage(monkeypatch, times_out)
    with pytest.raises(TimeoutError):
        op.execute(context)
    op.on_kill()
    failed = [e for e in audit.read() if e["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("TimeoutError")


def test_a_kill_is_audited_even_when_stopping_the_tool_fails(dlpipe_home):
    from dlpipe import audit
    from dlpipe.runctx import RunContext
    from operators import SparkFeatureOperator

    op = SparkFeatureOperator(task_id="extract_features", pipeline_config="p.yaml")
    op._run = RunContext(task_id="extract_features")

    def broken_stop():
        raise FileNotFoundError("yarn")  # the provider's kill of a YARN application without `yarn`

    op.stop_tools = broken_stop
    with pytest.raises(FileNotFoundError):
        op.on_kill()
    assert [e["error"][:7] for e in audit.read() if e["event"] == "failed"] == ["killed:"]


def test_run_timeout_must_be_shorter_than_the_tasks_execution_timeout(tmp_path):
    """A hand-written DAG has no spec-level check: Airflow's kill at execution_timeout came
    first and was retried. Refused when parsed (both given) or when run (from the YAML)."""
    from datetime import timedelta

    from operators import HorovodTrainOperator

    with pytest.raises(ConfigError) as refused:
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", run_timeout_s=7200,
                             execution_timeout=timedelta(hours=2))
    assert refused.value.field == "HorovodTrainOperator(task_id='train') argument run_timeout_s"
    assert "at least 60 s shorter than execution_timeout (2:00:00)" in refused.value.fix
    with pytest.raises(ConfigError):  # no time left to end the job
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", run_timeout_s=7141,
                             execution_timeout=timedelta(hours=2))
    HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", run_timeout_s=7140,
                         execution_timeout=timedelta(hours=2))
    op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml",
                              execution_timeout=timedelta(hours=2))
    pipeline = yaml.safe_load(SPEC.read_text()) | {"_source": "p.yaml"}
    pipeline["scale"] = {**pipeline["scale"], "run_timeout_s": 14400}
    with pytest.raises(ConfigError) as refused:
        op._scale(pipeline)
    assert (refused.value.field, refused.value.value) == ("p.yaml: scale.run_timeout_s", 14400)
    pipeline["scale"]["run_timeout_s"] = 3600
    assert op._scale(pipeline).run_timeout_s == 3600


def test_a_rule_between_fields_broken_by_the_operators_arguments_is_blamed_on_them():
    """hosts='localhost:1' from the operator against the YAML's num_proc=2: the YAML alone is
    valid, so the message names the operator's arguments, not only the YAML's field."""
    from operators import HorovodTrainOperator

    pipeline = yaml.safe_load(SPEC.read_text()) | {"_source": "p.yaml"}
    pipeline["scale"] = {**pipeline["scale"], "num_proc": 2, "hosts": "localhost:2"}
    op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", hosts="localhost:1")
    with pytest.raises(ConfigError) as refused:
        op._scale(pipeline)
    assert refused.value.field.startswith("HorovodTrainOperator(task_id='train') arguments hosts='localhost:1' "
                                          "over p.yaml's scale section: scale.num_proc"), refused.value.field
    pipeline["scale"]["hosts"] = "localhost:x"  # wrong in the YAML itself: the YAML is named
    with pytest.raises(ConfigError) as refused:
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", num_proc=1)._scale(pipeline)
    assert refused.value.field == "p.yaml: scale.hosts"


@pytest.mark.parametrize("dag_file", ["spec", "dags/eta_training.py"])
def test_start_and_end_dates_are_utc_days_whatever_airflows_default_timezone(tmp_path, dag_file):
    """A naive start_date is read in [core] default_timezone: west of UTC the first interval
    began a day late (2026-01-01 05:00 UTC in New York), so the spec's first day never ran."""
    import os
    import subprocess
    import sys

    if dag_file == "spec":
        spec = _spec(tmp_path, "team", dag__end_date="2026-03-01")
        build = f"from operators.factory import pipeline_dag; dag = pipeline_dag({str(spec)!r})"
    else:
        build = "import runpy; dag = runpy.run_path('dags/eta_training.py')['dag']"
    code = f"{build}; print(dag.start_date.isoformat(), dag.end_date and dag.end_date.isoformat())"
    env = {**os.environ, "AIRFLOW__CORE__DEFAULT_TIMEZONE": "America/New_York", "DLPIPE_ETA_END_DATE": "2026-03-01"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["2026-01-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"], out.stdout


def test_spark_conf_may_not_set_what_the_applications_fix_themselves():
    """A spark_conf time zone or shuffle width was ignored without a word (the applications set
    both in their session, and the fingerprints hash the applications' values)."""
    from operators import PetastormDatasetOperator, SparkFeatureOperator

    for operator in (SparkFeatureOperator, PetastormDatasetOperator):
        with pytest.raises(ConfigError) as refused:
            operator(task_id="f", pipeline_config="p.yaml",
                     spark_conf={"spark.sql.session.timeZone": "Europe/Paris", "spark.executor.memory": "8g"})
        assert refused.value.field == f"{operator.__name__}(task_id='f') argument spark_conf"
        assert refused.value.value == ["spark.sql.session.timeZone"] and "would be ignored" in refused.value.fix
    assert SparkFeatureOperator(task_id="f", pipeline_config="p.yaml",
                                spark_conf={"spark.executor.memory": "8g"}).spark_conf == {"spark.executor.memory": "8g"}
    SparkFeatureOperator(task_id="f", pipeline_config="p.yaml", spark_conf={"spark.sql.session.timeZone": "UTC"})


def test_an_operators_relative_pipeline_config_is_found_beside_its_dag_file(tmp_path, monkeypatch):
    """A hand-written DAG's relative pipeline_config was opened from the worker's working
    directory; it is looked up as a spec DAG's is, and a miss names the places looked in."""
    from airflow.sdk import DAG

    from operators import DataGateOperator

    app = tmp_path / "app"
    (app / "dags").mkdir(parents=True)
    (app / "pipelines").mkdir()
    spec = _spec(app / "pipelines", "fraud")
    monkeypatch.chdir(tmp_path)  # the worker's working directory is elsewhere
    with DAG("fraud", schedule=None) as dag:
        op = DataGateOperator(task_id="g", dataset_id="x", pipeline_config="pipelines/fraud.yaml")
    dag.fileloc = str(app / "dags" / "fraud.py")
    assert op.pipeline_path() == str(spec)
    op.pipeline_config = "pipelines/other.yaml"
    with pytest.raises(ConfigError) as missing:
        op.pipeline_path()
    assert str(app / "dags" / "pipelines" / "other.yaml") in missing.value.fix
    assert str(app / "pipelines" / "other.yaml") in missing.value.fix
    (tmp_path / "pipelines").mkdir()  # found from the working directory only: used, with a warning
    (tmp_path / "pipelines" / "other.yaml").write_text(spec.read_text())
    assert op.pipeline_path() == "pipelines/other.yaml"


def test_a_spec_is_not_taken_from_dlpipes_own_tree(tmp_path):
    """A team DAG elsewhere naming 'pipelines/marketplace_eta.yaml' loaded dlpipe's example spec
    (a second DAG with the example's id) instead of failing."""
    from operators.factory import spec_path

    with pytest.raises(ConfigError, match="no such spec file"):
        spec_path("pipelines/marketplace_eta.yaml", tmp_path / "dags" / "team.py")


def test_a_world_the_dataset_cannot_feed_is_blamed_where_num_proc_was_set(monkeypatch):
    """The row-group check runs inside train_model, which knows only 'scale.num_proc': the
    operator names its own argument when it set the value, else the YAML file."""
    from dlpipe import commit
    from operators import HorovodTrainOperator
    from training import stages

    def refuse(*args, **kwargs):
        exc = ConfigError("scale.num_proc", 16, "ranks [1] would get no training rows")
        exc._dlpipe_audited = True  # as commit.run_stage marks what it audited
        raise exc

    monkeypatch.setattr(stages, "train_model", refuse)
    monkeypatch.setattr(commit, "load_manifest", lambda *a, **k: {})
    pipeline = yaml.safe_load(SPEC.read_text()) | {"_source": "p.yaml"}
    pipeline["scale"] = {**pipeline["scale"], "num_proc": 2, "hosts": "localhost:16"}
    for kwargs, field in (({"num_proc": 16}, "HorovodTrainOperator(task_id='train') argument num_proc"),
                          ({}, "p.yaml: scale.num_proc")):
        op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", **kwargs)
        with pytest.raises(ConfigError) as refused:
            op.run_stage({}, pipeline, None)
        assert refused.value.field == field and "no training rows" in refused.value.fix
        assert refused.value._dlpipe_audited  # else execute audits the failure a second time


def test_spark_resources_values_are_checked_when_the_dag_is_parsed():
    """spark-submit refuses executor_memory='8 GB' or executor_cores='four' only when the task
    runs, as a failure Airflow retries."""
    from operators import SparkFeatureOperator

    for resources, fix in (({"executor_memory": "8 G B"}, "such as '8g'"),
                           ({"executor_memory": "0g"}, "such as '8g'"),
                           ({"executor_memory": "8gib"}, "as Spark reads one"),  # byteStringAs has no 'gib'
                           ({"executor_memory": "8 g"}, "no space"),
                           # client mode gives the driver's JVM -Xmx<value>: '-Xmx1gb', '-Xmx1 GB' fail there
                           ({"driver_memory": "1 GB"}, "-Xmx"),
                           ({"driver_memory": "1gb"}, "'8gb'"),
                           ({"driver_memory": "1gib"}, "-Xmx"),
                           ({"driver_memory": "1024"}, "not '1024'"),  # -Xmx1024: 1024 bytes
                           ({"executor_cores": "four"}, "a whole number"),
                           ({"num_executors": -1}, "a whole number")):
        with pytest.raises(ConfigError) as refused:
            SparkFeatureOperator(task_id="f", pipeline_config="p.yaml", spark_resources=resources)
        assert refused.value.field.endswith(f"spark_resources.{next(iter(resources))}") and fix in refused.value.fix
    SparkFeatureOperator(task_id="f", pipeline_config="p.yaml",
                         spark_resources={"executor_memory": "8gb", "driver_memory": "512M", "executor_cores": "4",
                                          "num_executors": None, "total_executor_cores": 64})


def test_a_data_gate_column_the_dataset_lacks_is_refused_when_the_spec_is_parsed(tmp_path):
    """A misspelt column in a rule, an expectation or the drift list failed only the gate, after
    the Spark stages had run, among a dozen lines of failed checks on a missing column."""
    gate = yaml.safe_load(SPEC.read_text())["data_gate"]
    for name, changes, field, value, hint in (
            ("rule", {"data_gate__columns": {**gate["columns"], "distnace_km": {"min": 0}}},
             "data_gate.columns.distnace_km", "distnace_km", "did you mean distance_km?"),
            ("expectation", {"data_gate__expectations": [{"type": "expect_column_values_to_be_unique",
                                                         "kwargs": {"column": "trip_idd"}}]},
             "data_gate.expectations[0].kwargs.column", "trip_idd", "did you mean trip_id?"),
            ("pair", {"data_gate__expectations": [{"type": "expect_column_pair_values_a_to_be_greater_than_b",
                                                  "kwargs": {"column_A": "distance_km", "column_B": "hour"}}]},
             "data_gate.expectations[0].kwargs.column_B", "hour", "its columns are ['city_code', "),
            ("drift", {"data_gate__drift": {"columns": ["delivery_minute"]}},
             "data_gate.drift.columns", "delivery_minute", "did you mean delivery_minutes?")):
        with pytest.raises(ConfigError) as refused:
            pipeline_dag(_spec(tmp_path, name, **changes))
        assert refused.value.field.endswith(field) and refused.value.value == value, refused.value
        assert "the dataset has no such column" in refused.value.fix and hint in refused.value.fix


def test_two_specs_in_one_folder_with_the_same_dag_id_are_both_refused(tmp_path):
    """Airflow parses each DAG file on its own and never saw the clash: the DAG flipped between
    the two specs, and one run took some tasks from each (another team's training, registered
    under this team's model name)."""
    import yaml

    team = yaml.safe_load(SPEC.read_text())
    (tmp_path / "fraud.yaml").write_text(yaml.safe_dump(team))
    (tmp_path / "maps.yaml").write_text(yaml.safe_dump({**team, "model_name": "maps_eta"}))  # dag_id copied too
    (tmp_path / "broken.yaml").write_text("dag: [")  # another spec's problem: its own DAG reports it
    for mine, theirs in (("fraud", "maps"), ("maps", "fraud")):
        with pytest.raises(ConfigError, match=rf"{mine}.yaml: dag.dag_id.*{theirs}.yaml declares it too"):
            load_spec(tmp_path / f"{mine}.yaml")
    (tmp_path / "maps.yaml").write_text(yaml.safe_dump({**team, "model_name": "maps_eta",
                                                        "dag": {**team["dag"], "dag_id": "maps_eta"}}))
    assert load_spec(tmp_path / "fraud.yaml")[0].dag_id == team["dag"]["dag_id"]
