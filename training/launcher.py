"""Build and run a ``horovodrun`` command line (an argument list: no shell, no quoting bugs)."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Callable, Sequence

from dlpipe.errors import ConfigError, SubprocessFailed
from dlpipe.proc import run_streaming, secret_env
from training.config import ENV_NAME, ScaleConfig, check_rank_env

log = logging.getLogger(__name__)

# What a training stage calls to run its command on N processes.
Launcher = Callable[[Sequence[str]], None]


def horovodrun_argv(scale: ScaleConfig, command: Sequence[str]) -> list[str]:
    binary = shutil.which("horovodrun", path=os.path.dirname(sys.executable) + os.pathsep
                          + os.environ.get("PATH", ""))
    if binary is None:
        raise FileNotFoundError("horovodrun not found next to this Python or on PATH; run `make setup`")
    argv = [binary, "-np", str(scale.num_proc)]
    if scale.elastic:  # hosts come from the discovery script, re-read while the job runs
        if problem := untrusted_script_problem(scale.host_discovery_script):
            raise ConfigError("scale.host_discovery_script", scale.host_discovery_script, problem)
        argv += ["--min-np", str(scale.min_np), "--max-np", str(scale.max_np or scale.num_proc),
                 "--host-discovery-script", scale.host_discovery_script]
    else:
        argv += ["-H", scale.hosts]
    argv += [f"--{scale.controller}", "--start-timeout", str(scale.start_timeout_s)]
    if scale.network_interface:
        if problem := local_interface_problem(scale):
            raise ConfigError("scale.network_interface", scale.network_interface, problem)
        argv += ["--network-interface", scale.network_interface]
    return argv + list(command)


def untrusted_script_problem(path: str) -> str | None:
    """Why the discovery script a spec names must not run, or None. horovodrun runs it, as the
    worker's user, every few seconds: a spec (configuration) may name only an executable that
    nobody but its owner could have written, in a folder others cannot write into (not a file
    in /tmp, which anyone could plant), as ssh judges the files it trusts."""
    import stat

    try:
        st = os.stat(path)
        folder = os.stat(os.path.dirname(path) or "/")
    except OSError as exc:
        return f"cannot be read on this worker ({exc.strerror}): install the script on every Airflow worker"
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        return "is not an executable file: install it with mode 0755"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or st.st_uid not in (0, os.geteuid()):
        return ("may be written by others (its owner is another user, or it is group- or world-writable): a "
                "changed script would run as this worker; make it owned by root or this user, mode 0755")
    if folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or folder.st_uid not in (0, os.geteuid()):
        return ("is in a folder others may write into (such as /tmp), where the script could be replaced; install "
                "it in a folder owned by root or this user, such as /opt/dlpipe/bin")
    return None


def local_interface_problem(scale: ScaleConfig) -> str | None:
    """Why horovodrun would refuse ``network_interface`` before starting a rank, if it would.
    When every host of a static job is this machine (``localhost:8``, or its own name), it
    takes only an interface holding 127.0.0.1, and fails with a bare ValueError otherwise: the
    setting matters only between hosts. Judged the way horovodrun judges it, on the worker that
    launches (names resolve there); not for elastic jobs, whose hosts come and go."""
    if scale.elastic or not scale.network_interface:
        return None
    try:
        import psutil
        from horovod.runner.util import network
    except ImportError:  # horovodrun itself would not start: its own error says so
        return None
    names = [entry.rpartition(":")[0] for entry in scale.hosts.split(",")]
    if network.filter_local_addresses(names):
        return None  # a remote host: the interface carries the traffic between hosts
    loopback = {name for name, addrs in psutil.net_if_addrs().items()
                if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs)}
    if scale.network_interface in loopback:
        return None
    return (f"every host in hosts={scale.hosts!r} is this machine, and horovodrun then accepts only an "
            f"interface holding 127.0.0.1 ({', '.join(sorted(loopback)) or 'none here'}): the interface "
            f"matters only between hosts, so leave network_interface out for a one-machine job")


# Every rank's defaults, under the worker's environment and the job's env (both win over them).
RANK_DEFAULTS = {
    # A rank that stops answering (frozen, stopped, partitioned) must end the job instead of
    # leaving the others waiting forever. What ends it is the Gloo timeout: the other ranks'
    # Horovod threads fail their next exchange with it after this long (measured: a SIGSTOPped
    # rank ends the job in 30 s, and in 75 s with 75 here, whatever the stall settings). A rank
    # that is only slow (a long checkpoint write) keeps its background thread answering and is
    # not ended. The same timeout bounds the ranks' first connection to each other, so a
    # multi-host start with slow logins may need it raised.
    "HOROVOD_GLOO_TIMEOUT_SECONDS": "30",
    # Horovod's stall inspector: warns when ranks wait on tensors others never submit, and
    # shuts such a job down after the second value.
    "HOROVOD_STALL_CHECK_TIME_SECONDS": "10",
    "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "30",
}


def training_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every rank runs this interpreter, finds this repository's packages and stays quiet; no
    Airflow connection, variable or other credential in the task's environment reaches it."""
    check_rank_env(extra or {})
    bindir = os.path.dirname(sys.executable)
    # names a shell would not take as one (see ENV_NAME) are not passed on either
    inherited = {k: v for k, v in os.environ.items() if ENV_NAME.fullmatch(k) and not secret_env(k, v)}
    return {
        **RANK_DEFAULTS,
        **inherited,
        **(extra or {}),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONWARNINGS": "ignore:pyarrow.localfs is deprecated:FutureWarning",
        "PYTHONUNBUFFERED": "1",
        # horovodrun forwards each rank's output decoding it strictly, and one undecodable byte
        # ends that rank's forwarding (the rank then blocks on a full pipe until the run timeout).
        # Python's own writes then stay valid UTF-8, a str holding a lone surrogate included;
        # raw bytes a native library writes cannot be helped here (docs/operators.md).
        "PYTHONIOENCODING": "utf-8:backslashreplace",
    }


