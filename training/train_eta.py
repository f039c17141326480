"""Horovod entry point: train the ETA regressor on a committed Petastorm dataset.

Run by ``horovodrun -np N ... python -m training.train_eta --spec SPEC.json``. Every rank streams
its own shard through ``training.loader.ShardLoader`` (to its GPU when there is one); gradients
are averaged by ``hvd.DistributedOptimizer``; all ranks take the same number of steps per epoch
(the smallest shard decides) so no rank waits in a collective for a peer that has finished.
Rank 0 writes a sealed checkpoint per epoch, the model (safetensors) and ``metrics.json``, which
records each rank's time waiting for data versus computing. With ``"elastic": true`` in the spec
(horovodrun ``--min-np``/``--max-np``), a job that loses a rank goes on with the survivors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import closing
from pathlib import Path


def _log(rank: int, msg: str) -> None:
    print(f"[train rank {rank}] {msg}", flush=True)


def _device(local_rank: int):
    """A GPU per local rank when CUDA is there (NCCL then carries the allreduce), else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


class Trainer:
    """One rank's view of the job. ``bind()`` (re)reads the world: rank, size, this rank's shard,
    steps per epoch and the learning rate. Static jobs bind once; elastic jobs bind again after
    every membership change, since the survivors re-divide the row groups among themselves."""

    def __init__(self, spec: dict, hvd) -> None:
        import torch

        from training.config import TrainConfig
        from training.model import build_mlp

        self.spec, self.hvd = spec, hvd
        self.cfg = cfg = TrainConfig(**spec["train"])
        self.features, self.label = spec["features"], spec["label"]
        self.device = _device(hvd.local_rank())
        self.cpus = max(1, (os.cpu_count() or 1) // hvd.local_size())
        torch.set_num_threads(self.cpus)
        torch.manual_seed(cfg.seed)
        self.x_mean, self.x_std, self.y_mean, self.y_std = _normalization(
            spec["stats"], self.features, self.label, self.device)
        self.net = build_mlp(len(self.features), cfg.hidden).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        self.ckpt_dir = Path(spec["checkpoint_dir"])
        self.samples, self.earlier_wait_s, self.train = 0, 0.0, None

    def loader(self, split: str, **kw):
        from training.loader import ShardLoader

        return ShardLoader(self.spec[f"{split}_url"], self.features, self.label, rank=self.rank,
                           size=self.size, seed=self.cfg.seed, device=self.device,
                           workers=min(8, self.cpus), **kw)

    def total(self, v: float) -> float:
        import torch

        return float(self.hvd.allreduce(torch.tensor(float(v), dtype=torch.float64), op=self.hvd.Sum).item())

    def bind(self) -> None:
        import torch

        hvd = self.hvd
        if self.train is not None:  # the loader of the previous world
            self.earlier_wait_s += self.train.wait_s
        self.rank, self.size = hvd.rank(), hvd.size()
        self.train = self.loader("train", batch_size=self.cfg.batch_size)
        _log(self.rank, f"shard: {self.train.num_rows} training rows in {len(self.train.groups)} of "
                        f"{self.train.total_row_groups} row groups, {self.train.num_batches()} batches of "
                        f"{self.cfg.batch_size}, world size {self.size}, on {self.device}")
        # Row counts come from the Parquet footers before anything is read; the loader then
        # checks each row group against its footer, so a partial read fails instead of training
        # on less.
        self.rows = {"train": int(self.total(self.train.num_rows)),
                     "validation": int(self.total(self.loader("validation", batch_size=8192).num_rows))}
        if self.rows != self.spec["expected_rows"]:
            raise SystemExit(f"the ranks found {self.rows} rows, the dataset's manifest commits "
                             f"{self.spec['expected_rows']}: the dataset changed after it was committed")
        if self.rows["train"] == 0:
            raise SystemExit("training split is empty on every rank: nothing to train on")
        self.steps = int(hvd.allreduce(torch.tensor(self.train.num_batches()), op=hvd.Min).item())
        if self.steps == 0:
            raise SystemExit(f"rank {self.rank} has no training rows: the dataset has "
                             f"{self.train.total_row_groups} row groups for {self.size} ranks; write at "
                             f"least {self.size} files per split")
        for group in self.opt.param_groups:  # the rate scales with the world (effective batch)
            group["lr"] = self.cfg.learning_rate * self.size
        (self.ckpt_dir / f"rank-{self.rank}.pid").write_text(str(os.getpid()))  # lets tests find ranks

    @property
    def wait_s(self) -> float:
        """Seconds this rank has spent blocked on training data, across world changes."""
        return self.earlier_wait_s + self.train.wait_s

    def resume(self) -> int:
        """On rank 0: load the newest checkpoint that verifies; the epoch it completed (0: none)."""
        from training import checkpoint

        if self.rank != 0:
            return 0
        found = checkpoint.latest_valid(self.ckpt_dir)
        if not found:
            return 0
        epoch, path = found
        state = checkpoint.load(path)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        _log(self.rank, f"resuming from {path.name}: {epoch} of {self.cfg.epochs} epochs done")
        return epoch

    def run_epoch(self, epoch: int) -> None:
        """One epoch of ``steps`` steps on every rank, then rank 0 seals checkpoint ``epoch + 1``."""
        import torch

        from training import checkpoint

        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        with closing(self.train.epoch(epoch)) as batches:
            for _, (xb, yb) in zip(range(self.steps), batches):
                self.opt.zero_grad()
                pred = self.net((xb - self.x_mean) / self.x_std).squeeze(-1)
                loss = torch.nn.functional.smooth_l1_loss(pred, (yb - self.y_mean) / self.y_std)
                loss.backward()
                self.opt.step()
                loss_sum += loss.detach()
                self.samples += len(xb)
        avg = self.hvd.allreduce((loss_sum / self.steps).cpu(), op=self.hvd.Average).item()
        if self.rank == 0:
            _log(0, f"epoch {epoch + 1}/{self.cfg.epochs}: loss {avg:.4f} ({self.steps} steps/rank, "
                    f"world size {self.size}, {self.wait_s:.2f}s waiting for data so far)")
            path = checkpoint.save(self.ckpt_dir, epoch + 1, {"model": self.net.state_dict(),
                                                              "optimizer": self.opt.state_dict(),
                                                              "epoch": epoch + 1})
            _log(0, f"checkpoint {path.name} sealed")

    def errors(self, split: str, model) -> tuple[float, float, float]:
        """Summed |error| of the model and of the mean baseline, and rows, over all ranks."""
        import torch

        err = base = torch.zeros((), dtype=torch.float64, device=self.device)
        rows = 0
        with closing(self.loader(split, batch_size=8192, shuffle=False).epoch(0)) as batches:
            for xb, yb in batches:
                err = err + (model.predict(xb) - yb).abs().double().sum()
                base = base + (yb.double() - self.y_mean).abs().sum()
                rows += len(yb)
        return self.total(err.item()), self.total(base.item()), self.total(rows)


def train_static(t: Trainer) -> dict:
    """Fixed membership: every rank gets rank 0's resumed state by broadcast, then trains."""
    import torch

    hvd = t.hvd
    t.bind()
    start = int(hvd.broadcast(torch.tensor(t.resume()), root_rank=0).item())
    hvd.broadcast_parameters(t.net.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(t.opt, root_rank=0)
    t.opt = hvd.DistributedOptimizer(t.opt, named_parameters=t.net.named_parameters())
    for epoch in range(start, t.cfg.epochs):
        t.run_epoch(epoch)
    return {"resumed_from_epoch": start, "elastic_resets": 0}


def train_elastic(t: Trainer) -> dict:
    """Elastic membership (horovodrun --min-np/--max-np): when a rank dies or hosts change,
    the survivors roll back to the last committed epoch, re-divide the shards among themselves
    and go on; the epoch that was interrupted is trained again, from its start."""
    hvd = t.hvd
    t.bind()
    start = t.resume()
    t.opt = hvd.DistributedOptimizer(t.opt, named_parameters=t.net.named_parameters())
    state = hvd.elastic.TorchState(model=t.net, optimizer=t.opt, epoch=start, start=start)
    resets = 0  # kept out of the state: a sync restores the state to its last commit

    def on_reset() -> None:
        nonlocal resets
        resets += 1
        t.bind()
        _log(t.rank, f"membership changed: world size is now {t.size}, continuing from epoch {state.epoch}")

    state.register_reset_callbacks([on_reset])

    @hvd.elastic.run
    def loop(state) -> None:
        while state.epoch < t.cfg.epochs:
            t.run_epoch(state.epoch)
            state.epoch += 1
            state.commit()  # the rollback point for the next failure

    loop(state)  # the first sync broadcasts rank 0's resumed state and epoch to every rank
    return {"resumed_from_epoch": state.start, "elastic_resets": resets}


def main(argv: list[str] | None = None) -> int:
    from dlpipe.spec import read_spec_from_argv

    spec = read_spec_from_argv(argv)
    import horovod.torch as hvd
    import torch

    from training.model import EtaModel

    hvd.init()
    t = Trainer(spec, hvd)
    t0 = time.perf_counter()
    progress = train_elastic(t) if spec.get("elastic") else train_static(t)
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    total_samples = t.total(t.samples)
    timing = {"rank": t.rank, "data_wait_s": round(t.wait_s, 3), "compute_s": round(max(0.0, train_s - t.wait_s), 3)}

    model = EtaModel(t.net.eval(), t.x_mean, t.x_std, t.y_mean, t.y_std, t.features)
    tr_err, _, tr_rows = t.errors("train", model)
    va_err, va_base, va_rows = t.errors("validation", model)
    ranks = hvd.allgather_object(timing)
    metrics = {
        "train_mae": tr_err / tr_rows,
        "val_mae": va_err / va_rows if va_rows else float("nan"),
        # the naive baseline: always predict the training mean
        "baseline_mae": va_base / va_rows if va_rows else float("nan"),
        "train_rows": t.rows["train"],
        "val_rows": t.rows["validation"],
        "epochs": t.cfg.epochs,
        **progress,
        "world_size": t.size,
        "device": t.device.type,
        "allreduce": "NCCL" if t.device.type == "cuda" and hvd.nccl_built() else "Gloo",
        "train_seconds": round(train_s, 3),
        "samples_per_s": round(total_samples / train_s, 1) if train_s > 0 else None,
        # per rank: time blocked on the data loader versus everything else in the training loop
        "ranks": ranks,
        "data_wait_fraction": round(sum(r["data_wait_s"] for r in ranks) / max(1e-9, t.size * train_s), 4),
    }
    if t.rank == 0:
        out = Path(spec["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        EtaModel(t.net.cpu(), t.x_mean.cpu(), t.x_std.cpu(), t.y_mean, t.y_std, t.features).save(out, t.cfg.hidden)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _log(0, "metrics " + json.dumps(metrics, sort_keys=True))
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
