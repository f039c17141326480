"""A horovodrun job that overruns its timeout, or whose task is killed, leaves no rank behind.

Horovod starts each rank under a middleman that calls ``setsid()``, so the ranks are not in
horovodrun's process group: killing that group alone would not reach them. What does reach them
is the middleman's own teardown when horovodrun goes, so these tests check the outcome that
matters with real ``horovodrun -np 2``: once the launcher returns, no rank process is alive,
even one that ignores SIGTERM.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dlpipe.errors import SubprocessFailed
from dlpipe.proc import kill_group
from training.config import ScaleConfig
from training.launcher import horovod_launcher

pytestmark = pytest.mark.integration

# Each rank records its pid, says it is up, then sleeps; rank 1 ignores SIGTERM, the way a rank
# stuck in a collective or a careless signal handler would.
RANK = textwrap.dedent("""
    import os, signal, sys, time
    rank = int(os.environ["HOROVOD_RANK"])
    if rank == 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open(os.path.join(sys.argv[1], f"rank-{rank}.pid"), "w").write(str(os.getpid()))
    print("up", flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _ranks(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(tmp_path.glob("rank-*.pid"))]


def _launch(tmp_path: Path, timeout_s: int, on_start=None) -> tuple[SubprocessFailed, float]:
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    launch = horovod_launcher(ScaleConfig(num_proc=2, hosts="localhost:2", run_timeout_s=timeout_s),
                              emit=lambda line: None, on_start=on_start)
    t0 = time.monotonic()
    with pytest.raises(SubprocessFailed) as err:
        launch([sys.executable, str(script), str(tmp_path)])
    return err.value, time.monotonic() - t0


def test_run_timeout_ends_every_rank(tmp_path):
    err, took = _launch(tmp_path, timeout_s=10)
    pids = _ranks(tmp_path)
    print(f"[measure] run_timeout_s=10: launcher returned after {took:.1f}s; ranks {pids}")
    assert len(pids) == 2, "both ranks should have started within the timeout"
    assert "exceeded its timeout of 10s" in str(err)
    assert [p for p in pids if _alive(p)] == [], "a rank outlived its job"
    assert took < 10 + 15  # the timeout, our 5 s grace, Horovod's own 5 s grace, and slack


def test_task_kill_ends_every_rank(tmp_path):
    """What the operator's on_kill does: kill_group on the horovodrun process."""
    alive_before: list[bool] = []

    def kill_when_up(proc) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob("rank-*.pid"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # both pid files written in full
            alive_before[:] = [_alive(p) for p in _ranks(tmp_path)]
            kill_group(proc)
        threading.Thread(target=watch, daemon=True).start()

    err, took = _launch(tmp_path, timeout_s=120, on_start=kill_when_up)
    pids = _ranks(tmp_path)
    print(f"[measure] task kill: launcher returned after {took:.1f}s; ranks {pids}")
    assert alive_before == [True, True], "the ranks should have been running when the task was killed"
    assert "exited with code" in str(err)
    assert [p for p in pids if _alive(p)] == [], "a rank outlived the killed task"
    assert took < 60
