"""Append-only audit log: one JSON line per attempt event (started, skipped, committed, failed).

Lines are appended with O_APPEND under an exclusive flock, so concurrent writers (two attempts
of the same task, several DAG runs) never interleave partial lines.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from dlpipe import settings
from dlpipe.hashing import canonical_json
from dlpipe.runctx import RunContext

EVENTS = ("started", "skipped", "committed", "failed", "conflict")


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record(event: str, *, stage: str, run: RunContext, path: Path | None = None, **fields: Any) -> dict:
    """Append one event; returns the record written."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; expected one of {EVENTS}")
    rec = {"ts": utcnow_iso(), "event": event, "stage": stage, "run": run.as_dict(), **fields}
    path = path or settings.audit_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (canonical_json(rec) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return rec


def read(path: Path | None = None) -> Iterator[dict]:
    path = path or settings.audit_log_path()
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
