"""Every shipped DAG imports cleanly and fast; the ETA DAG runs end to end through Airflow.

The end-to-end tests run ``airflow dags test`` in a subprocess against a fresh SQLite metadata
database, with real Spark, real horovodrun (2 processes) and real Great Expectations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.airflow_services import SECRET, airflow_cli, local_airflow_env
from tests.conftest import ROOT

DAGS = ROOT / "dags"


def test_dagbag_has_no_import_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    dag = bag.dags["eta_training"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model",
        "promote_staging"]
    assert dag.catchup is False and "dlpipe" in dag.tags
    assert {"eta_training", "marketplace_eta", "digits_classifier"} <= set(bag.dags)


def test_every_documented_tasks_clear_names_a_task_the_way_airflow_3_matches_it():
    """Airflow 3's `tasks clear -t` takes the value as a part of the task id (the serialized DAG's
    partial_subset), not a regular expression: the runbook's '^extract_features$' matched no
    task and cleared nothing, with exit 0. Every command the docs and messages give must name
    at least one task of the ETA DAG that way."""
    import re

    from airflow.dag_processing.dagbag import DagBag

    tasks = [t.task_id for t in DagBag(dag_folder=str(DAGS)).dags["eta_training"].tasks]
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/*.py"))]
    found = []
    for path in sources:
        for command in re.findall(r"airflow tasks clear[^`\n]*", path.read_text()):
            for value in re.findall(r"(?:-t|--task-regex)[ =]+'?([^\s']+)", command):
                found.append((path.name, value))
                assert any(value in t for t in tasks), f"{path}: `{command}` names no task: -t {value}"
    assert len(found) >= 3, found


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py")))
def test_dag_file_parses_fast_without_heavy_imports(dag_file):
    code = (
        "import sys, time, runpy\n"
        "import airflow.sdk\n"  # Airflow itself is loaded by the DAG processor already
        "t = time.perf_counter()\n"
        f"runpy.run_path({str(DAGS / dag_file)!r})\n"
        "dt = time.perf_counter() - t\n"
        "heavy = [m for m in ('pyspark', 'torch', 'great_expectations', 'horovod', 'petastorm') if m in sys.modules]\n"
        "print(dt, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split("\n")[-2]
    seconds, heavy = out.split(" ", 1)
    assert heavy == "[]", f"{dag_file} imports {heavy} at parse time"
    assert float(seconds) < 2.0, f"{dag_file} took {seconds}s to parse"


def _dlpipe(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dlpipe.cli", *args], env=env, capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture
def airflow_env(tmp_path, dlpipe_home, small_raw):
    env = local_airflow_env(tmp_path, dlpipe_home)
    airflow_cli(env, "db", "migrate")
    return env


def _events(dlpipe_home: Path) -> list[dict]:
    path = dlpipe_home / "audit" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_eta_dag_end_to_end_then_rerun_skips(tmp_path, airflow_env, dlpipe_home, s3_server, s3_client):
    # The registry lives on a real S3-compatible server process; the task gets its client from
    # an Airflow AWS connection (Amazon provider S3Hook) whose secret key must stay secret.
    s3_client.create_bucket(Bucket="ml-models")
    pipeline = yaml.safe_load((ROOT / "pipelines" / "eta_training.yaml").read_text())
    pipeline["registry"] = {"root": "s3://ml-models/registry", "aws_conn_id": "dlpipe_s3",
                            "promote_to": "staging"}
    spec = tmp_path / "eta_s3.yaml"
    spec.write_text(yaml.safe_dump(pipeline))
    task_env = {k: v for k, v in airflow_env.items() if not k.startswith("AWS_")}
    lineage_log = tmp_path / "openlineage.jsonl"  # the OpenLineage provider's file transport
    task_env.update({
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(lineage_log),
                                                       "append": True}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "dlpipe-test",
        "DLPIPE_ETA_PIPELINE": str(spec),
        "AIRFLOW_CONN_DLPIPE_S3": json.dumps({
            "conn_type": "aws", "login": "AKIADLPIPETEST", "password": SECRET,
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}),
    })
    cli_env = {**airflow_env, "DLPIPE_REGISTRY_ROOT": "s3://ml-models/registry", "AWS_ENDPOINT_URL": s3_server}
    # the run dated 2026-01-04 processes the interval [2026-01-03, 2026-01-04)
    first = airflow_cli(task_env, "dags", "test", "eta_training", "2026-01-04T06:00:00+00:00", "--conf",
                     json.dumps({"reason": "end-to-end test"}))
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="ml-models")["Contents"]]
    assert "registry/eta/versions/000001.json" in keys and "registry/eta/aliases/staging.json" in keys
    assert sum(k.startswith("registry/eta/blobs/") for k in keys) == 3
    assert not (dlpipe_home / "registry").exists()
    # the registered model downloads with verified hashes and predicts
    from dlpipe import registry
    from dlpipe.storage import S3Store
    from training.model import EtaModel

    store = S3Store("s3://ml-models/registry", s3_client)
    registry.download(store, "eta", 1, dlpipe_home / "dl")
    model = EtaModel.load(dlpipe_home / "dl")
    import torch

    assert torch.isfinite(model.predict(torch.zeros(2, len(model.features)))).all()
    assert registry.get_alias(store, "eta", "staging")["version"] == 1

    versions = json.loads(_dlpipe(cli_env, "registry", "list", "--json"))
    assert [(v["name"], v["version"]) for v in versions] == [("eta", 1)]
    v = versions[0]
    assert v["metrics"]["val_mae"] < v["metrics"]["baseline_mae"]
    lin = v["lineage"]
    assert lin["feature_partitions"] == [p for p in lin["feature_partitions"] if "dt=2026-01-03" in p]
    assert lin["dataset"].startswith("datasets/eta/window_end=2026-01-03@")
    assert len(lin["raw_partitions"]) == 3 and len(lin["gates"]) == 2
    assert v["registered_by"]["dag_id"] == "eta_training" and v["registered_by"]["task_id"] == "register_model"
    assert v["registered_by"]["try_number"] == 1
    assert lin["code"]["sources_hash"] and lin["config"]["train"]["num_proc"] == 2

    tree = json.loads(_dlpipe(cli_env, "lineage", "eta@1", "--json", "--verify"))  # exit 0: every link holds
    assert tree["problems"] == [] and tree["files_verified"]
    chain = tree["chain"]
    assert chain["stage"] == "training"
    assert chain["inputs"][0]["stage"] == "datasets"
    assert chain["inputs"][0]["inputs"][0]["stage"] == "features"
    assert {n["stage"] for n in chain["inputs"][0]["inputs"][0]["inputs"]} == {"raw"}

    # OpenLineage events from our operators' facets: each stage's committed inputs and output
    complete = {e["job"]["name"]: e for e in map(json.loads, lineage_log.read_text().splitlines())
                if e.get("eventType") == "COMPLETE"}
    ds = complete["eta_training.materialize_dataset"]
    named = lambda d: (d["namespace"], d["name"])  # noqa: E731  (where the data lives, as OpenLineage names it)
    dlpipe_home = dlpipe_home.resolve()
    assert [named(d) for d in ds["outputs"]] == [("file", f"{dlpipe_home}/datasets/eta/window_end=2026-01-03")]
    assert [named(d) for d in ds["inputs"]] == [("file", f"{dlpipe_home}/features/eta/dt=2026-01-03")]
    assert ds["outputs"][0]["facets"]["version"]["datasetVersion"] == lin["dataset"].split("@")[1]
    assert [named(d) for d in complete["eta_training.train"]["inputs"]] == [
        ("file", f"{dlpipe_home}/datasets/eta/window_end=2026-01-03")]
    assert [named(d) for d in complete["eta_training.register_model"]["outputs"]] == [("s3://ml-models", "registry/eta")]
    assert [named(d) for d in complete["eta_training.promote_staging"]["outputs"]] == [
        ("s3://ml-models", "registry/eta:staging")]

    first_run = {e["run"]["task_id"]: e["event"] for e in _events(dlpipe_home)
                 if e["run"]["dag_id"] == "eta_training" and e["event"] != "started"}
    assert set(first_run.values()) == {"committed"} and len(first_run) == 7
    assert {e["run"]["reason"] for e in _events(dlpipe_home) if e["run"]["dag_id"] == "eta_training"} == {
        "end-to-end test"}  # the run's reason param reaches every audit event
    run_id = next(e["run"]["run_id"] for e in _events(dlpipe_home) if e["run"]["dag_id"] == "eta_training")
    assert f"run {run_id}: end-to-end test" in _dlpipe(cli_env, "audit", "--run-id", run_id)

    # Second run of the same date: every stage skips, no second model version.
    second_run = airflow_cli(task_env, "dags", "test", "eta_training", "2026-01-04T06:00:00+00:00")
    assert len(json.loads(_dlpipe(cli_env, "registry", "list", "--json"))) == 1
    run_ids = [e["run"]["run_id"] for e in _events(dlpipe_home) if e["run"]["dag_id"] == "eta_training"]
    second = [e for e in _events(dlpipe_home) if e["run"]["run_id"] == run_ids[-1] and e["event"] != "started"]
    assert len({e["run"]["run_id"] for e in _events(dlpipe_home) if e["run"]["dag_id"] == "eta_training"}) == 2
    assert sorted(e["run"]["task_id"] for e in second) == sorted(
        ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model",
         "promote_staging"])
    assert {e["event"] for e in second} == {"skipped"}
    summary = _dlpipe(cli_env, "summary")
    assert "register_model       skipped  eta@1" in summary
    # every event of both runs (written by several task processes) links to the one before it
    assert "no break in the chain" in _dlpipe(cli_env, "audit", "--verify")

    # The secret key reached S3 (the registry works) but no output anywhere holds it.
    outputs = first.stdout + first.stderr + second_run.stdout + second_run.stderr
    assert SECRET not in outputs
    for root in (dlpipe_home, Path(airflow_env["AIRFLOW_HOME"])):
        for f in root.rglob("*"):
            if f.is_file():  # manifests, audit log, task logs, the Airflow metadata database...
                assert SECRET.encode() not in f.read_bytes(), f"secret leaked into {f}"
    for key in keys:
        body = s3_client.get_object(Bucket="ml-models", Key=key)["Body"].read()
        assert SECRET.encode() not in body, f"secret leaked into s3://ml-models/{key}"


@pytest.mark.integration
def test_digits_dag_end_to_end_then_next_week_skips(airflow_env, dlpipe_home):
    """The second shipped pipeline through Airflow: an image dataset, GX, a Horovod CNN, the
    registry. Its corpus is fixed, so the next week's run finds every stage committed."""
    first = airflow_cli(airflow_env, "dags", "test", "digits_classifier", "2026-01-12T06:00:00+00:00")
    versions = json.loads(_dlpipe(airflow_env, "registry", "list", "--json"))
    assert [(v["name"], v["version"]) for v in versions] == [("digits", 1)]
    m = versions[0]["metrics"]
    assert m["val_error"] < 0.08 < m["baseline_error"] and m["world_size"] == 2
    assert versions[0]["lineage"]["dataset"].startswith("datasets/digits/all@")
    assert len(versions[0]["lineage"]["gates"]) == 2

    from sklearn.datasets import load_digits

    from dlpipe import registry
    from dlpipe.storage import LocalStore
    from training.digits_model import DigitsModel

    store = LocalStore(dlpipe_home / "registry")
    assert registry.get_alias(store, "digits", "staging")["version"] == 1
    registry.download(store, "digits", 1, dlpipe_home / "dl")
    digits = load_digits()
    assert (DigitsModel.load(dlpipe_home / "dl").predict(digits.images).numpy() == digits.target).mean() > 0.95

    events = [e for e in _events(dlpipe_home) if e["run"]["dag_id"] == "digits_classifier"]
    first_run = {e["run"]["task_id"]: e["event"] for e in events if e["event"] != "started"}
    assert first_run == {t: "committed" for t in ("materialize_dataset", "data_gate", "train", "model_gate",
                                                  "register_model", "promote_staging")}
    summary = _dlpipe(airflow_env, "summary", "--dag-id", "digits_classifier")
    assert "validation error" in summary and "register_model       committed  digits@1" in summary
    second = airflow_cli(airflow_env, "dags", "test", "digits_classifier", "2026-01-19T06:00:00+00:00")
    run_ids = [e["run"]["run_id"] for e in _events(dlpipe_home) if e["run"]["dag_id"] == "digits_classifier"]
    later = [e for e in _events(dlpipe_home) if e["run"]["run_id"] == run_ids[-1] and e["event"] != "started"]
    assert len(later) == 6 and {e["event"] for e in later} == {"skipped"}
    assert len(json.loads(_dlpipe(airflow_env, "registry", "list", "--json"))) == 1
    assert "Traceback" not in first.stdout + second.stdout


