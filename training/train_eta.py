"""Horovod entry point: train the ETA regressor on a committed Petastorm dataset.

Run by ``horovodrun -np N ... python -m training.train_eta --spec SPEC.json``. Every rank streams
its own shard through ``training.loader.ShardLoader`` (to its GPU when there is one); the loop
itself (shards, checkpoints, resume, elastic membership, per-rank timings) is
``training.horovod_loop``. The model is an MLP on normalized features with a smooth-L1 loss;
it is saved as safetensors with its normalization (``training.model.EtaModel``).
"""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

from training.config import TrainConfig
from training.horovod_loop import Trainer, main


def _normalization(stats: dict, features: list[str], label: str, device) -> tuple:
    """Feature and label mean/std from the dataset manifest (computed by Spark over the whole
    training split when it was committed): no extra pass over the data, same on every rank."""
    import torch

    def col(name: str) -> tuple[float, float]:
        s = stats[name]
        return float(s["mean"]), max(float(s["std"] or 0.0), 1e-6)

    x = torch.tensor([col(c) for c in features], dtype=torch.float32, device=device)
    y_mean, y_std = col(label)
    return x[:, 0].contiguous(), x[:, 1].contiguous(), y_mean, y_std


class EtaTrainer(Trainer):
    """MLP regressor of delivery minutes from the ETA features."""

    config_model = TrainConfig

    def build_net(self):
        from training.model import build_mlp

        self.features, self.label = self.spec["features"], self.spec["label"]
        self.x_mean, self.x_std, self.y_mean, self.y_std = _normalization(
            self.spec["stats"], self.features, self.label, self.device)
        return build_mlp(len(self.features), self.cfg.hidden)

    def loader(self, split: str, *, batch_size: int, shuffle: bool = True):
        from training.loader import ShardLoader

        # Only the training passes (shuffled), the hot path, get decoding processes; evaluation
        # reads with threads rather than start another set of processes per rank.
        return ShardLoader(self.spec[f"{split}_url"], self.features, self.label, rank=self.rank,
                           size=self.size, seed=self.cfg.seed, device=self.device, batch_size=batch_size,
                           shuffle=shuffle, workers=min(8, self.cpus),
                           processes=self.cfg.decode_in == "processes" and shuffle,
                           # kept only where it pays: keeping makes the first epoch 1.7x to 2.7x
                           # slower and later ones 3.4x to 3.8x faster, even from the fourth epoch
                           # (docs/benchmarks.md); evaluation reads once
                           cache_bytes=None if shuffle and self.cfg.epochs >= 4 else 0)

    def loss(self, xb, yb):
        import torch

        pred = self.net((xb - self.x_mean) / self.x_std).squeeze(-1)
        return torch.nn.functional.smooth_l1_loss(pred, (yb - self.y_mean) / self.y_std)

    def model(self):
        from training.model import EtaModel

        return EtaModel(self.net, self.x_mean, self.x_std, self.y_mean, self.y_std, self.features)

    def errors(self, split: str) -> tuple[float, float, float]:
        """Summed |error| of the model and of the mean baseline, and rows, over all ranks."""
        import torch

        model = self.model()
        err = base = torch.zeros((), dtype=torch.float64, device=self.device)
        rows = 0
        with closing(self.loader(split, batch_size=8192, shuffle=False).epoch(0)) as batches:
            for xb, yb in batches:
                err = err + (model.predict(xb) - yb).abs().double().sum()
                base = base + (yb.double() - self.y_mean).abs().sum()
                rows += len(yb)
        return self.total(err.item()), self.total(base.item()), self.total(rows)

    def final_metrics(self) -> dict:
        tr_err, _, tr_rows = self.errors("train")
        va_err, va_base, va_rows = self.errors("validation")
        return {
            "train_mae": tr_err / tr_rows,
            "val_mae": va_err / va_rows if va_rows else float("nan"),
            # the naive baseline: always predict the training mean
            "baseline_mae": va_base / va_rows if va_rows else float("nan"),
        }

    def save(self, out: Path) -> None:
        from training.model import EtaModel

        EtaModel(self.net.cpu(), self.x_mean.cpu(), self.x_std.cpu(), self.y_mean, self.y_std,
                 self.features).save(out, self.cfg.hidden)


if __name__ == "__main__":
    sys.exit(main(EtaTrainer))
