"""The CPU shuffle's two hot loops: where each row of a window goes, and writing it there.

A shuffle has to decide which rows train together; the order of rows inside a batch changes no
gradient (a batch's loss is a sum over its rows). So the window's permutation decides each row's
*batch*, and inside its batch a row keeps its storage order (``batch_positions``). Every batch
holds the same rows as under the full permutation, but the writes become sequential: a row
group's rows, read in order, go to one contiguous run per batch, instead of to random places
all over a 60 MB window. That made placement 2.5x cheaper and the plan 10x cheaper
(``benchmarks/placement.py``, docs/benchmarks.md), which matters on a CPU where decoding and
shuffling share the cores.

Both loops are compiled with numba where it is installed (it is part of dlpipe's environment)
and run without the GIL; where it is not, or with ``DLPIPE_NO_NUMBA=1``, numpy versions give the
same results (tests compare the two).

Imports only numpy (and numba): the decoding worker processes use this too, and start fast.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

try:
    if os.environ.get("DLPIPE_NO_NUMBA") == "1":
        raise ImportError("DLPIPE_NO_NUMBA=1")
    import numba
except ImportError:
    numba = None


def _place_numpy(dst: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    dst[at] = values


def _place_loop(dst, at, values):  # compiled below; tested through place_columns
    for i in range(at.shape[0]):
        dst[at[i]] = values[i]


def _place_pair_loop(dst, dst2, at, values, values2):  # two columns per pass over ``at``: 20% faster
    for i in range(at.shape[0]):
        k = at[i]
        dst[k] = values[i]
        dst2[k] = values2[i]


def _place_block_numpy(dst: np.ndarray, at: np.ndarray, block: np.ndarray) -> None:
    dst[:, at] = block


def _place_block_loop(dst, at, block):  # compiled below: one call for a whole block of rows
    for j in range(block.shape[0]):
        for i in range(at.shape[0]):
            dst[j, at[i]] = block[j, i]


def _batch_positions_numpy(perm: np.ndarray, batch: int) -> np.ndarray:
    n = perm.shape[0]
    batch_of = np.empty(n, np.int16 if n // batch < 2 ** 15 else np.int32)  # int16: a radix sort, 3x faster
    batch_of[perm] = np.arange(n) // batch  # the batch each source row lands in
    by_batch = np.argsort(batch_of, kind="stable")  # source rows by batch, in storage order within
    at = np.empty(n, np.int32)
    at[by_batch] = np.arange(n, dtype=np.int32)
    return at


def _batch_positions_loop(perm, batch):  # compiled below; tested against the numpy version
    n = perm.shape[0]
    batch_of = np.empty(n, np.int32)
    for i in range(n):
        batch_of[perm[i]] = i // batch
    cursor = np.arange(0, n + batch, batch).astype(np.int32)  # next free position in each batch
    at = np.empty(n, np.int32)
    for s in range(n):
        k = batch_of[s]
        at[s] = cursor[k]
        cursor[k] += 1
    return at


def _compile(fn):
    try:  # the compiled code is cached next to this file, or in ~/.cache when that is read-only
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # nowhere writable to cache it: compile in each process (about 0.3 s)
        return numba.njit(nogil=True)(fn)


if numba is not None:
    _place, _place_pair = _compile(_place_loop), _compile(_place_pair_loop)
    _place_block, _batch_positions = _compile(_place_block_loop), _compile(_batch_positions_loop)
else:
    _place, _place_pair = _place_numpy, None
    _place_block, _batch_positions = _place_block_numpy, _batch_positions_numpy

COMPILED = numba is not None


def batch_positions(perm: np.ndarray, batch: int) -> np.ndarray:
    """Where each row of a window goes (int32, indexed by source row), given the window's
    permutation (position ``i`` would take source row ``perm[i]``): into the same batch of
    ``batch`` positions as under ``perm``, and inside that batch in source order. A final
    partial batch, and the rows a window carries on (positions past the last whole batch),
    are one more group, also kept in source order."""
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    return _batch_positions(np.ascontiguousarray(perm, np.int64), int(batch))


def window_order(perm: np.ndarray, batch: int) -> np.ndarray:
    """The inverse of ``batch_positions``: the source row at each position (int64, for gathers)."""
    at = batch_positions(perm, batch)
    order = np.empty(len(at), np.int64)
    order[at] = np.arange(len(at))
    return order


def place_columns(buf: np.ndarray, columns: Sequence[np.ndarray], at: slice | np.ndarray) -> None:
    """``buf[j, at] = columns[j]`` for every column ``j``: row ``i`` of a segment goes to
    position ``at[i]`` (an int32 array from ``batch_positions``), or to a slice of positions in
    storage order. Values are cast to the buffer's dtype."""
    if isinstance(at, slice):
        for j, values in enumerate(columns):
            buf[j, at] = values
        return
    first = 0
    if _place_pair is not None:
        first = len(columns) - len(columns) % 2
        for j in range(0, first, 2):
            _place_pair(buf[j], buf[j + 1], at, columns[j], columns[j + 1])
    for j in range(first, len(columns)):
        _place(buf[j], at, columns[j])


def place_block(buf: np.ndarray, block: np.ndarray, at: slice | np.ndarray) -> None:
    """``buf[:, at] = block`` for a ``[width, rows]`` block (the rows a window carries into the
    next): one call that holds the GIL only to start, however many columns there are, since in
    process mode it runs beside the training loop."""
    if isinstance(at, slice):
        buf[:, at] = block
    else:
        _place_block(buf, at, block)
