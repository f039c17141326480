"""Shared fixtures: an isolated DLPIPE_HOME per test, small committed demo data, an S3 server."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# In-process Airflow imports (the DagBag test) read AIRFLOW_HOME once: keep them off ~/airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="dlpipe-test-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture(autouse=True)
def dlpipe_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty DLPIPE_HOME (stage outputs, registry, audit log)."""
    home = tmp_path / "dlpipe_home"
    monkeypatch.setenv("DLPIPE_HOME", str(home))
    monkeypatch.delenv("DLPIPE_REGISTRY_ROOT", raising=False)
    # Fake credentials so no test can ever reach a real AWS account.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return home


def write_small_raw():
    """Three committed days of raw demo trips, 3000 rows each, into the current DLPIPE_HOME."""
    from dlpipe.demo_data import DemoDataConfig, write_raw
    from dlpipe.runctx import cli_context

    cfg = DemoDataConfig(start=date(2026, 1, 1), days=3, rows_per_day=3000, restaurants=40)
    return write_raw(cfg, cli_context("test"))


@pytest.fixture
def small_raw(dlpipe_home):
    """Three committed days of raw demo trips, 3000 rows each."""
    return write_small_raw()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server *process* (moto in server mode) on loopback."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start on 127.0.0.1")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_client(s3_server):
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing-secret")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def new_bucket(client) -> str:
    import uuid

    name = f"reg-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A registry store: a local directory, then a bucket on the S3 server process."""
    from dlpipe.storage import LocalStore, S3Store

    if request.param == "local":
        return LocalStore(tmp_path / "registry")
    client = request.getfixturevalue("s3_client")
    return S3Store(f"s3://{new_bucket(client)}/registry", client)


def run_processes(target, args_list: list[tuple], timeout: float, barrier: bool = False) -> list:
    """Run ``target(*args, [barrier,] results)`` in one spawned process per ``args``, all at
    once; assert each exits 0 and return what each put on ``results``. With ``barrier``, all
    share one Barrier (to hold them at the same point: a forced race)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    shared = (ctx.Barrier(len(args_list)),) if barrier else ()
    procs = [ctx.Process(target=target, args=(*args, *shared, results)) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0, f"a process exited with {p.exitcode}"
    return [results.get(timeout=5) for _ in procs]


def pytest_unconfigure(config):
    """py4j closes its gateway connection from ``__del__`` at interpreter exit and logs that at
    INFO, after pytest has closed the stream that the in-process Airflow log handlers write to:
    a 'Logging error' traceback after the test summary. The message itself says nothing."""
    import logging

    logging.getLogger("py4j").setLevel(logging.WARNING)
