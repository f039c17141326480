"""The CPU shuffle's hot loops: drawing where each row of a window goes, and writing it there.

A shuffle has to decide which rows train together; the order of rows inside a batch changes no
gradient (a batch's loss is a sum over its rows). So the window's permutation decides each row's
*batch*, and inside its batch a row keeps its storage order (``batch_positions``). Every batch
holds the same rows as under the full permutation, but the writes become sequential: a row
group's rows, read in order, go to one contiguous run per batch, instead of to random places
all over a 60 MB window. That made placement 2.5x cheaper and the plan 10x cheaper
(``benchmarks/placement.py``, docs/benchmarks.md), which matters on a CPU where decoding and
shuffling share the cores.

The draw itself (``draw_positions``) shuffles the rows' batch labels with Fisher-Yates, fed by
the raw words of the epoch's numpy bit generator: batches drawn as a random permutation would
draw them, at a third of the cost or less, and reproducible across numpy releases
(``permutation``).

The loops are compiled with numba where it is installed (it is part of dlpipe's environment)
and run without the GIL; where it is not, or with ``DLPIPE_NO_NUMBA=1``, numpy versions give the
same results (tests compare the two), slower: the draw's swaps are then a Python loop, 50 to
60 ms for a window of 250,000 rows.

Imports only numpy (and numba, with its llvmlite): the decoding worker processes use this too,
and start fast.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

try:
    if os.environ.get("DLPIPE_NO_NUMBA") == "1":
        raise ImportError("DLPIPE_NO_NUMBA=1")
    import numba
except ImportError as e:
    numba = None
    WHY_NOT_COMPILED = str(e)  # why the numpy versions run: ShardLoader warns with it
else:
    WHY_NOT_COMPILED = None

# How far ahead (in elements) a placement loop asks for the destination's memory: 64 float32,
# four cache lines further along the same batch's run. A row group's rows land in one run per
# batch, 32 or more runs at once, more than the hardware prefetcher follows; without this a
# store waits for its line to come from memory. In place (decoded chunks hot in the cache, the
# window buffer not) it cuts placement's CPU time 1.9x to 2.1x; the placement still costs 1.7x
# to 2.2x a plain copy (``benchmarks/placement.py``, docs/benchmarks.md).
PREFETCH_AHEAD = 64


def _prefetch_nothing(array, index):  # the loops' stand-in where the prefetch cannot be built
    pass


def _prefetch_intrinsic():
    """``prefetch(array, index)`` inside compiled loops: LLVM's prefetch-for-write of the
    address of ``array[index]``, computed as an integer so that an index past the end is
    harmless (a prefetch never faults). None where this numba lacks the pieces it uses."""
    try:
        from llvmlite import ir
        from numba.core import cgutils, types
        from numba.extending import intrinsic
    except ImportError:
        return None

    @intrinsic
    def prefetch(typingctx, array, index):
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i64 = ir.IntType(64)
            index = builder.sext(args[1], i64) if args[1].type.width < 64 else args[1]
            size = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            address = builder.add(builder.ptrtoint(ary.data, i64), builder.mul(index, ir.Constant(i64, size)))
            ptr = builder.inttoptr(address, ir.PointerType(ir.IntType(8)))
            i32 = ir.IntType(32)
            name = "llvm.prefetch.p0" if str(ptr.type) == "ptr" else "llvm.prefetch.p0i8"  # opaque pointers or not
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                                name)
            builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # write, keep, data
            return context.get_dummy_value()

        return types.void(array, index), codegen

    return prefetch


if numba is None:
    prefetch = _prefetch_nothing  # the loops are not compiled: numpy versions run instead
else:
    prefetch = _prefetch_intrinsic() or numba.njit(inline="always")(_prefetch_nothing)


def _place_numpy(dst: np.ndarray, at: np.ndarray, values: np.ndarray) -> None:
    dst[at] = values


def _place_loop(dst, at, values):  # compiled below; tested through place_columns
    for i in range(at.shape[0]):
        k = at[i]
        prefetch(dst, k + PREFETCH_AHEAD)
        dst[k] = values[i]


def _place_pair_loop(dst, dst2, at, values, values2):  # two columns per pass over ``at``: 20% faster
    for i in range(at.shape[0]):
        k = at[i]
        prefetch(dst, k + PREFETCH_AHEAD)
        prefetch(dst2, k + PREFETCH_AHEAD)
        dst[k] = values[i]
        dst2[k] = values2[i]


def _place_block_numpy(dst: np.ndarray, at: np.ndarray, block: np.ndarray) -> None:
    dst[:, at] = block


def _place_block_loop(dst, at, block):  # compiled below: one call for a whole block of rows
    for j in range(block.shape[0]):
        row, values = dst[j], block[j]
        for i in range(at.shape[0]):
            k = at[i]
            prefetch(row, k + PREFETCH_AHEAD)
            row[k] = values[i]


def _label_dtype(n: int, batch: int) -> type:
    return np.int16 if n // batch < 2 ** 15 else np.int32  # int16: half the cache, and numpy's radix sort


def _batch_labels(n: int, batch: int) -> np.ndarray:
    """The labels a draw shuffles: ``batch`` zeros, then ``batch`` ones, ..., ``n`` in all."""
    return np.repeat(np.arange(-(-n // batch), dtype=_label_dtype(n, batch)), batch)[:n]


def _labels_numpy(perm: np.ndarray, batch: int, labels: np.ndarray) -> None:
    labels[perm] = np.arange(perm.shape[0]) // batch


def _labels_loop(perm, batch, labels):  # compiled below: the batch each source row lands in
    for i in range(perm.shape[0]):
        labels[perm[i]] = i // batch


def _positions_numpy(labels: np.ndarray, batch: int) -> np.ndarray:
    n = labels.shape[0]
    by_batch = np.argsort(labels, kind="stable")  # source rows by batch, in storage order within
    at = np.empty(n, np.int32)
    at[by_batch] = np.arange(n, dtype=np.int32)
    return at


def _positions_loop(labels, batch):  # compiled below; tested against the numpy version
    n = labels.shape[0]
    cursor = np.arange(0, n + batch, batch).astype(np.int32)  # next free position in each batch
    at = np.empty(n, np.int32)
    for s in range(n):
        k = labels[s]
        at[s] = cursor[k]
        cursor[k] += 1
    return at


# Drawing a shuffle. Fisher-Yates, from the last element down: step k (0, 1, ...) swaps
# element i = n - 1 - k with element j, uniform in 0..i. Step k takes the 32-bit value u_k:
# the high half of raw word k // 2 for even k, its low half for odd k. j is Lemire's
# (u * (i + 1)) >> 32, exactly uniform because a u whose low product half falls below
# (2**32 - (i + 1)) % (i + 1) is rejected (chance (i + 1) / 2**32) and replaced by the high half
# of s = splitmix64(s + GOLDEN), s starting at u, until one is accepted.
_M32, _S32, _TWO32 = np.uint64(0xFFFFFFFF), np.uint64(32), np.uint64(1 << 32)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(s):  # splitmix64's output function, uint64 to uint64
    s = (s ^ (s >> np.uint64(30))) * _MIX1
    s = (s ^ (s >> np.uint64(27))) * _MIX2
    return s ^ (s >> np.uint64(31))


def _fisher_yates_loop(a, words):  # compiled below; tested against the numpy version
    n = a.shape[0]
    for k in range(n - 1):
        w = words[k >> 1]
        u = (w >> _S32) if (k & 1) == 0 else (w & _M32)
        bound = np.uint64(n - k)  # i + 1
        m = u * bound
        if (m & _M32) < bound:  # maybe rejected: only then is the exact test's division paid
            t = (_TWO32 - bound) % bound
            s = u
            while (m & _M32) < t:
                s = _mix(s + _GOLDEN)
                m = (s >> _S32) * bound
        i, j = n - 1 - k, np.int64(m >> _S32)
        a[i], a[j] = a[j], a[i]


def _fisher_yates_numpy(a: np.ndarray, words: np.ndarray) -> None:
    """``_fisher_yates_loop`` for numpy alone: the draws vectorized, the swaps a list loop
    (about 200 ns a row here)."""
    n = a.shape[0]
    if n < 2:
        return
    k = np.arange(n - 1)
    w = words[k >> 1]
    u = np.where((k & 1) == 0, w >> _S32, w & _M32)
    bound = (n - k).astype(np.uint64)
    m = u * bound
    with np.errstate(over="ignore"):  # splitmix64 multiplies modulo 2**64
        for r in np.flatnonzero((m & _M32) < bound):  # rare: about n**2 / 2**33 of them
            t, s = (_TWO32 - bound[r]) % bound[r], u[r]
            while (m[r] & _M32) < t:
                s = _splitmix(s + _GOLDEN)
                m[r] = (s >> _S32) * bound[r]
    values = a.tolist()
    for step, j in enumerate((m >> _S32).tolist()):
        i = n - 1 - step
        values[i], values[j] = values[j], values[i]
    a[:] = values


def _compile(fn):
    try:  # the compiled code is cached next to this file, or in ~/.cache when that is read-only
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # nowhere writable to cache it: compile in each process (about 0.3 s)
        return numba.njit(nogil=True)(fn)


if numba is not None:
    _place, _place_pair = _compile(_place_loop), _compile(_place_pair_loop)
    _place_block, _positions = _compile(_place_block_loop), _compile(_positions_loop)
    _labels = _compile(_labels_loop)
    _mix = numba.njit(inline="always")(_splitmix)  # inlined into the loop compiled next
    _fisher_yates = _compile(_fisher_yates_loop)
else:
    _place, _place_pair = _place_numpy, None
    _place_block, _positions, _fisher_yates = _place_block_numpy, _positions_numpy, _fisher_yates_numpy
    _labels, _mix = _labels_numpy, _splitmix

COMPILED = numba is not None


def _check_batch(batch: int) -> int:
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    return int(batch)


def batch_positions(perm: np.ndarray, batch: int) -> np.ndarray:
    """Where each row of a window goes (int32, indexed by source row), given the window's
    permutation (position ``i`` would take source row ``perm[i]``): into the same batch of
    ``batch`` positions as under ``perm``, and inside that batch in source order. A final
    partial batch, and the rows a window carries on (positions past the last whole batch),
    are one more group, also kept in source order."""
    batch = _check_batch(batch)
    perm = np.ascontiguousarray(perm, np.int64)
    labels = np.empty(len(perm), _label_dtype(len(perm), batch))
    _labels(perm, batch, labels)
    return _positions(labels, batch)


def draw_positions(rng: np.random.Generator, n: int, batch: int) -> np.ndarray:
    """``batch_positions`` of a uniformly random permutation of ``n`` rows, drawn from ``rng``:
    the rows' batch labels (``batch`` rows each) are shuffled directly, which is the same draw
    without the permutation. Reproducible across numpy releases (see ``permutation``)."""
    batch = _check_batch(batch)
    labels = _batch_labels(n, batch)
    _fisher_yates(labels, _raw_words(rng, n))
    return _positions(labels, batch)


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniformly random permutation of ``0..n-1`` (int64) drawn from ``rng``'s raw bits.

    Why not ``rng.permutation``: numpy guarantees a bit generator's stream for a given seed from
    release to release (PCG64's docstring, numpy.random's compatibility policy), but lets
    ``Generator`` methods change what they make of it, and a run resumed after an upgrade must
    see the epochs it would have seen."""
    a = np.arange(n, dtype=np.int64)
    _fisher_yates(a, _raw_words(rng, n))
    return a


def _raw_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """The 64-bit words a shuffle of ``n`` takes: one per two Fisher-Yates steps."""
    return rng.bit_generator.random_raw(n // 2)


def window_order(at: np.ndarray) -> np.ndarray:
    """The inverse of positions ``at``: the source row at each position (int64, for gathers)."""
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
