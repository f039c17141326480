"""Real services for production-path tests: a PostgreSQL server of its own and the Airflow 3
services (API server, scheduler with the LocalExecutor, DAG processor) as processes on loopback.

Nothing here is mocked: the metadata database is PostgreSQL 15, tasks run in the LocalExecutor's
worker processes and talk to the API server's execution API, as on a deployment.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import ROOT, free_port

SECRET = "dlpipe-TEST-secret-key-7c1e9a"  # given to tasks in an AWS connection; must never be written anywhere


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; install postgresql (15 or newer)")
    return found


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL server in a temporary directory; yields a SQLAlchemy URL.

    PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user.
    """
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="dlpipe-pg-"))
    data, port = root / "data", free_port()
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    run = lambda *argv: subprocess.run([*as_user, *argv], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(_pg_bin("initdb"), "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="airflow", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE airflow")
        conn.close()
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def query(url: str, sql: str, *args) -> list[tuple]:
    """Rows of one query against the metadata database (cheaper than an ``airflow`` CLI call)."""
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def local_airflow_env(tmp_path: Path, dlpipe_home: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow of its own: home under ``tmp_path``, this repository's DAGs,
    Spark on ``local[2]``."""
    return {
        **os.environ,
        "DLPIPE_HOME": str(dlpipe_home),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_DLPIPE_SPARK": '{"conn_type": "spark", "host": "local[2]"}',
        **extra,
    }


def airflow_cli(env: dict, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``airflow ARGS`` as a subprocess; with ``check``, a failure raises with its output."""
    airflow = str(Path(sys.executable).parent / "airflow")
    proc = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def services_env(base: dict, db_url: str, home: Path) -> dict:
    """Environment for every Airflow process of one deployment: one database, one API server.

    The UI's simple auth manager gets one user, ``admin``, whose password is in
    ``home/ui-passwords.json``."""
    import secrets

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "ui-passwords.json").write_text(f'{{"admin": "{secrets.token_urlsafe(12)}"}}')
    return {
        **base,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # every process must sign and check task tokens with the same key
        "AIRFLOW__API_AUTH__JWT_SECRET": "dlpipe-test-jwt-signing-key-not-for-production",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "ui-passwords.json"),
    }


@contextmanager
def airflow_services(env: dict, logs: Path) -> Iterator[dict]:
    """Start the API server, the scheduler and the DAG processor; stop them (whole process
    groups) on exit. Yields ``{name: log path}``; a service that dies fails the test with its log."""
    airflow = str(Path(sys.executable).parent / "airflow")
    logs.mkdir(parents=True, exist_ok=True)
    commands = {"api-server": ["api-server", "--port", env["AIRFLOW__API__PORT"], "--host", "127.0.0.1"],
                "scheduler": ["scheduler"], "dag-processor": ["dag-processor"]}
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, args in commands.items():
            out = open(logs / f"{name}.log", "w")
            procs[name] = subprocess.Popen([airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.monotonic() + 120
        while True:  # the API server answers once it is up
            try:
                socket.create_connection(("127.0.0.1", int(env["AIRFLOW__API__PORT"])), timeout=1).close()
                break
            except OSError:
                check_alive(procs, logs)
                if time.monotonic() > deadline:
                    raise RuntimeError("the Airflow API server did not start within 120 s:\n"
                                       + (logs / "api-server.log").read_text()[-3000:])
                time.sleep(1)
        yield {"procs": procs, "logs": {name: logs / f"{name}.log" for name in commands}}
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def check_alive(procs: dict[str, subprocess.Popen], logs: Path) -> None:
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise RuntimeError(f"airflow {name} exited with {proc.returncode}:\n"
                               + (logs / f"{name}.log").read_text()[-4000:])


def wait_for(condition, what: str, timeout_s: float, procs: dict | None = None, logs: Path | None = None,
             every_s: float = 2.0):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if procs is not None and logs is not None:
            check_alive(procs, logs)
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
