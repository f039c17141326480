"""training.scatter: the compiled loops give exactly what their numpy versions give, the plan
keeps every batch of the window's permutation, only reordered inside, and the draw is a
uniform, reproducible shuffle."""

from __future__ import annotations

import os

import numpy as np
import pytest

from training import scatter

# numba turned off on purpose: the numpy versions run, and the tests of the compiled loops have nothing to test
needs_numba = pytest.mark.skipif(os.environ.get("DLPIPE_NO_NUMBA") == "1", reason="DLPIPE_NO_NUMBA=1")


@needs_numba
def test_numba_is_in_the_environment():
    """dlpipe's environment installs numba, so the CPU shuffle runs the compiled loops."""
    assert scatter.COMPILED


@needs_numba
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
    labels = np.empty(n, np.int64)
    labels[perm] = np.arange(n) // batch
    np.testing.assert_array_equal(at, scatter._positions_numpy(labels, batch))
    order = scatter.window_order(at)
    np.testing.assert_array_equal(at[order], np.arange(n))
    for a in range(0, n, batch):  # each batch: the permutation's rows, ascending
        np.testing.assert_array_equal(order[a:a + batch], np.sort(perm[a:a + batch]))


@pytest.mark.parametrize("n, batch", [(1000, 128), (5, 8), (1, 4), (0, 4), (65536 * 4 + 300, 8192), (40000, 1)])
def test_drawn_positions_fill_every_batch_in_source_order(n, batch):
    at = scatter.draw_positions(np.random.default_rng([3, n]), n, batch)
    assert at.dtype == np.int32 and sorted(at.tolist()) == list(range(n))
    order = scatter.window_order(at)
    for a in range(0, n, batch):  # inside a batch, its source rows ascend
        assert np.all(np.diff(order[a:a + batch]) > 0)
    again = scatter.draw_positions(np.random.default_rng([3, n]), n, batch)
    np.testing.assert_array_equal(at, again)  # fixed by the generator's state


@pytest.mark.parametrize("n, per, dtype", [(1, 1, np.int64), (2, 1, np.int64), (9, 1, np.int16),
                                           (1000, 1, np.int32), (65536 * 4 + 300, 8192, np.int16)])
def test_the_compiled_shuffle_is_the_numpy_shuffle(n, per, dtype):
    """Items ``0..n-1`` (or batch labels, ``per`` rows each), shuffled by both from the same words."""
    words = np.random.default_rng(n).bit_generator.random_raw(n // 2)
    items = (np.arange(n) // per).astype(dtype)
    a, b = items.copy(), items.copy()
    scatter._fisher_yates(a, words)
    scatter._fisher_yates_numpy(b, words)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == items.tolist() and (n < 3 or a.tolist() != items.tolist())


def test_a_rejected_draw_is_redrawn_the_same_way_in_both():
    """All-zero words: u = 0 gives m = 0, which Lemire's test rejects whenever 2**32 % (i + 1)
    is not 0, so almost every step redraws through splitmix64."""
    n = 50
    words = np.zeros(n // 2, np.uint64)
    a, b = np.arange(n), np.arange(n)
    scatter._fisher_yates(a, words)
    scatter._fisher_yates_numpy(b, words)
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == list(range(n)) and a.tolist() != list(range(n))


def test_every_permutation_is_equally_likely():
    """All 120 orders of 5 items, 60,000 draws, each about equally often (chi-square). Sattolo's
    off-by-one reaches only 24 of the orders, a skipped last step 60; a draw that favours some
    ``j`` shows in the chi-square."""
    rng = np.random.default_rng(2024)
    counts: dict[tuple, int] = {}
    for _ in range(60_000):
        key = tuple(scatter.permutation(rng, 5).tolist())
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 120
    expected = 60_000 / 120
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 180  # 119 degrees of freedom: the 99.9th percentile is 172.4 (this seed: 93)


def test_the_stream_is_pinned():
    """The draws are defined on the bit generator's raw words, whose stream numpy guarantees
    across releases (PCG64's docstring): a change here that moves the stream shows in this
    test, so that resumed runs keep their epochs."""
    assert scatter.permutation(np.random.default_rng(0), 10).tolist() == PINNED_PERMUTATION
    at = scatter.draw_positions(np.random.default_rng(0), 12, 5)
    assert at.tolist() == PINNED_POSITIONS


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch=0"):
        scatter.batch_positions(np.arange(3), 0)


PINNED_PERMUTATION = [8, 4, 9, 5, 1, 0, 3, 2, 7, 6]
PINNED_POSITIONS = [5, 0, 6, 1, 7, 10, 11, 2, 3, 4, 8, 9]
