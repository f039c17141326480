"""The feature job on a real standalone Spark cluster (master + worker from the pyspark package,
on 127.0.0.1), submitted through SparkSubmitHook with the master taken from an Airflow connection.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlpipe.runctx import RunContext
from dlpipe.spark_submit import spark_env
from feature_jobs.feature_stage import FeatureJobConfig, extract_features

pytestmark = pytest.mark.integration


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"{text!r} never appeared in {path}:\n{path.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def spark_cluster(tmp_path):
    spark_class = str(Path(sys.executable).parent / "spark-class")
    env = {**spark_env(), "SPARK_LOG_DIR": str(tmp_path), "SPARK_WORKER_DIR": str(tmp_path / "work")}
    port = _port()
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(_port())], env=env, stdout=master_log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    worker = None
    try:
        _wait_for(master_log, "I have been elected leader", master)
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
             "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(_port())],
            env=env, stdout=worker_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for(worker_log, "Successfully registered with master", worker)
        yield port, worker_log
    finally:
        for p in (worker, master):
            if p is not None:
                os.killpg(p.pid, 15)
                p.wait(30)


def test_feature_job_runs_on_a_standalone_cluster_through_the_airflow_hook(
        spark_cluster, small_raw, monkeypatch, tmp_path):
    port, worker_log = spark_cluster
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_CLUSTER",
                       f'{{"conn_type": "spark", "host": "spark://127.0.0.1", "port": {port}}}')
    from operators.features import hook_submitter

    hooks: list = []
    submit = hook_submitter("spark_cluster", None, "test-cluster", hooks,
                            {"executor_memory": "1g", "total_executor_cores": 2})
    result = extract_features("2026-01-03", "2026-01-04", config=FeatureJobConfig(lookback_days=2),
                              run=RunContext(), submit=submit)
    assert result.manifest["summary"]["rows"] == 3000
    assert hooks and hooks[0]._connection["master"] == f"spark://127.0.0.1:{port}"
    # the work really ran in an executor launched by the worker, not in a local driver
    assert "Launching executor" in worker_log.read_text() or "Asked to launch executor" in worker_log.read_text()

    # the same interval on local[2] gives the same rows: the cluster changes where, not what
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "local_home"))
    from datetime import date

    from dlpipe.demo_data import DemoDataConfig, write_raw
    from dlpipe.spark_submit import local_spark_submit

    write_raw(DemoDataConfig(start=date(2026, 1, 1), days=3, rows_per_day=3000, restaurants=40), RunContext())
    local = extract_features("2026-01-03", "2026-01-04", config=FeatureJobConfig(lookback_days=2),
                             run=RunContext(), submit=local_spark_submit())
    assert local.manifest["summary"]["content_sha256"] == result.manifest["summary"]["content_sha256"]
