"""Garbage under DLPIPE_HOME: attempt folders no committed manifest names, and checkpoints of
trainings that never committed, once nothing can still be writing them.

Only what docs/operations.md (Retention) calls garbage is collected: committed outputs, old
versions included, are never touched here; deleting those is a retention decision (lineage,
drift baselines, a backfill horizon) that stays with people. The rules:

- an attempt folder that no manifest names is garbage once its attempt ended without a commit
  (its ``failed`` or ``conflict`` event in the audit log), or once nothing has been written in it
  for ``older_than``: an attempt still running writes its files there, and a task's attempt
  ends (a timeout, a kill) within its execution_timeout times its tries, which ``older_than``
  must exceed;
- a training's checkpoint folder is garbage once nothing has been written in it for
  ``older_than``: the retry that would resume from it has run by then (the training stage
  removes the folder itself when its manifest commits);
- a partition whose manifests cannot all be read is left alone: what they name is unknown.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dlpipe import audit, commit, settings
from dlpipe.errors import ConfigError, IntegrityError
from dlpipe.hashing import checkpoint_name
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Garbage:
    path: Path
    kind: str  # "attempt" or "checkpoints"
    size: int  # bytes
    why: str


def parse_age(text: str) -> timedelta:
    """'72h', '3d', '90m' as a timedelta; an error that names the value otherwise."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise ConfigError("--older-than", text, "give a whole number of minutes, hours or days, e.g. 72h or 3d")
    return timedelta(**{units[unit]: int(number)})


def _newest_write(folder: Path) -> float:
    """The latest modification time of the folder or anything in it (epoch seconds)."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:  # removed while we walked
                continue
    return newest


def _size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _ended_attempts() -> dict[str, str]:
    """attempt id -> 'failed at TS' or 'lost a race at TS', from the audit log."""
    ended = {}
    for e in audit.read():
        if e["event"] in ("failed", "conflict") and isinstance(e.get("attempt_id"), str):
            ended[e["attempt_id"]] = f"{'failed' if e['event'] == 'failed' else 'lost a race to a commit'} at {e['ts']}"
    return ended


def _checkpoint_commits(partition: Path) -> dict[str, str]:
    """checkpoint folder name -> the id of the training commit it belongs to (the folder is named
    for the training's dataset, config and code: training.stages.train_model)."""
    made = {}
    for path in (partition / "manifests").glob("*.json"):
        try:
            m = commit.read_manifest(path)
            key = checkpoint_name(m["inputs"][0]["id"], m["config"], m["code"]["sources_hash"])
        except (IntegrityError, KeyError, IndexError, TypeError):
            continue  # unreadable or not a training: its checkpoints are judged as never committed
        made[key] = m["id"]
    return made


def find(older_than: timedelta, home: Path | None = None, now: datetime | None = None) -> list[Garbage]:
    """Everything the rules above call garbage, oldest partition first."""
    home = home or settings.home()
    cutoff = (now or datetime.now(timezone.utc)).timestamp() - older_than.total_seconds()
    ended = _ended_attempts()
    found: list[Garbage] = []
    for attempts in sorted(home.glob("*/*/*/attempts")):
        partition = attempts.parent
        try:
            named = {commit.location(commit.read_manifest(m), home).resolve()
                     for m in (partition / "manifests").glob("*.json")}
        except (IntegrityError, KeyError, TypeError) as exc:
            log.warning("%s: a manifest cannot be read (%s): its attempts are left alone", partition, exc)
            continue
        for folder in sorted(p for p in attempts.iterdir() if p.is_dir() and not p.is_symlink()):
            if folder.resolve() in named:
                continue
            if folder.name in ended:
                why = f"no manifest names it; its attempt {ended[folder.name]}"
            elif (written := _newest_write(folder)) < cutoff:
                why = f"no manifest names it; nothing written in it since {_iso(written)}"
            else:
                continue  # it may still be writing
            found.append(Garbage(folder, "attempt", _size(folder), why))
    commits: dict[Path, dict[str, str]] = {}  # training partition -> its checkpoint names' commits
    for folder in sorted(home.glob("training/*/*/checkpoints/*")):
        if folder.is_dir() and not folder.is_symlink() and (written := _newest_write(folder)) < cutoff:
            partition = folder.parent.parent
            if partition not in commits:  # its manifests read once, however many folders it holds
                commits[partition] = _checkpoint_commits(partition)
            made = commits[partition]
            why = (f"its training committed ({made[folder.name]}): a dlpipe from before 2026-12 left checkpoints "
                   f"behind" if folder.name in made else "its training never committed")
            found.append(Garbage(folder, "checkpoints", _size(folder), f"{why}; nothing written in it since "
                                                                       f"{_iso(written)}"))
    return found


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def remove(garbage: list[Garbage], run: RunContext, home: Path | None = None) -> int:
    """Delete ``garbage``, each with a ``removed`` audit event first; returns the bytes freed."""
    home = home or settings.home()
    freed = 0
    for g in garbage:
        rel = g.path.relative_to(home).as_posix()
        audit.record("removed", stage="gc", run=run, folder=rel, kind=g.kind, size=g.size, reason=g.why)
        shutil.rmtree(g.path, ignore_errors=True)
        freed += g.size
    return freed
