"""Evaluate a digits classifier on a split of a committed dataset: error rate, and per digit.

Returns the evaluator shape the model gate judges (see ``training.evaluate``): metric ``error``
(1 - accuracy, lower is better), with one slice per true digit, so a model that is fine on
average but has forgotten one class is caught.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.evaluate import slice_summary, split_table


def evaluate_digits(model_dir: Path, dataset: dict, split: str = "validation") -> dict:
    import torch

    from training.digits_model import DigitsModel
    from training.image_loader import decode_images

    model = DigitsModel.load(Path(model_dir))
    table = split_table(dataset, split, ["image", "label"])
    y = table.column("label").to_numpy().astype(np.int64)
    if len(y) == 0:
        return {"split": split, "metric": "error", "label": "error rate", "rows": 0, "value": None,
                "slices": {}}
    images = decode_images(table.column("image").to_pylist(), "image")
    wrong = (model.predict(torch.from_numpy(images)).numpy() != y).astype(np.float64)
    slices = {f"digit={d}": slice_summary(wrong, y == d) for d in range(model.classes)}
    return {"split": split, "metric": "error", "label": "error rate", "rows": int(len(y)),
            "value": float(wrong.mean()), "slices": slices}
