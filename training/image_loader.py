"""Rank-sharded, deterministic batches of images stored in a Petastorm ndarray field.

For image datasets that fit in host memory once sharded (the digits example: 1,797 8x8
images). Each rank reads its row groups once, the same round-robin deal as
``training.loader.ShardLoader``, decodes the field with Petastorm's ``NdarrayCodec`` into one
``[rows, 1, H, W]`` float32 tensor on the device, and then serves every epoch from there: a
permutation drawn from (seed, epoch, rank) and slicing, with no per-epoch I/O. Larger image sets
belong in a streaming loader; this one keeps the same interface so the training loop is shared.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from training.loader import list_row_groups


class ImageShardLoader:
    """``(images [b, 1, H, W] float32, labels [b] int64)`` batches of one rank's shard.

    :param url: a split of a dataset (``file://...`` or ``s3://...``)
    :param image: the ndarray field (``NdarrayCodec``); ``label``: the integer class column
    :param scale: images are divided by it (the digits' grey levels run 0..16)
    """

    def __init__(self, url: str, image: str, label: str, *, rank: int = 0, size: int = 1,
                 batch_size: int = 64, seed: int = 0, shuffle: bool = True, scale: float = 1.0,
                 device: torch.device | str | None = None) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank={rank} is outside 0..{size - 1}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        self.batch_size, self.seed, self.shuffle, self.rank = batch_size, seed, shuffle, rank
        self.device = torch.device(device or "cpu")
        fs, groups = list_row_groups(url)
        self.total_row_groups = len(groups)
        self.groups = groups[rank::size]
        self.num_rows = sum(g.rows for g in self.groups)
        self.wait_s = 0.0  # all reading happens here, before training: nothing to wait for later
        self.x, self.y = self._read(fs, image, label, scale)

    def _read(self, fs, image: str, label: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        from petastorm.codecs import NdarrayCodec

        codec, images, labels = NdarrayCodec(), [], []
        for g in self.groups:
            table = pq.ParquetFile(fs.open_input_file(g.path)).read_row_group(g.index, columns=[image, label])
            if table.num_rows != g.rows:  # a truncated or concurrently replaced file
                raise IOError(f"{g.path} row group {g.index}: read {table.num_rows} rows, its footer says {g.rows}")
            for name in (image, label):
                if table.column(name).null_count:
                    raise ValueError(f"{g.path} row group {g.index}: column {name!r} has nulls")
            images += [codec.decode(None, v) for v in table.column(image).to_pylist()]
            labels.append(table.column(label).to_numpy())
        if not images:
            return torch.empty((0, 1, 0, 0)), torch.empty((0,), dtype=torch.int64)
        shapes = {a.shape for a in images}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"{image!r}: expected 2-D images of one shape, found shapes {sorted(shapes)}")
        x = torch.from_numpy(np.stack(images).astype(np.float32) / scale).unsqueeze(1)
        y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
        return x.to(self.device), y.to(self.device)

    def num_batches(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, in a permutation fixed by (seed, epoch, rank)."""
        n = self.num_rows
        if self.shuffle:
            rows = torch.from_numpy(np.random.default_rng([self.seed, epoch, self.rank]).permutation(n))
            rows = rows.to(self.device)
        for i in range(0, n, self.batch_size):
            if self.shuffle:
                idx = rows[i:i + self.batch_size]
                yield self.x.index_select(0, idx), self.y.index_select(0, idx)
            else:
                yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]
