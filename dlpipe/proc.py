"""Run an external tool (spark-submit, horovodrun) as an argument list, never through a shell.

Output is streamed line by line to a logger as it arrives (progress is visible in the task log),
the last lines are kept for the exception, and a timeout or an interrupt ends the tool's whole
process group, so no orphaned Spark driver or Horovod rank outlives its task.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from dlpipe.errors import SubprocessFailed, credential_env

log = logging.getLogger(__name__)

# Airflow's own secrets in a task's environment: its connections, variables and whole
# configuration (its database URL holds a password). No tool dlpipe starts needs them.
AIRFLOW_SECRET_ENV = re.compile(r"AIRFLOW_CONN_|AIRFLOW_VAR_|AIRFLOW__")


def secret_env(name: str, value: str) -> bool:
    """Whether the environment variable ``name=value`` must not reach a tool's environment or a
    command line: Airflow's own, or a credential by name or value (``errors.credential_env``).
    The one policy for Horovod's ranks and for the environments Spark settings give."""
    return bool(AIRFLOW_SECRET_ENV.match(name.upper())) or credential_env(name, value)


# A line longer than this is passed on in pieces of this size: one 30 MB line without a newline
# would otherwise sit whole in the tail, the failure message and the task log.
MAX_LINE = 8192


def with_parent_death_signal(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the thread that starts it dies (util-linux's
    ``setpriv --pdeathsig``, which then execs it: same pid), where setpriv exists. The tool's
    session of its own keeps it out of a kill of ours, so without this a SIGKILLed task left it
    running, and its run timeout, a thread of the task, died with the task."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


def set_parent_death_signal() -> None:
    """For ``Popen(preexec_fn=...)`` where the command line is not ours to prefix (the Spark
    provider's spark-submit): the child gets SIGTERM when the thread that started it dies, as
    ``with_parent_death_signal`` does. Linux only; elsewhere nothing."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _libc_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def run_streaming(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = None,
    emit: Callable[[str], None] | None = None,
    tail_lines: int = 60,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> list[str]:
    """Run ``argv`` to completion; return its last lines. Raise SubprocessFailed on failure.

    The tool runs in a session of its own (``kill_group`` reaches all it starts) and gets
    SIGTERM if this process dies first (``with_parent_death_signal``): a task SIGKILLed by
    Airflow must not leave horovodrun and its ranks running. Its output is read as UTF-8 with
    undecodable bytes escaped, a line longer than ``MAX_LINE`` characters in pieces."""
    emit = emit or (lambda line: log.info("%s", line))
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    proc = subprocess.Popen(
        with_parent_death_signal(list(argv)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        encoding="utf-8", errors="backslashreplace", bufsize=1,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
    )
    if on_start:
        on_start(proc)
    timed_out = threading.Event()

    def _watchdog() -> None:
        timed_out.set()
        kill_group(proc)

    timer = threading.Timer(timeout_s, _watchdog) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in iter(lambda: proc.stdout.readline(MAX_LINE), ""):
            line = line.rstrip("\n")
            tail.append(line)
            emit(line)
        rc = proc.wait()
    except BaseException:
        kill_group(proc)
        raise
    finally:
        if timer:
            timer.cancel()
    name = os.path.basename(argv[0])
    if timed_out.is_set():
        _fail(f"{name} exceeded its timeout of {timeout_s:.0f}s and was killed", tail)
    if rc != 0:
        _fail(f"{name} exited with code {rc}", tail)
    return list(tail)


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_members(pgid: int) -> list[int]:
    """Live processes of group ``pgid`` (zombies, dead but not yet reaped, left out), from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def kill_process_group(pgid: int, grace_s: float = 5.0, settle_s: float = 5.0) -> list[int]:
    """SIGTERM every process of group ``pgid``, SIGKILL what is left after ``grace_s``, and wait
    up to ``settle_s`` for those to end; returns the pids still alive then (none, normally).

    Unlike ``kill_group`` this goes on after the group's leader has died, which is when its
    children (a Spark application's Python driver, say) are left behind."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    for sig, wait_s in ((signal.SIGKILL, grace_s), (None, settle_s)):
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if sig is not None and group_members(pgid):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return []
    return group_members(pgid)


def _fail(headline: str, tail: collections.deque[str]) -> None:
    body = "\n".join(f"    {line}" for line in tail)
    raise SubprocessFailed(f"{headline}; last {len(tail)} lines of output:\n{body}", headline=headline,
                           tail=list(tail))
