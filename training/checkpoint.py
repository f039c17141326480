"""Per-epoch checkpoints that a retried task resumes from, and that can never be half-read.

A checkpoint is written by rank 0 as ``epoch-NNNN.pt`` (temporary file, fsync, rename) and
only then sealed by ``epoch-NNNN.sha256`` (written the same way). Loading takes the newest
epoch whose seal exists and matches the file's hash; a file torn by a kill, or one without a
seal, is skipped. Files hold plain tensors and numbers, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dlpipe.fsutil import write_temp
from dlpipe.hashing import sha256_bytes, sha256_file

_NAME = re.compile(r"^epoch-(\d{4})\.pt$")


def save(ckpt_dir: Path, epoch: int, state: dict) -> Path:
    """Write and seal the checkpoint taken after ``epoch`` (1-based) epochs."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = ckpt_dir / f"epoch-{epoch:04d}.pt"
    os.replace(write_temp(path, data), path)
    seal = path.with_suffix(".sha256")
    os.replace(write_temp(seal, sha256_bytes(data).encode()), seal)
    return path


def latest_valid(ckpt_dir: Path) -> tuple[int, Path] | None:
    """(epoch, path) of the newest checkpoint whose seal matches its bytes, or None."""
    if not ckpt_dir.exists():
        return None
    found = sorted(((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))),
                   reverse=True)
    for epoch, path in found:
        seal = path.with_suffix(".sha256")
        if seal.exists() and seal.read_text().strip() == sha256_file(path):
            return epoch, path
        print(f"[checkpoint] ignoring {path.name}: {'no seal' if not seal.exists() else 'hash mismatch'} "
              f"(torn or tampered)", flush=True)
    return None


def load(path: Path) -> dict:
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)
