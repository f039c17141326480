"""Horovod entry point: train the digits CNN classifier on a committed Petastorm image dataset.

Run by ``horovodrun -np N ... python -m training.train_digits --spec SPEC.json``. Each rank holds
its shard of the images in memory (``training.image_loader``); the loop, checkpoints, resume and
elastic membership are ``training.horovod_loop``'s. Metrics are error rates (lower is better, as
the model gate expects): the model's, and that of always answering the training split's most
frequent class.
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.config import DigitsTrainConfig
from training.horovod_loop import Trainer, main

CLASSES = 10
SCALE = 16.0  # scikit-learn's digits are grey levels 0..16


class DigitsTrainer(Trainer):
    config_model = DigitsTrainConfig

    def build_net(self):
        from training.digits_model import build_cnn

        self.side = int(self.spec["image_shape"][0])
        return build_cnn(self.side, self.cfg.channels, self.cfg.hidden, CLASSES)

    def loader(self, split: str, *, batch_size: int, shuffle: bool = True):
        from training.image_loader import ImageShardLoader

        return ImageShardLoader(self.spec[f"{split}_url"], self.spec["image"], self.spec["label"],
                                rank=self.rank, size=self.size, batch_size=batch_size, seed=self.cfg.seed,
                                shuffle=shuffle, scale=SCALE, device=self.device)

    def loss(self, xb, yb):
        import torch

        return torch.nn.functional.cross_entropy(self.net(xb), yb)

    def counts(self, split: str):
        """[classes, 2]: per true class, (rows, correct predictions), summed over all ranks."""
        import torch

        out = torch.zeros((CLASSES, 2), dtype=torch.float64)
        data = self.loader(split, batch_size=4096, shuffle=False)
        with torch.no_grad():
            for xb, yb in data.epoch(0):
                hit = (self.net(xb).argmax(dim=1) == yb).double().cpu()
                out[:, 0] += torch.bincount(yb.cpu(), minlength=CLASSES).double()
                out[:, 1] += torch.bincount(yb.cpu(), weights=hit, minlength=CLASSES)
        return self.hvd.allreduce(out, op=self.hvd.Sum)

    def final_metrics(self) -> dict:
        train, val = self.counts("train"), self.counts("validation")
        majority = int(train[:, 0].argmax())
        val_rows = float(val[:, 0].sum())
        error = lambda c: 1.0 - float(c[:, 1].sum()) / max(1.0, float(c[:, 0].sum()))  # noqa: E731
        return {
            "train_error": error(train),
            "val_error": error(val) if val_rows else float("nan"),
            "val_accuracy": 1.0 - error(val) if val_rows else float("nan"),
            # the naive baseline: always answer the most frequent training class
            "baseline_error": 1.0 - float(val[majority, 0]) / val_rows if val_rows else float("nan"),
        }

    def save(self, out: Path) -> None:
        from training.digits_model import DigitsModel

        DigitsModel(self.net.cpu(), side=self.side, scale=SCALE, channels=self.cfg.channels,
                    hidden=self.cfg.hidden, classes=CLASSES).save(out)


if __name__ == "__main__":
    sys.exit(main(DigitsTrainer))
