"""The example pipeline on the production code paths: Airflow on PostgreSQL with the
LocalExecutor (a scheduler, a DAG processor and an API server as separate processes), tasks in
executor workers talking to the execution API, datasets on local disk, and the model registry on
an S3-compatible server process, reached through an Airflow AWS connection."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.airflow_services import airflow_cli, airflow_services, postgres, query, services_env, wait_for
from tests.conftest import ROOT
from tests.dags.test_dags import SECRET, _airflow_env

pytestmark = pytest.mark.integration
TASKS = ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model",
         "promote_staging"]


def _run_state(db: str, run_id: str) -> str | None:
    rows = query(db, "SELECT state FROM dag_run WHERE dag_id = 'eta_training' AND run_id = %s", run_id)
    return rows[0][0] if rows and rows[0][0] in ("success", "failed") else None


def _task_report(db: str, run_id: str, home) -> str:
    states = query(db, "SELECT task_id, state, try_number FROM task_instance WHERE run_id = %s ORDER BY task_id",
                   run_id)
    logs = sorted(home.glob(f"logs/dag_id=eta_training/run_id={run_id}/task_id=*/attempt=*.log"))
    tails = "\n".join(f"--- {p.relative_to(home)}\n{p.read_text()[-2500:]}" for p in logs[-2:])
    return f"task states: {states}\n{tails}"


def test_eta_pipeline_on_postgres_with_the_local_executor_and_an_s3_registry(
        tmp_path, dlpipe_home, small_raw, s3_server, s3_client):
    s3_client.create_bucket(Bucket="ml-models")
    pipeline = yaml.safe_load((ROOT / "pipelines" / "eta_training.yaml").read_text())
    pipeline["registry"] = {"root": "s3://ml-models/registry", "aws_conn_id": "dlpipe_s3", "promote_to": "staging"}
    spec = tmp_path / "eta_s3.yaml"
    spec.write_text(yaml.safe_dump(pipeline))
    base = {k: v for k, v in _airflow_env(tmp_path, dlpipe_home).items() if not k.startswith("AWS_")}
    base.update({
        "DLPIPE_ETA_PIPELINE": str(spec),
        "DLPIPE_ETA_END_DATE": "2026-01-04",  # data exists up to here: no automatic run for "today"
        "AIRFLOW_CONN_DLPIPE_S3": json.dumps({
            "conn_type": "aws", "login": "AKIADLPIPETEST", "password": SECRET,
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}),
    })
    home = tmp_path / "airflow"
    with postgres() as db:
        env = services_env(base, db, home)
        airflow_cli(env, "db", "migrate")
        assert query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1  # migrated on PostgreSQL
        with airflow_services(env, tmp_path / "service-logs") as svc:
            procs, logs = svc["procs"], tmp_path / "service-logs"
            wait_for(lambda: query(db, "SELECT 1 FROM dag WHERE dag_id = 'eta_training'"),
                     "the DAG processor to store eta_training", 180, procs, logs)
            airflow_cli(env, "dags", "unpause", "eta_training")
            # A backfill of one day from the CLI: its run's data interval is [2026-01-03, 2026-01-04),
            # the last day of demo data.
            airflow_cli(env, "backfill", "create", "--dag-id", "eta_training", "--from-date", "2026-01-03",
                        "--to-date", "2026-01-03")
            run_id = wait_for(lambda: query(db, "SELECT run_id FROM dag_run WHERE run_type = 'backfill'"),
                              "the backfill's run", 120, procs, logs)[0][0]
            state = wait_for(lambda: _run_state(db, run_id), f"run {run_id} to finish", 900, procs, logs, every_s=5)
            assert state == "success", _task_report(db, run_id, home)
            tis = query(db, "SELECT task_id, state FROM task_instance WHERE run_id = %s", run_id)
            assert sorted(tis) == sorted((t, "success") for t in TASKS)
            runs = query(db, "SELECT run_id FROM dag_run WHERE dag_id = 'eta_training'")
            assert runs == [(run_id,)]  # the end date kept the scheduler from adding its own run

    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="ml-models")["Contents"]]
    assert "registry/eta/versions/000001.json" in keys and "registry/eta/aliases/staging.json" in keys
    record = json.loads(s3_client.get_object(Bucket="ml-models", Key="registry/eta/versions/000001.json")["Body"].read())
    assert record["registered_by"]["run_id"] == run_id and record["registered_by"]["task_id"] == "register_model"
    events = [json.loads(line) for line in (dlpipe_home / "audit" / "events.jsonl").read_text().splitlines()]
    done = {e["run"]["task_id"]: e["event"] for e in events
            if e["run"].get("run_id") == run_id and e["event"] != "started"}
    assert done == {t: "committed" for t in TASKS}
    for f in list(home.rglob("*")) + list(dlpipe_home.rglob("*")):
        if f.is_file():  # task logs, service logs, manifests, the audit log
            assert SECRET.encode() not in f.read_bytes(), f"secret leaked into {f}"
