"""Append-only audit log: one JSON line per event (started, skipped, committed, conflict, failed; removed by `dlpipe gc`).

Lines are appended with O_APPEND under an exclusive flock, so concurrent writers (two attempts
of the same task, several DAG runs) never interleave partial lines.

Each event carries ``prev``, the SHA-256 of the line before it, so an event edited, removed or
inserted in the middle of the log breaks the chain where `dlpipe audit --verify` shows it. That
is evidence of accidents and clumsy edits, not a signature: whoever can write the file can
rewrite every link after a change, and lines cut from the end leave no trace.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from dlpipe import settings
from dlpipe.errors import redacted
from dlpipe.hashing import canonical_json, sha256_bytes
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)
EVENTS = ("started", "skipped", "committed", "failed", "conflict", "removed")  # removed: dlpipe gc


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# Credential values this process was given (Spark settings that hold keys or tokens): a failed
# attempt's error text can carry them (spark-submit's error repeats its command line), and
# the audit log outlives every task log, so they are replaced by *** before any event is written.
_HIDDEN: set[str] = set()


def hide(value: str) -> None:
    """Never write ``value`` to the audit log (values under 4 characters would mask too much)."""
    if len(value) >= 4:
        _HIDDEN.add(value)


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        for secret in sorted(_HIDDEN, key=len, reverse=True):  # the longest first: one may contain another
            value = value.replace(secret, "***")
        return value
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


def _lock(fd: int, wait_s: float | None) -> bool:
    """Take the log's lock: wait as long as it takes, or at most ``wait_s`` (False if not got)."""
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def record(event: str, *, stage: str, run: RunContext, path: Path | None = None,
           lock_wait_s: float | None = None, **fields: Any) -> dict | None:
    """Append one event; returns the record written. With ``lock_wait_s``, give up (None, and a
    warning) when the lock is not free within that time: a signal handler must not wait for a
    lock that the code it interrupted holds."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; expected one of {EVENTS}")
    rec = {"ts": utcnow_iso(), "event": event, "stage": stage, "run": run.as_dict(), **fields}
    # a config's URL login or a value under a credential's name, should validation have let one
    # through, goes no further than the task that had it: the audit log outlives every task log
    rec = redacted(_masked(rec) if _HIDDEN else rec)
    path = path or settings.audit_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if not _lock(fd, lock_wait_s):
            log.warning("audit log %s busy for %.1f s: %s event of %s not written", path, lock_wait_s, event, stage)
            return None
        size = os.fstat(fd).st_size
        torn = bool(size) and os.pread(fd, 1, size - 1) != b"\n"  # a line torn by a crash
        if size:  # the link to the line before, whole or torn
            rec["prev"] = sha256_bytes(_last_line(fd, size if torn else size - 1))
        # a torn line is ended first, so that this event stays a line of its own
        line = (b"\n" if torn else b"") + (canonical_json(rec) + "\n").encode()
        written = 0
        try:
            while written < len(line):  # a write may take only part of the line
                written += os.write(fd, line[written:])
        except BaseException as exc:  # a full disk, a file-size limit: no half event left behind
            os.ftruncate(fd, size)
            if isinstance(exc, OSError) and exc.filename is None:  # os.write names no file: say which
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
        os.fsync(fd)  # an interrupt here leaves the whole line: it stays
    finally:
        os.close(fd)
    return rec


def _last_line(fd: int, end: int, chunk: int = 8192) -> bytes:
    """The bytes from the newline before offset ``end`` (or the file's start) up to ``end``."""
    start = end
    while start > 0:  # back, a chunk at a time, to the newline before it
        begin = max(0, start - chunk)
        cut = os.pread(fd, start - begin, begin).rfind(b"\n")
        if cut >= 0:
            return os.pread(fd, end - (begin + cut + 1), begin + cut + 1)
        start = begin
    return os.pread(fd, end, 0)


def failed(exc: BaseException, *, stage: str, run: RunContext, **fields: Any) -> None:
    """Record that an attempt failed with ``exc``, once however many layers see it go by (the
    stage's commit records it with its attempt; the operator records what failed before)."""
    if getattr(exc, "_dlpipe_audited", False):
        return
    # masked before it is cut (a cut can split a secret); URL logins too, whoever registered them
    text = redacted(_masked(f"{type(exc).__name__}: {exc}"))
    record("failed", stage=stage, run=run, error=text[:2000], **fields)
    try:
        exc._dlpipe_audited = True  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with __slots__: recorded twice at worst
        pass


def check_writable(path: Path | None = None) -> None:
    """Raise OSError now if events cannot be appended (a read-only DLPIPE_HOME): a change made
    by hand checks this first, so that it is not applied and then reported as failed."""
    path = path or settings.audit_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))


def read(path: Path | None = None) -> Iterator[dict]:
    """Every event in order. A line that is not JSON (a write torn by a crash or a full disk)
    is skipped with a warning that names it, so one bad line does not hide the rest."""
    path = path or settings.audit_log_path()
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                log.warning("%s line %d is not a JSON event (%s; a write torn by a crash?): skipped",
                            path, number, exc.msg)
                continue
            if not _is_event(event):  # a line written by hand or by another tool
                log.warning("%s line %d is JSON but not an event (one has a ts, an event, a stage and a run "
                            "with %s): skipped", path, number, ", ".join(_RUN_KEYS))
                continue
            yield event


def verify(path: Path | None = None) -> tuple[int, int, list[str]]:
    """Check the chain of ``prev`` links: (lines linked to the line before, lines at the start
    with no link, problems). The first event of a log has no link, nor has any event written by a
    dlpipe from before the links. A line torn by a crash is no problem: the event after it links
    to it as it stands."""
    path = path or settings.audit_log_path()
    if not path.exists():
        return 0, 0, []
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    linked = unlinked = 0
    problems: list[str] = []
    for number, raw in enumerate(lines, 1):
        try:
            event = json.loads(raw)
        except ValueError:
            continue  # torn by a crash: read() warns about it
        prev = event.get("prev") if isinstance(event, dict) else None
        if prev is None:
            if linked or problems:
                problems.append(f"line {number} has no link to the line before it: written by something other "
                                f"than this dlpipe, or its link removed")
            else:
                unlinked += 1
        elif number == 1:
            problems.append("line 1 links to a line before it: the start of the log was removed")
        elif prev != sha256_bytes(lines[number - 2]):
            problems.append(f"line {number} does not link to line {number - 1}: a line between them was "
                            f"changed, removed or inserted")
        else:
            linked += 1
    return linked, unlinked, problems


_RUN_KEYS = ("dag_id", "run_id", "task_id", "try_number", "user")  # what readers of events look up


_TEXT_KEYS = ("error", "reason", "manifest_id")  # optional, but text where present: readers slice them


def _is_event(value: Any) -> bool:
    return (isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("ts", "event", "stage"))
            and all(isinstance(value.get(k), (str, type(None))) for k in _TEXT_KEYS)
            and isinstance(value.get("run"), dict) and all(k in value["run"] for k in _RUN_KEYS))
