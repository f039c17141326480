"""Who is running what: the identity recorded in every manifest and audit event."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class RunContext:
    """The Airflow run/task/try behind an attempt, or the local user for CLI runs."""

    dag_id: str = "-"
    run_id: str = "-"
    task_id: str = "-"
    try_number: int = 0
    triggered_by: str = "-"  # the person who triggered the run, else how it was started
    run_type: str = "-"  # how the run was started: scheduled, manual, backfill, asset_triggered
    reason: str = ""  # why the run was started (the DAG's ``reason`` param), kept in the audit log
    pipeline_stage: str = "-"  # the task's place in the chain (its operator's): what `dlpipe summary` goes by
    user: str = field(default_factory=lambda: _user())
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def as_dict(self) -> dict:
        return asdict(self)


def _user() -> str:
    """The account the process runs as, from the password database: not ``$USER`` or
    ``$LOGNAME`` (what getpass reads first), which anyone can set to another name."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid with no entry (containers run with an arbitrary uid)
        return str(os.geteuid())


def cli_context(command: str) -> RunContext:
    """Context for commands run by hand (``dlpipe demo-data`` and friends)."""
    return RunContext(dag_id="cli", run_id=command, task_id=command)
