"""training.scatter: the compiled loops give exactly what their numpy versions give, and the
plan keeps every batch of the window's permutation, only reordered inside."""

from __future__ import annotations

import numpy as np
import pytest

from training import scatter


def test_numba_is_in_the_environment():
    """dlpipe's environment installs numba, so the CPU shuffle runs the compiled loops."""
    assert scatter.COMPILED


@pytest.mark.parametrize("loop", ["_place_loop", "_place_pair_loop", "_place_block_loop"])
def test_the_compiled_loops_prefetch_their_destination(loop):
    """Each placement loop asks for the destination ahead of its stores (compiled afresh here:
    numba shows no code of a cached function)."""
    import numba

    fn = numba.njit(nogil=True)(getattr(scatter, loop))
    at, values = np.arange(10, dtype=np.int32), np.ones(10, np.float32)
    if loop == "_place_block_loop":
        fn(np.zeros((2, 100), np.float32), at, np.ones((2, 10), np.float32))
    elif loop == "_place_pair_loop":
        fn(np.zeros(100, np.float32), np.zeros(100, np.float32), at, values, values)
    else:
        fn(np.zeros(100, np.float32), at, values)
    assert "@llvm.prefetch" in "\n".join(fn.inspect_llvm().values())


@pytest.mark.parametrize("dtype, width", [(np.float32, 4), (np.float32, 5), (np.float64, 3), (np.int32, 4),
                                          (np.int64, 1), (np.bool_, 2)])
def test_compiled_and_numpy_place_the_same_values(dtype, width):
    """Compiled, columns go two at a time, and an odd one alone; numpy, one at a time."""
    rng = np.random.default_rng(3)
    rows, n = 1000, 2600
    columns = [(rng.standard_normal(rows) * 100).astype(dtype) for _ in range(width)]
    columns[0].flags.writeable = False  # Arrow's zero-copy arrays are read-only
    columns[-1] = columns[-1].astype(np.float32)  # mixed dtypes within one call
    at = rng.choice(n, rows, replace=False).astype(np.int32)
    got = np.full((width, n), -1.0, np.float32)
    scatter.place_columns(got, columns, at)
    want = np.full((width, n), -1.0, np.float32)
    for j, values in enumerate(columns):
        scatter._place_numpy(want[j], at, values)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, at[5]], np.float32([c[5] for c in columns]))
    untouched = np.setdiff1d(np.arange(n), at)
    assert (got[:, untouched] == -1).all()


def test_a_carried_block_goes_to_its_positions():
    """The compiled block placement, from a strided view as the loader passes it."""
    rng = np.random.default_rng(5)
    window = rng.standard_normal((3, 40)).astype(np.float32)
    block = window[:, 31:]  # the carry: rows past the last whole batch, a strided view
    at = rng.choice(30, 9, replace=False).astype(np.int32)
    got = np.zeros((3, 30), np.float32)
    scatter.place_block(got, block, at)
    want = np.zeros((3, 30), np.float32)
    scatter._place_block_numpy(want, at, block)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[:, at[0]], window[:, 31])
    got = np.zeros((3, 30), np.float32)
    scatter.place_block(got, block, slice(2, 11))
    np.testing.assert_array_equal(got[:, 2:11], block)


def test_storage_order_is_a_plain_copy():
    buf = np.zeros((2, 10), np.float32)
    scatter.place_columns(buf, [np.arange(4, dtype=np.int32), np.ones(4)], slice(3, 7))
    np.testing.assert_array_equal(buf[0], [0, 0, 0, 0, 1, 2, 3, 0, 0, 0])
    np.testing.assert_array_equal(buf[1], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize("n, batch", [(1000, 128), (1024, 128), (5, 8), (7, 1), (65536 * 4 + 300, 8192),
                                      (40000, 1)])  # more batches than an int16 counts
def test_batches_keep_the_permutations_rows_in_window_order(n, batch):
    perm = np.random.default_rng(n).permutation(n)
    at = scatter.batch_positions(perm, batch)
    assert at.dtype == np.int32 and sorted(at.tolist()) == list(range(n))  # a permutation
    np.testing.assert_array_equal(at, scatter._batch_positions_numpy(perm, batch))
    order = scatter.window_order(perm, batch)
    np.testing.assert_array_equal(at[order], np.arange(n))
    for a in range(0, n, batch):  # each batch: the permutation's rows, ascending
        np.testing.assert_array_equal(order[a:a + batch], np.sort(perm[a:a + batch]))


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch=0"):
        scatter.batch_positions(np.arange(3), 0)
