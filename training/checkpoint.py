"""Per-epoch checkpoints that a retried task resumes from, and that can never be half-read.

A checkpoint is written by rank 0 as ``epoch-NNNN.pt`` (temporary file, fsync, rename) and
only then sealed by ``epoch-NNNN.sha256`` (written the same way). Loading takes the newest
epoch whose seal exists and matches the file's hash and that torch can load; a file torn by a
kill, one without a seal, or one this torch cannot read is skipped for the next older one. The
bytes hashed are the bytes loaded (one read). Files hold plain tensors and numbers, loaded with
``weights_only=True``. Only the ``KEEP`` newest sealed epochs stay on disk (with the model and
Adam's two moments, each is about 3x the model's size); the training stage removes the folder
once its model is committed.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from dlpipe.fsutil import write_temp
from dlpipe.hashing import sha256_bytes

_NAME = re.compile(r"^epoch-(\d{4})\.pt$")
KEEP = 2  # sealed epochs kept: the newest, and one before it in case the newest rots
# DLPIPE_KEEP_CHECKPOINTS=1 keeps every epoch's checkpoint, and the folder after the commit,
# to look into a run; the ranks inherit it from the worker's environment.
KEEP_ALL_VAR = "DLPIPE_KEEP_CHECKPOINTS"


def keep_all() -> bool:
    return os.environ.get(KEEP_ALL_VAR, "") not in ("", "0")


def save(ckpt_dir: Path, epoch: int, state: dict) -> Path | None:
    """Write and seal the checkpoint taken after ``epoch`` (1-based) epochs."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = ckpt_dir / f"epoch-{epoch:04d}.pt"
    seal = path.with_suffix(".sha256")
    if not ckpt_dir.is_dir():  # removed by a try that committed: making it again would leave it behind
        print(f"[checkpoint] {path.name} not kept: {ckpt_dir} was removed (a concurrent try committed)", flush=True)
        return None
    try:
        os.replace(write_temp(path, data), path)
        os.replace(write_temp(seal, sha256_bytes(data).encode()), seal)
    except FileNotFoundError:
        # a concurrent try of this training committed and removed the folder (or pruned this
        # epoch's files) meanwhile: this checkpoint is not needed; training goes on
        print(f"[checkpoint] {path.name} not kept: its folder changed under it (a concurrent try)", flush=True)
        return None
    if not keep_all():
        prune(ckpt_dir, keep_from=epoch - KEEP + 1)
    return path


STALE_TEMP_S = 3600  # a temporary file this old is left by a killed write, not one in progress
_TEMP = re.compile(r"^\.epoch-(\d{4})\.(?:pt|sha256)\.[0-9a-f]+\.tmp$")


def prune(ckpt_dir: Path, keep_from: int, now: float | None = None) -> None:
    """Delete checkpoints of epochs before ``keep_from``, and temporary files of such epochs
    that a killed write left (an hour old: a concurrent try of the same training shares the
    folder and may be writing one). Called by rank 0 right after it sealed a newer epoch, so a
    resume never needs them."""
    now = time.time() if now is None else now
    try:
        entries = list(ckpt_dir.iterdir())
    except FileNotFoundError:  # removed by a concurrent try that committed
        return
    for p in entries:
        m = _NAME.match(p.with_suffix(".pt").name) if p.suffix in (".pt", ".sha256") else None
        t = _TEMP.match(p.name)
        try:
            stale = t is not None and int(t.group(1)) < keep_from and now - p.stat().st_mtime > STALE_TEMP_S
            if (m and int(m.group(1)) < keep_from) or stale:
                p.unlink()
        except FileNotFoundError:
            pass  # a concurrent try removed it first


def _epochs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.exists():
        return []
    return sorted(((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))), reverse=True)


def _sealed_bytes(path: Path) -> bytes | None:
    """The file's bytes if its seal matches them (read once: what is checked is what loads)."""
    seal = path.with_suffix(".sha256")
    try:
        data, expected = path.read_bytes(), seal.read_text().strip()
    except FileNotFoundError:
        print(f"[checkpoint] ignoring {path.name}: no seal (torn, or removed meanwhile)", flush=True)
        return None
    if sha256_bytes(data) != expected:
        print(f"[checkpoint] ignoring {path.name}: hash mismatch (torn or tampered)", flush=True)
        return None
    return data


def load_latest(ckpt_dir: Path) -> tuple[int, Path, dict] | None:
    """(epoch, path, state) of the newest checkpoint that verifies and loads, or None."""
    import io

    import torch

    for epoch, path in _epochs(ckpt_dir):
        data = _sealed_bytes(path)
        if data is None:
            continue
        try:
            return epoch, path, torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # e.g. written by another torch release: an older one may load
            print(f"[checkpoint] ignoring {path.name}: torch cannot load it ({type(exc).__name__}: "
                  f"{str(exc)[:200]})", flush=True)
    return None
