"""training.scatter: the compiled scatter loop writes exactly what numpy's two passes write."""

from __future__ import annotations

import numpy as np
import pytest

from training import scatter


def test_numba_is_in_the_environment():
    """dlpipe's environment installs numba, so the CPU shuffle runs the compiled loop."""
    assert scatter.COMPILED


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_])
def test_compiled_and_numpy_place_the_same_values(dtype):
    rng = np.random.default_rng(3)
    rows, n = 1000, 2600
    columns = [(rng.standard_normal(rows) * 100).astype(dtype) for _ in range(4)]
    columns[0].flags.writeable = False  # Arrow's zero-copy arrays are read-only
    pos = np.sort(rng.choice(n, rows, replace=False)).astype(np.int32)
    src = rng.permutation(rows).astype(np.int32)
    got = np.full((4, n), -1.0, np.float32)
    scatter.place_columns(got, columns, pos, src)
    want = np.full((4, n), -1.0, np.float32)
    for j, values in enumerate(columns):
        scatter._place_numpy(want[j], pos, src, values)
    np.testing.assert_array_equal(got, want)
    untouched = np.setdiff1d(np.arange(n), pos)
    assert (got[:, untouched] == -1).all()


def test_storage_order_is_a_plain_copy():
    buf = np.zeros((2, 10), np.float32)
    scatter.place_columns(buf, [np.arange(4, dtype=np.int32), np.ones(4)], slice(3, 7), None)
    np.testing.assert_array_equal(buf[0], [0, 0, 0, 0, 1, 2, 3, 0, 0, 0])
    np.testing.assert_array_equal(buf[1], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])