RANK_LINE = re.compile(r"^\[(\d+)\]<std(?:out|err)>:")
# horovodrun's report of the first process that exited non-zero
RANK_EXIT = re.compile(r"Process name: (\d+)\s+Exit code: (-?\d+)")


class RankTails:
    """Keeps the last lines of each rank's output (horovodrun prefixes them ``[rank]<stdout>:``).

    When a job fails, the rank that died first is rarely the one whose lines are last in the
    merged stream, so the error shows every rank's own tail, plus horovodrun's own lines.
    """

    def __init__(self, lines: int = 15) -> None:
        self.ranks: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=lines))
        self.launcher: collections.deque[str] = collections.deque(maxlen=lines)
        self.first_raised: int | None = None  # the rank whose traceback came first in the stream
        self.raised: set[int] = set()  # every rank that printed a traceback

    def add(self, line: str) -> None:
        m = RANK_LINE.match(line)
        if m:
            rank, text = int(m.group(1)), line[m.end():]
            self.ranks[rank].append(text)
            if text.startswith("Traceback (most recent call last)"):
                self.raised.add(rank)
                if self.first_raised is None:
                    self.first_raised = rank
        else:
            self.launcher.append(line)

    def first_error(self) -> str | None:
        """The likely cause, where the other ranks' errors are consequences (HorovodInternalError
        once a peer is gone): a rank ended by a signal (killed: it printed no traceback), else
        'rank R raised first: <its last line>'. Audit events and summaries keep only an error's
        first characters, so this goes before every rank's tail."""
        ended = RANK_EXIT.search("\n".join(self.launcher))
        code = int(ended.group(2)) if ended else 0
        if code > 128 or code < 0:  # a shell's 128 + N, or Python's -N
            return f"rank {ended.group(1)} was ended by signal {code - 128 if code > 0 else -code} (exit code {code})"
        if self.first_raised is None or not self.ranks[self.first_raised]:
            return None
        last = self.ranks[self.first_raised][-1].strip()
        said = f"rank {self.first_raised} raised first: {last}"
        silent = sorted(set(self.ranks) - self.raised)
        if silent and "timed out" in last.lower():  # Gloo's: a peer stopped answering
            said += (f"; rank(s) {silent} raised nothing: a rank that stops answering (stopped, swapped out, cut "
                     f"off) makes the others time out waiting for it, so it is the likely cause")
        return said

    def report(self) -> str:
        parts = []
        order = sorted(self.ranks, key=lambda r: (r != self.first_raised, r))
        for rank in order:
            first = " (raised first)" if rank == self.first_raised else ""
            parts.append(f"rank {rank}{first}, last {len(self.ranks[rank])} lines:")
            parts += [f"    {line}" for line in self.ranks[rank]]
        if self.launcher:
            parts.append(f"horovodrun, last {len(self.launcher)} lines:")
            parts += [f"    {line}" for line in self.launcher]
        return "\n".join(parts)


def horovod_launcher(scale: ScaleConfig, *, env: dict[str, str] | None = None,
                     emit: Callable[[str], None] | None = None,
                     on_start: Callable[[subprocess.Popen], None] | None = None) -> Launcher:
    """A Launcher running ``horovodrun``; ``on_start`` receives the process (to kill it).
    The ranks get ``scale.env`` (the spec's) and ``env`` (the operator's), ``env`` winning."""
    env = {**scale.env, **(env or {})}

    def launch(command: Sequence[str]) -> None:
        tails = RankTails()
        out = emit or (lambda line: log.info("%s", line))

        def both(line: str) -> None:
            tails.add(line)
            out(line)

        try:
            run_streaming(horovodrun_argv(scale, command), env=training_env(env),
                          timeout_s=scale.run_timeout_s, emit=both, on_start=on_start)
        except SubprocessFailed as exc:
            first = tails.first_error()
            raise SubprocessFailed(f"{exc.headline}{f'; {first}' if first else ''}; output of each rank:\n"
                                   f"{tails.report()}",
                                   headline=exc.headline, tail=exc.tail) from None

    return launch