@pytest.mark.integration
def test_a_manual_run_for_the_end_day_gets_its_tasks(tmp_path, dlpipe_home):
    """With end_date E the scheduler stops after E, but Airflow copies a DAG's end_date to every
    task and creates no instance of a task for a run dated after it: a manual run processing day
    E-1 (dated E 06:00) succeeded at once with no task run. Real Airflow, every task marked done."""
    env = local_airflow_env(tmp_path, dlpipe_home, DLPIPE_ETA_END_DATE="2026-01-04")
    airflow_cli(env, "db", "migrate")
    proc = airflow_cli(env, "dags", "test", "eta_training", "2026-01-05T06:00:00+00:00",
                       "--mark-success-pattern", ".*")
    out = proc.stdout + proc.stderr
    marked = {line.split("): ", 1)[1].split(">", 1)[0] for line in out.splitlines() if "Marking success for <Task(" in line}
    assert marked == {"extract_features", "materialize_dataset", "data_gate", "train", "model_gate",
                      "register_model", "promote_staging"}, out[-3000:]
    assert "data_interval_start=2026-01-04" in out


def test_make_demo_refuses_to_wait_forever_on_an_earlier_run_that_holds_it(tmp_path, dlpipe_home):
    """A refused midnight run (the usual `airflow dags test DAG DAY` form) left its dataset task
    upstream_failed; `make demo`'s `dags test` of the next day then waited on it (depends_on_past)
    forever, printing "No tasks to run". The pre-flight check says so and gives the way out."""
    env = local_airflow_env(tmp_path, dlpipe_home)
    airflow_cli(env, "db", "migrate")
    refused = airflow_cli(env, "dags", "test", "eta_training", "2026-01-05", check=False)
    assert "first instant of the next day" in refused.stdout + refused.stderr
    check = [sys.executable, "-m", "operators.preflight", "eta_training"]  # what make demo runs first
    held = subprocess.run([*check, "2026-01-05T06:00:00+00:00"], env=env, capture_output=True, text=True)
    assert held.returncode == 1, held
    assert "(logical date 2026-01-05T00:00+0000) holds this one: its materialize_dataset is upstream_failed" \
        in held.stderr and "airflow dags delete eta_training --yes" in held.stderr
    assert "mark its materialize_dataset skipped" in held.stderr and "On a scratch database only" in held.stderr
    bad = subprocess.run([*check, "2026-01-05"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a logical date with its zone" in bad.stderr
    assert subprocess.run([*check, "2026-01-05T00:00:00+00:00"], env=env).returncode == 0  # nothing before it
    airflow_cli(env, "dags", "delete", "eta_training", "--yes")  # the advice works
    assert subprocess.run([*check, "2026-01-05T06:00:00+00:00"], env=env).returncode == 0
    # a run left unfinished (a trigger with no scheduler, a `dags test` stopped with Ctrl-C) holds it too
    airflow_cli(env, "dags", "reserialize")  # deleted above: a trigger needs it in the database
    airflow_cli(env, "dags", "trigger", "eta_training", "--logical-date", "2026-01-05T03:00:00+00:00")
    held = subprocess.run([*check, "2026-01-05T06:00:00+00:00"], env=env, capture_output=True, text=True)
    assert held.returncode == 1 and "(logical date 2026-01-05T03:00+0000) holds this one" in held.stderr, held


def test_preflight_refuses_a_logical_date_past_the_dags_end_date(tmp_path, dlpipe_home):
    """`dags test` past the end date ran no task, said the run succeeded, and that run then held
    every later one; the pre-flight check had said nothing held it."""
    env = {**local_airflow_env(tmp_path, dlpipe_home), "DLPIPE_ETA_END_DATE": "2026-01-03"}
    airflow_cli(env, "db", "migrate")
    airflow_cli(env, "dags", "reserialize")
    check = [sys.executable, "-m", "operators.preflight", "eta_training"]
    past = subprocess.run([*check, "2026-01-06T06:00:00+00:00"], env=env, capture_output=True, text=True)
    assert past.returncode == 1, past
    assert ("the logical date 2026-01-06T06:00:00+00:00 is after 2026-01-05T00:00:00+00:00, the last one "
            "eta_training's materialize_dataset runs at (from the DAG's end date 2026-01-03T00:00:00+00:00)"
            in past.stderr and "DLPIPE_ETA_END_DATE" in past.stderr)
    # the tasks end two days after the DAG (operators/factory.py): a run processing the end day still works
    assert subprocess.run([*check, "2026-01-04T06:00:00+00:00"], env=env).returncode == 0


def test_failed_data_gate_stops_the_pipeline_without_retry(tmp_path, airflow_env, dlpipe_home):
    pipeline = yaml.safe_load((ROOT / "pipelines" / "eta_training.yaml").read_text())
    pipeline["data_gate"]["min_rows"]["train"] = 10**9
    pipeline["data_gate"]["columns"]["distance_km"]["max"] = 0.5
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(pipeline))
    env = {**airflow_env, "DLPIPE_ETA_PIPELINE": str(strict)}
    proc = airflow_cli(env, "dags", "test", "eta_training", "2026-01-04T06:00:00+00:00", check=False)
    out = proc.stdout + proc.stderr
    assert "row count" in out and "below the minimum 1000000000" in out
    assert "train.distance_km: expect_column_max_to_be_between {'max_value': 0.5} -> observed" in out

    gate_events = [e for e in _events(dlpipe_home) if e["run"]["task_id"] == "data_gate"]
    assert [e["event"] for e in gate_events] == ["started", "failed"]  # AirflowFailException: no retry
    tasks_that_ran = {e["run"]["task_id"] for e in _events(dlpipe_home)}
    assert not tasks_that_ran & {"train", "model_gate", "register_model", "promote_staging"}
    assert not (dlpipe_home / "registry").exists()
    summary = subprocess.run([sys.executable, "-m", "dlpipe.cli", "summary"], env=env,
                             capture_output=True, text=True)
    assert summary.returncode == 1 and "data_gate            failed" in summary.stdout


def test_spark_operators_take_resources_and_refuse_unknown_ones():
    from datetime import datetime

    from airflow.sdk import DAG

    from dlpipe.errors import ConfigError
    from dlpipe.runctx import RunContext
    from operators import PetastormDatasetOperator, SparkFeatureOperator

    with DAG("resources_check", schedule=None, start_date=datetime(2026, 1, 1)):
        op = SparkFeatureOperator(task_id="f", pipeline_config="x.yaml",
                                  spark_resources={"executor_memory": "8g", "total_executor_cores": 64})
        # refused when the DAG file is parsed, naming the task, not when the task runs
        with pytest.raises(ConfigError, match=r"invalid PetastormDatasetOperator\(task_id='d'\) argument "
                                              r"spark_resources=\['gpus'\]: use only driver_memory"):
            PetastormDatasetOperator(task_id="d", pipeline_config="x.yaml", spark_resources={"gpus": 8})
    assert op.spark_resources == {"executor_memory": "8g", "total_executor_cores": 64}
    op._submitter(RunContext())  # accepted: builds the hook-backed submitter


def test_a_timetable_with_empty_intervals_gets_the_fix_not_a_date_comparison():
    """Airflow 3 reads schedule='@daily' as CronTriggerTimetable: its runs' data interval is
    empty, and the feature stage needs a whole day."""
    from datetime import datetime, timezone

    from dlpipe.errors import ConfigError
    from operators import SparkFeatureOperator

    op = SparkFeatureOperator(task_id="f", pipeline_config="x.yaml")
    at = datetime(2026, 1, 5, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match=r"empty interval.*CronDataIntervalTimetable\('@daily'"):
        op.interval({"data_interval_start": at, "data_interval_end": at})
    day = op.interval({"data_interval_start": at.replace(day=4), "data_interval_end": at})
    assert day == (at.replace(day=4), at)


def test_a_logical_date_outside_the_runs_interval_is_refused():
    """`airflow dags trigger --logical-date 2026-01-05` (Airflow 3.3) gives the run the interval
    of the trigger's own time: processing it would put December's data under January 5th's run."""
    from datetime import datetime, timedelta, timezone

    from dlpipe.errors import ConfigError
    from operators import SparkFeatureOperator

    op = SparkFeatureOperator(task_id="f", pipeline_config="x.yaml")
    day = timedelta(days=1)
    jan5, dec6 = datetime(2026, 1, 5, tzinfo=timezone.utc), datetime(2026, 12, 6, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match=r"logical date.*2026-01-05.*2026-12-05.*airflow backfill create"):
        op.interval({"logical_date": jan5, "data_interval_start": dec6 - day, "data_interval_end": dec6})
    # the UI's form with a data interval chosen by hand and the logical date left at "now": the
    # message named only the CLI, and advised the UI the user had used
    with pytest.raises(ConfigError, match=r"trigger form keeps a data interval chosen by hand apart.*logical date "
                                          r"set to the start of the interval you choose"):
        op.interval({"logical_date": dec6, "data_interval_start": jan5 - day, "data_interval_end": jan5})
    # a UI or REST trigger, or `dags test`, at midnight D processes [D-1, D) under the logical
    # date of D's scheduled run, which Airflow then never creates
    class Run:  # the run as the Task SDK's context gives it
        dag_id, run_id = "eta_training", "manual__2026-01-05T00:00:00+00:00"

    with pytest.raises(ConfigError, match=r"logical date.*first instant of the next day.*Delete this run.*"
                                          r"DELETE /api/v2/dags/eta_training/dagRuns/manual__2026-01-05T00:00:00\+00:00.*"
                                          r"--from-date 2026-01-04 --to-date 2026-01-04.*"
                                          r"dags test eta_training 2026-01-05T06:00:00"):
        op.interval({"logical_date": jan5, "data_interval_start": jan5 - day, "data_interval_end": jan5,
                     "dag_run": Run()})
    # scheduled and backfill runs (logical date = interval start), triggers and `dags test`
    # inside the next day, and a CLI trigger at the current time are all accepted
    for logical, start in ((jan5 - day, jan5 - day), (jan5 + timedelta(hours=6), jan5 - day),
                           (dec6 + timedelta(hours=20), dec6 - day)):
        assert op.interval({"logical_date": logical, "data_interval_start": start,
                            "data_interval_end": start + day}) == (start, start + day)
    # explicit interval arguments are the user's choice
    op = SparkFeatureOperator(task_id="f", pipeline_config="x.yaml", data_interval_start="2026-01-04",
                              data_interval_end="2026-01-05")
    assert op.interval({"logical_date": dec6}) == ("2026-01-04", "2026-01-05")
