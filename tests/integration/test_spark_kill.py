"""A killed or timed-out Spark task leaves no process behind (real spark-submit, local master).

SparkSubmitHook's own ``on_kill`` SIGKILLs spark-submit alone. In client mode a PySpark
application's driver is a Python child of spark-submit's JVM, and it survives that, with
whatever it started. The operator therefore starts spark-submit in its own session and, after
the provider's kill, ends the rest of the group.
"""

from __future__ import annotations

import textwrap
import threading
import time
from pathlib import Path

import pytest

from operators.features import hook_submitter, kill_submissions
from tests.integration.test_horovod_teardown import _alive

pytestmark = pytest.mark.integration

# The "Spark application": its driver records its pid and a child's, then both sleep. The child
# ignores SIGTERM, as a stuck worker would.
APP = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    open(os.path.join(sys.argv[1], "pids.tmp"), "w").write(f"{os.getpid()} {child.pid}")
    os.rename(os.path.join(sys.argv[1], "pids.tmp"), os.path.join(sys.argv[1], "pids"))
    time.sleep(600)
""")


def test_on_kill_ends_spark_submit_and_everything_it_started(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", "host": "local[1]"}')
    app = tmp_path / "app.py"
    app.write_text(APP)
    hooks: list = []
    submit = hook_submitter("dlpipe_spark", {}, "test.kill", hooks)
    outcome: list = []

    def run() -> None:
        try:
            submit(str(app), [str(tmp_path)])
            outcome.append("returned")
        except Exception as exc:  # the hook raises once spark-submit exits non-zero
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "pids").exists():
        assert time.monotonic() < deadline, "the Spark application did not start within 120 s"
        assert thread.is_alive(), f"spark-submit ended early: {outcome}"
        time.sleep(0.2)
    driver, child = map(int, (tmp_path / "pids").read_text().split())
    submitter = hooks[0]._submit_sp.pid
    assert _alive(driver) and _alive(child)

    t0 = time.monotonic()
    kill_submissions(hooks, grace_s=2.0)
    thread.join(30)
    took = time.monotonic() - t0
    assert not thread.is_alive(), "the hook's submit() did not return after the kill"
    assert outcome and outcome[0] != "returned", "a killed spark-submit must not look like success"
    left = [name for name, p in (("spark-submit", submitter), ("driver", driver), ("its child", child))
            if _alive(p)]
    assert not left, f"processes left after on_kill: {left}"
    assert took < 15, f"on_kill took {took:.1f} s"
