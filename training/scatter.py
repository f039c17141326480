"""Write one row group's columns to their places in a window buffer: the CPU shuffle's hot loop.

In a shuffled window, row ``src[i]`` of a row group goes to position ``pos[i]`` (see
``ShardLoader._plan``). numpy does this in two passes per column, a gather into a temporary
(``values[src]``) and a scatter of it (``buf[j, pos] = ...``), at about 5 ns per value; that made
shuffling cost as much as decoding. A compiled loop does both in one pass over int32 indices,
about 2x faster (docs/benchmarks.md), and runs without the GIL. numba compiles it where it is
installed (it is part of dlpipe's environment); where it is not, or with ``DLPIPE_NO_NUMBA=1``,
the numpy version runs and gives the same result (tests compare the two).

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


def _place_numpy(dst: np.ndarray, pos: np.ndarray, src: np.ndarray, values: np.ndarray) -> None:
    dst[pos] = values[src]


def _place_loop(dst, pos, src, values):  # compiled below; tested through place_columns
    for i in range(pos.shape[0]):
        dst[pos[i]] = values[src[i]]


if numba is not None:
    try:  # the compiled code is cached next to this file, or in ~/.cache when that is read-only
        _place_compiled = numba.njit(nogil=True, cache=True)(_place_loop)
    except RuntimeError:  # nowhere writable to cache it: compile in each process (about 0.3 s)
        _place_compiled = numba.njit(nogil=True)(_place_loop)
    _place = _place_compiled
else:
    _place = _place_numpy

COMPILED = numba is not None


def place_columns(buf: np.ndarray, columns: Sequence[np.ndarray], at: slice | np.ndarray,
                  src: np.ndarray | None) -> None:
    """``buf[j, at] = columns[j]`` in storage order (``src`` None, ``at`` a slice), else
    ``buf[j, at[i]] = columns[j][src[i]]`` for every column ``j``. ``at`` and ``src`` should be
    int32 (what the plan and the decode slots hold); values are cast to the buffer's dtype."""
    if src is None:
        for j, values in enumerate(columns):
            buf[j, at] = values
        return
    for j, values in enumerate(columns):
        _place(buf[j], at, src, values)
