"""Read one rank's shard of a committed Petastorm dataset into contiguous float tensors."""

from __future__ import annotations

import warnings

import numpy as np


def read_shard(url: str, columns: list[str], label: str, rank: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of this rank's row groups as ``(features [n, f] float32, labels [n] float32)``.

    Petastorm shards by row group, so the dataset must have at least ``size`` row groups (the
    dataset stage writes ``num_files`` files per split for that reason). Row groups are read in a
    fixed order so a given seed gives the same training run.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    # Our datasets hold only plain scalar columns, which make_batch_reader reads as they are.
    warnings.filterwarnings("ignore", message="Please use make_reader", category=UserWarning)
    from petastorm import make_batch_reader

    xs, ys = [], []
    with make_batch_reader(url, schema_fields=columns + [label], cur_shard=rank, shard_count=size,
                           shuffle_row_groups=False, num_epochs=1, workers_count=2) as reader:
        for batch in reader:
            xs.append(np.stack([np.asarray(getattr(batch, c), dtype=np.float32) for c in columns], axis=1))
            ys.append(np.asarray(getattr(batch, label), dtype=np.float32))
    if not xs:
        return np.zeros((0, len(columns)), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(xs), np.concatenate(ys)
