"""Evaluate an ETA model on a split of a committed dataset: overall MAE and MAE per slice.

Slices are the ones an ETA team watches: each city, and buckets of the hour of day (the hour is
recovered from the hour_sin/hour_cos features). The model gate compares these between the
candidate and the model in production, on the same rows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dlpipe import commit
from dlpipe.demo_data import CITIES

HOUR_BUCKETS = [(0, 6, "night"), (6, 11, "morning"), (11, 14, "lunch"), (14, 17, "afternoon"),
                (17, 21, "dinner"), (21, 24, "late")]


def split_table(dataset: dict, split: str, columns: list[str]):
    import pyarrow.parquet as pq

    root = commit.location(dataset) / split
    paths = [p for p in commit.files(dataset, ".parquet") if p.parent == root]
    return pq.ParquetDataset(paths).read(columns=columns)


def slice_summary(loss: np.ndarray, mask: np.ndarray) -> dict:
    """``{"value", "rows", "stderr"}`` of the per-row ``loss`` over the rows in ``mask``: its mean,
    and the mean's standard error, which the model gate uses to tell a bad slice from a small one."""
    rows = int(mask.sum())
    part = loss[mask]
    stderr = float(part.std(ddof=1) / math.sqrt(rows)) if rows > 1 else None
    return {"value": float(part.mean()) if rows else None, "rows": rows, "stderr": stderr}


def hour_of_day(hour_sin: np.ndarray, hour_cos: np.ndarray) -> np.ndarray:
    return (np.arctan2(hour_sin, hour_cos) * 24 / (2 * math.pi)) % 24


def evaluate(model_dir: Path, dataset: dict, split: str = "validation") -> dict:
    """``{"metric": "mae", "value", "rows", "slices": {"city=berlin": {"value", "rows", "stderr"}, ...}}``:
    the shape every evaluator returns (lower is better), which the model gate judges."""
    import torch

    from training.model import EtaModel

    model = EtaModel.load(Path(model_dir))
    label = dataset["summary"]["label"]
    table = split_table(dataset, split, list(dict.fromkeys(model.features + [label, "city_code"])))
    x = np.stack([table.column(c).to_numpy().astype(np.float32) for c in model.features], axis=1)
    y = table.column(label).to_numpy().astype(np.float64)
    err = np.abs(model.predict(torch.from_numpy(x)).double().numpy() - y)
    cities = sorted(CITIES)
    hours = hour_of_day(table.column("hour_sin").to_numpy(), table.column("hour_cos").to_numpy())
    masks = {f"city={name}": table.column("city_code").to_numpy() == i for i, name in enumerate(cities)}
    masks.update({f"hour={name}": (hours >= lo) & (hours < hi) for lo, hi, name in HOUR_BUCKETS})
    slices = {k: slice_summary(err, m) for k, m in masks.items()}
    return {"split": split, "metric": "mae", "label": "MAE", "rows": int(len(y)),
            "value": float(err.mean()) if len(y) else None, "slices": slices}
