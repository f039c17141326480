"""Non-tabular data: scikit-learn's digits images through a Petastorm ndarray field, bit-exact."""

from __future__ import annotations

import numpy as np
import pytest

from dlpipe.datasets import open_reader
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import local_spark_submit
from feature_jobs.stages import DigitsConfig, materialize_digits

pytestmark = pytest.mark.integration


def test_digits_images_round_trip_bit_exact():
    from sklearn.datasets import load_digits

    ds = materialize_digits(config=DigitsConfig(), run=RunContext(), submit=local_spark_submit())
    rows = ds.manifest["summary"]["rows"]
    assert rows["train"] + rows["validation"] == 1797 and 250 < rows["validation"] < 470
    digits = load_digits()
    seen = set()
    for split in ("train", "validation"):
        with open_reader(ds.id, split, batch=False, num_epochs=1, shuffle_row_groups=False) as reader:
            for row in reader:
                assert row.image.dtype == np.float64 and row.image.shape == (8, 8)
                assert np.array_equal(row.image, digits.images[row.image_id])
                assert row.image.tobytes() == digits.images[row.image_id].tobytes()  # bit for bit
                assert row.label == digits.target[row.image_id]
                seen.add(int(row.image_id))
    assert seen == set(range(1797))  # every image once, in exactly one split
    again = materialize_digits(config=DigitsConfig(), run=RunContext(), submit=local_spark_submit())
    assert again.skipped and again.id == ds.id
