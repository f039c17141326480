"""Rank-sharded, deterministic batches of images stored in a Petastorm ndarray field.

For image datasets that fit in host memory once sharded (the digits example: 1,797 8x8
images). Each rank is dealt its row groups evenly by rows, as by ``training.loader.ShardLoader``,
and knows its row count from the footers alone. The first epoch reads them once, decodes the
field with Petastorm's ``NdarrayCodec`` into one ``[rows, 1, H, W]`` float32 tensor on the device,
and every epoch is then served from there: a permutation drawn from (seed, epoch, rank) and
slicing, with no per-epoch I/O. The permutation is ShardLoader's (``training.scatter.permutation``
on PCG64), whose stream numpy keeps across releases. Larger image sets belong in a streaming loader; this one keeps
the same interface so the training loop is shared.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from training.parquet_groups import check_column_kinds, deal, list_row_groups, read_row_group
from training.scatter import permutation


def decode_images(values: list, field: str) -> np.ndarray:
    """``[n, H, W]`` images from the ``NdarrayCodec`` bytes of an ndarray field, as stored."""
    from petastorm.codecs import NdarrayCodec

    codec = NdarrayCodec()
    images = [codec.decode(None, v) for v in values]
    shapes = {a.shape for a in images}
    if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
        raise ValueError(f"{field!r}: expected 2-D images of one shape, found shapes {sorted(shapes)}")
    return np.stack(images) if images else np.empty((0, 0, 0))


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
        self.image, self.label, self.scale = image, label, scale
        self.batch_size, self.seed, self.shuffle, self.rank = batch_size, seed, shuffle, rank
        self.device = torch.device(device or "cpu")
        if image == label:
            raise ValueError(f"image={image!r} and label={label!r} name one column; give the image column "
                             f"and the class column")
        self.fs, groups = list_row_groups(url)
        if groups:  # before any epoch: a wrong name failed only at the first batch, after horovodrun started
            check_column_kinds(self.fs, groups[0], url, {image: "binary", label: "integer"})
        self.total_row_groups = len(groups)
        self.groups = deal(groups, size)[rank]
        self.num_rows = sum(g.rows for g in self.groups)
        self.wait_s = 0.0  # time the consumer spent blocked on data: the one read, in the first epoch
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def _read(self) -> tuple[torch.Tensor, torch.Tensor]:
        tables = [read_row_group(self.fs, g, [self.image, self.label]) for g in self.groups]
        images = decode_images([v for t in tables for v in t.column(self.image).to_pylist()], self.image)
        labels = [t.column(self.label).to_numpy() for t in tables]
        if not len(images):
            return torch.empty((0, 1, 0, 0)), torch.empty((0,), dtype=torch.int64)
        x = torch.from_numpy(images.astype(np.float32) / self.scale).unsqueeze(1)
        y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
        return x.to(self.device), y.to(self.device)

    def num_batches(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, in a permutation fixed by (seed, epoch, rank)."""
        if self._tensors is None:
            t = time.perf_counter()
            self._tensors = self._read()
            self.wait_s += time.perf_counter() - t
        x, y = self._tensors
        n = self.num_rows
        if self.shuffle:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, self.rank]))
            rows = torch.from_numpy(permutation(rng, n).astype(np.int64))  # ShardLoader's stream
            rows = rows.to(self.device)
        for i in range(0, n, self.batch_size):
            if self.shuffle:
                idx = rows[i:i + self.batch_size]
                yield x.index_select(0, idx), y.index_select(0, idx)
            else:
                yield x[i:i + self.batch_size], y[i:i + self.batch_size]
