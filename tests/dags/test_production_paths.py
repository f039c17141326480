"""The example pipeline on the production code paths: Airflow on PostgreSQL with the
LocalExecutor (a scheduler, a DAG processor and an API server as separate processes), tasks in
executor workers talking to the execution API, datasets on local disk, and the model registry on
an S3-compatible server process, reached through an Airflow AWS connection. Runs come from
``airflow backfill create``, two at a time, and the same backfill again changes nothing. A
headless browser then logs in to the Airflow UI and reads a finished run's task states."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.airflow_services import (SECRET, airflow_cli, airflow_services, local_airflow_env, postgres, query,
                                    services_env, wait_for)
from tests.conftest import ROOT, new_bucket

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


def _backfill(env: dict, db: str, procs: dict, logs, home, *extra: str) -> list[str]:
    """``airflow backfill create`` for 2026-01-02..2026-01-03, two runs at a time; waits for
    both runs and returns their run ids (each must succeed)."""
    airflow_cli(env, "backfill", "create", "--dag-id", "eta_training", "--from-date", "2026-01-02",
                "--to-date", "2026-01-03", "--max-active-runs", "2", *extra, timeout=600)
    # a reprocessed date reuses its run (cleared, with a new try), so find runs by backfill
    new = wait_for(lambda: (lambda ids: ids if len(ids) == 2 else None)(sorted(r for (r,) in query(
        db, "SELECT dr.run_id FROM backfill_dag_run b JOIN dag_run dr ON dr.id = b.dag_run_id "
            "WHERE b.backfill_id = (SELECT max(id) FROM backfill)"))),
        "the backfill's two runs", 120, procs, logs)
    for run_id in new:
        state = wait_for(lambda: _run_state(db, run_id), f"run {run_id} to finish", 1200, procs, logs, every_s=5)
        assert state == "success", _task_report(db, run_id, home)
        tis = query(db, "SELECT task_id, state FROM task_instance WHERE run_id = %s", run_id)
        assert sorted(tis) == sorted((t, "success") for t in TASKS)
    # the scheduler closes the backfill after its runs; only then may another one start
    wait_for(lambda: not query(db, "SELECT id FROM backfill WHERE completed_at IS NULL"),
             "the scheduler to complete the backfill", 120, procs, logs)
    return new


def _check_the_ui(env: dict, home, run_id: str, screenshot) -> None:
    """Debian's headless Chromium, driven by Playwright: log in to the Airflow UI, find the
    pipeline in the DAG list, open a finished run and read every task's state off the page."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: scripts/setup.sh installs it (as root)"
    base = env["AIRFLOW__API__BASE_URL"]
    password = json.loads((home / "ui-passwords.json").read_text())["admin"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
            page.goto(f"{base}/dags")
            page.get_by_text("eta_training", exact=True).first.wait_for(timeout=60_000)
            page.goto(f"{base}/dags/eta_training/runs/{run_id}")
            page.get_by_text("promote_staging", exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(screenshot), full_page=True)
            rows = page.locator("table tbody tr").all_inner_texts()
        finally:
            browser.close()
    print(f"[ui] screenshot of run {run_id}: {screenshot}")
    # each row of the task-instance table: task id, then its state
    cells = [[c.strip() for c in re.split(r"[\t\n]", row) if c.strip()] for row in rows]
    states = {c[0]: c[1] for c in cells if len(c) > 1}
    assert states == {t: "Success" for t in TASKS}, f"task states on the run page: {cells}"


def test_backfill_on_postgres_with_the_local_executor_and_an_s3_registry_then_rerun_changes_nothing(
        tmp_path, dlpipe_home, small_raw, s3_server, s3_client):
    bucket = new_bucket(s3_client)  # the S3 server is shared by the whole session
    pipeline = yaml.safe_load((ROOT / "pipelines" / "eta_training.yaml").read_text())
    pipeline["registry"] = {"root": f"s3://{bucket}/registry", "aws_conn_id": "dlpipe_s3", "promote_to": "staging"}
    spec = tmp_path / "eta_s3.yaml"
    spec.write_text(yaml.safe_dump(pipeline))
    base = {k: v for k, v in local_airflow_env(tmp_path, dlpipe_home).items() if not k.startswith("AWS_")}
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
        airflow_cli(env, "db", "migrate", timeout=600)
        assert query(db, "SELECT count(*) FROM alembic_version")[0][0] == 1  # migrated on PostgreSQL
        with airflow_services(env, tmp_path / "service-logs") as svc:
            procs, logs = svc["procs"], tmp_path / "service-logs"
            wait_for(lambda: query(db, "SELECT 1 FROM dag WHERE dag_id = 'eta_training'"),
                     "the DAG processor to store eta_training", 180, procs, logs)
            airflow_cli(env, "dags", "unpause", "eta_training", timeout=600)
            # Each backfilled run's data interval is one day: [2026-01-02, 01-03) and [01-03, 01-04).
            # (the dataset task depends on its past, so Airflow asks for a reprocess behaviour)
            first = _backfill(env, db, procs, logs, home, "--reprocess-behavior", "failed")
            manifests = sorted(p.relative_to(dlpipe_home) for p in dlpipe_home.glob("*/*/*/manifests/*.json"))
            versions = sorted(o["Key"] for o in s3_client.list_objects_v2(
                Bucket=bucket, Prefix="registry/eta/versions/")["Contents"])
            events_before = len((dlpipe_home / "audit" / "events.jsonl").read_text().splitlines())
            # The same backfill again (Airflow clears and reruns the completed dates): nothing changes.
            second = _backfill(env, db, procs, logs, home, "--reprocess-behavior", "completed")
            assert second == first
            runs = {r for (r,) in query(db, "SELECT run_id FROM dag_run WHERE dag_id = 'eta_training'")}
            assert runs == set(first)  # the end date kept the scheduler from adding its own run
            shots = ROOT / ".dlpipe" / "test-artifacts"  # kept after the run (CI can collect it)
            shots.mkdir(parents=True, exist_ok=True)
            _check_the_ui(env, home, first[-1], shots / "ui-backfill-run.png")

    # one feature partition per day, one dataset and one model per run
    features = sorted(str(p) for p in manifests if p.parts[0] == "features")
    assert [p.split("/")[2] for p in features] == ["dt=2026-01-02", "dt=2026-01-03"]
    assert sum(p.parts[0] == "datasets" for p in manifests) == 2
    assert versions == ["registry/eta/versions/000001.json", "registry/eta/versions/000002.json"]
    # the rerun committed nothing new: same manifests, same versions, every stage skipped
    assert sorted(p.relative_to(dlpipe_home) for p in dlpipe_home.glob("*/*/*/manifests/*.json")) == manifests
    assert sorted(o["Key"] for o in s3_client.list_objects_v2(
        Bucket=bucket, Prefix="registry/eta/versions/")["Contents"]) == versions
    events = [json.loads(line) for line in (dlpipe_home / "audit" / "events.jsonl").read_text().splitlines()]
    for verdict, batch in (("committed", events[:events_before]), ("skipped", events[events_before:])):
        for run_id in first:
            done = {e["run"]["task_id"]: e["event"] for e in batch
                    if e["run"].get("run_id") == run_id and e["event"] != "started"}
            # two runs at once: the one with older data may find staging already past it
            promote = done.pop("promote_staging", None)
            assert done == {t: verdict for t in TASKS if t != "promote_staging"}, (run_id, done)
            assert promote in ({"committed", "skipped"} if verdict == "committed" else {"skipped"}), promote
    # staging ends at the model of the newest data whatever order the runs finished in
    staging = json.loads(s3_client.get_object(Bucket=bucket, Key="registry/eta/aliases/staging.json")["Body"].read())
    newest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"registry/eta/versions/{staging['version']:06d}.json")["Body"].read())
    assert newest["lineage"]["dataset"].startswith("datasets/eta/window_end=2026-01-03@")
    assert len(staging["history"]) in (1, 2)  # never moved back by the rerun
    record = json.loads(s3_client.get_object(Bucket=bucket, Key=versions[0])["Body"].read())
    assert record["registered_by"]["run_id"] in first and record["registered_by"]["task_id"] == "register_model"
    for f in list(home.rglob("*")) + list(dlpipe_home.rglob("*")):
        if f.is_file():  # task logs, service logs, manifests, the audit log
            assert SECRET.encode() not in f.read_bytes(), f"secret leaked into {f}"
