"""The Horovod training loop every dlpipe model shares: shards, resume, checkpoints, elasticity.

A model's entry point (``training.train_eta``, ``training.train_digits``) subclasses
``Trainer`` with what is specific to it: the network, the loader of a split, the loss, the
metrics and the saved format, then calls ``main(ItsTrainer)``. Everything that makes a run safe
to retry and possible to audit lives here once:

- all ranks take the same number of steps per epoch (the smallest shard decides), so no rank
  waits in a collective for a peer that has finished;
- row counts are checked against the dataset's manifest before training starts;
- rank 0 writes a sealed checkpoint per epoch, and a retried task resumes from the newest one
  that verifies;
- with ``"elastic": true`` in the spec (horovodrun ``--min-np``/``--max-np``) a job that loses a
  rank goes on with the survivors;
- ``metrics.json`` records each rank's time waiting for data versus computing.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any


def epoch_coverage(shard_rows: list[int], steps: int, batch_size: int) -> tuple[int, str | None]:
    """(rows an epoch trains, a warning when under 90% of them): every rank takes ``steps``
    steps, the smallest shard's count, since an allreduce waits for every rank."""
    used, total = sum(min(steps * batch_size, rows) for rows in shard_rows), sum(shard_rows)
    if used >= 0.9 * total:
        return used, None
    return used, (f"WARNING: each epoch trains {used} of {total} rows ({used / total:.0%}): the ranks' shards "
                  f"hold {shard_rows} rows in whole row groups, and every rank takes the smallest shard's "
                  f"{steps} steps; write more, smaller row groups (dataset num_files, row_group_size_mb) "
                  f"or run fewer processes")


def log(rank: int, msg: str) -> None:
    print(f"[train rank {rank}] {msg}", flush=True)


def pick_device(local_rank: int):
    """A GPU per local rank when CUDA is there (NCCL then carries the allreduce), else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        # cuDNN may otherwise pick convolution algorithms whose sums differ from run to run: a
        # resumed or elastic run must train the weights an uninterrupted one does
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def close_loader(loader: Any) -> None:
    """Stop what a loader runs besides the training loop (``ShardLoader``'s decoding processes)
    now, rather than whenever the garbage collector finds it. Loaders that hold nothing to stop
    (``ImageShardLoader``) have no ``close()``."""
    close = getattr(loader, "close", None)
    if close is not None:
        close()


class Trainer:
    """One rank's view of the job. ``bind()`` (re)reads the world: rank, size, this rank's shard,
    steps per epoch and the learning rate. Static jobs bind once; elastic jobs bind again after
    every membership change, since the survivors re-divide the row groups among themselves.

    Subclasses set ``config_model`` and implement ``build_net``, ``loader``, ``loss``,
    ``final_metrics`` and ``save``.
    """

    config_model: Any = None  # the pydantic model of the spec's "train" section

    def __init__(self, spec: dict, hvd) -> None:
        import torch

        self.spec, self.hvd = spec, hvd
        self.cfg = cfg = self.config_model(**spec["train"])
        self.device = pick_device(hvd.local_rank())
        self.cpus = max(1, (os.cpu_count() or 1) // hvd.local_size())
        torch.set_num_threads(self.cpus)
        torch.manual_seed(cfg.seed)
        self.net = self.build_net().to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate)
        self.ckpt_dir = Path(spec["checkpoint_dir"])
        self.samples, self.earlier_wait_s, self.train = 0, 0.0, None
        # epoch -> world size it was trained at, carried through checkpoints (rank 0's): a model
        # resumed across attempts or elastic resets may have trained at several sizes
        self.world_sizes: dict[int, int] = {}

    # -- what a model defines ------------------------------------------------------------------

    def build_net(self):
        """The torch module, before it is moved to the device."""
        raise NotImplementedError

    def loader(self, split: str, *, batch_size: int, shuffle: bool = True):
        """This rank's shard of ``split``: ``num_rows``, ``groups``, ``total_row_groups``,
        ``num_batches()``, ``epoch(n)`` yielding ``(x, y)`` on the device, and ``wait_s``."""
        raise NotImplementedError

    def loss(self, xb, yb):
        """The training loss of one batch (a scalar tensor)."""
        raise NotImplementedError

    def final_metrics(self) -> dict:
        """Metrics of the trained model, totalled over all ranks (every rank calls this)."""
        raise NotImplementedError

    def save(self, out: Path) -> None:
        """Rank 0 writes the model in a safe format (no pickle) into ``out``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------

    def total(self, v: float) -> float:
        import torch

        return float(self.hvd.allreduce(torch.tensor(float(v), dtype=torch.float64), op=self.hvd.Sum).item())

    def bind(self) -> None:
        hvd = self.hvd
        if self.train is not None:  # the loader of the previous world: its shard is not ours now
            self.earlier_wait_s += self.train.wait_s
            close_loader(self.train)  # its decoding processes and their shared memory, now
            self.train = None
        self.rank, self.size = hvd.rank(), hvd.size()
        self.train = self.loader("train", batch_size=self.cfg.batch_size)
        log(self.rank, f"shard: {self.train.num_rows} training rows in {len(self.train.groups)} of "
                       f"{self.train.total_row_groups} row groups, {self.train.num_batches()} batches of "
                       f"{self.cfg.batch_size}, world size {self.size}, on {self.device}")
        # Row counts come from the Parquet footers before anything is read; the loader then
        # checks each row group against its footer, so a partial read fails instead of training
        # on less.
        validation = self.loader("validation", batch_size=8192)
        close_loader(validation)  # only its row count is needed here
        self.rows = {"train": int(self.total(self.train.num_rows)),
                     "validation": int(self.total(validation.num_rows))}
        if self.rows != self.spec["expected_rows"]:
            raise SystemExit(f"the ranks found {self.rows} rows, the dataset's manifest commits "
                             f"{self.spec['expected_rows']}: the dataset changed after it was committed")
        if self.rows["train"] == 0:
            raise SystemExit("training split is empty on every rank: nothing to train on")
        shards = hvd.allgather_object((self.train.num_batches(), self.train.num_rows))  # in rank order
        batches = [b for b, _ in shards]
        self.steps = min(batches)
        if self.steps == 0:
            empty = [r for r, n in enumerate(batches) if n == 0]
            raise SystemExit(f"ranks {empty} of {self.size} have no training rows: a rank reads whole row "
                             f"groups, and the training split has {self.train.total_row_groups}; write at "
                             f"least {self.size} non-empty row groups (dataset num_files) or run fewer processes")
        # every rank takes the smallest shard's step count (an allreduce waits for all): rows
        # beyond it are left out of each epoch (others each epoch when shuffled)
        self.rows_per_epoch, warning = epoch_coverage([rows for _, rows in shards], self.steps, self.cfg.batch_size)
        if self.rank == 0 and warning:
            log(0, warning)
        self.scale_learning_rate()
        (self.ckpt_dir / f"rank-{self.rank}.pid").write_text(str(os.getpid()))  # lets tests find ranks

    def scale_learning_rate(self) -> None:
        """The rate scales with the world (the effective batch): set again after every change of
        world and after a checkpoint is loaded, which brings back the rate of the world that
        saved it."""
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.learning_rate * self.size

    @property
    def wait_s(self) -> float:
        """Seconds this rank has spent blocked on training data, across world changes."""
        return self.earlier_wait_s + self.train.wait_s

    def resume(self) -> int:
        """On rank 0: load the newest checkpoint that verifies; the epoch it completed (0: none).

        Call it on the optimizer already wrapped by ``hvd.DistributedOptimizer``: the wrapper is
        a new optimizer built from the parameter groups alone, so state loaded before wrapping
        (Adam's moments and step count) would be dropped."""
        from training import checkpoint

        if self.rank != 0:
            return 0
        found = checkpoint.load_latest(self.ckpt_dir)
        if not found:
            return 0
        epoch, path, state = found
        self.world_sizes = {int(k): int(v) for k, v in (state.get("world_sizes") or {}).items()}
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scale_learning_rate()
        log(self.rank, f"resuming from {path.name}: {epoch} of {self.cfg.epochs} epochs done")
        return epoch

    def diverged(self, epoch: int, avg: float) -> str:
        """Why training stops after an epoch whose mean loss is NaN or infinite. Checked once an
        epoch, on the average every rank already waits for (a check per step would stall a GPU
        on every batch); the epoch is not checkpointed, so no later epoch starts from its weights."""
        lr = self.cfg.learning_rate
        return (f"epoch {epoch + 1}/{self.cfg.epochs}: the mean training loss is {avg} (world size {self.size}): "
                f"the model diverged, or the training rows hold NaN or infinite values. Nothing of this epoch "
                f"was checkpointed; a retry resumes from epoch {epoch} and fails the same way. Lower "
                f"train.learning_rate ({lr:g} per process, {lr * self.size:g} at this world size), or have the "
                f"data gate bound the features' values (expect_column_values_to_be_between)")

    def run_epoch(self, epoch: int) -> None:
        """One epoch of ``steps`` steps on every rank, then rank 0 seals checkpoint ``epoch + 1``."""
        import torch

        from training import checkpoint

        self.net.train()
        loss_sum = torch.zeros((), device=self.device)
        with closing(self.train.epoch(epoch)) as batches:
            for _, (xb, yb) in zip(range(self.steps), batches):
                self.opt.zero_grad()
                loss = self.loss(xb, yb)
                loss.backward()
                self.opt.step()
                loss_sum += loss.detach()
                self.samples += len(xb)
        avg = self.hvd.allreduce((loss_sum / self.steps).cpu(), op=self.hvd.Average).item()
        if not math.isfinite(avg):  # every rank holds the same average: all stop together, no hang
            raise SystemExit(self.diverged(epoch, avg))
        self.world_sizes[epoch + 1] = self.size  # an epoch trained again after a reset: its last size
        if self.rank == 0:
            log(0, f"epoch {epoch + 1}/{self.cfg.epochs}: loss {avg:.4f} ({self.steps} steps/rank, "
                   f"world size {self.size}, {self.wait_s:.2f}s waiting for data so far)")
            path = checkpoint.save(self.ckpt_dir, epoch + 1, {"model": self.net.state_dict(),
                                                              "optimizer": self.opt.state_dict(),
                                                              "epoch": epoch + 1,
                                                              "world_sizes": dict(self.world_sizes)})
            if path is not None:
                log(0, f"checkpoint {path.name} sealed")


def train_static(t: Trainer) -> dict:
    """Fixed membership: every rank gets rank 0's resumed state by broadcast, then trains."""
    import torch

    hvd = t.hvd
    t.bind()
    t.opt = hvd.DistributedOptimizer(t.opt, named_parameters=t.net.named_parameters())  # before resume()
    start = int(hvd.broadcast(torch.tensor(t.resume()), root_rank=0).item())
    hvd.broadcast_parameters(t.net.state_dict(), root_rank=0)
    if start:  # a fresh optimizer has no state; Horovod would give it one with a zero-gradient step
        hvd.broadcast_optimizer_state(t.opt, root_rank=0)
    for epoch in range(start, t.cfg.epochs):
        t.run_epoch(epoch)
    return {"resumed_from_epoch": start, "elastic_resets": 0}


def train_elastic(t: Trainer) -> dict:
    """Elastic membership (horovodrun --min-np/--max-np): when a rank dies or hosts change,
    the survivors roll back to the last committed epoch, re-divide the shards among themselves
    and go on; the epoch that was interrupted is trained again, from its start."""
    hvd = t.hvd
    t.bind()
    t.opt = hvd.DistributedOptimizer(t.opt, named_parameters=t.net.named_parameters())  # before resume()
    start = t.resume()
    state = elastic_state(hvd, t, start)
    resets = 0  # kept out of the state: a sync restores the state to its last commit

    def on_reset() -> None:
        nonlocal resets
        resets += 1
        t.bind()
        log(t.rank, f"membership changed: world size is now {t.size}, continuing from epoch {state.epoch}")

    state.register_reset_callbacks([on_reset])

    @hvd.elastic.run
    def loop(state) -> None:
        # The sync before this call gave every rank rank 0's state (after a resume: the
        # checkpoint's). It is the rollback point until the first commit: without this save, a
        # rank that lost rank 0 in that epoch rolled back to its own initial weights.
        state.save()
        t.world_sizes = dict(state.world_sizes)  # rank 0's (resumed) record, or the rollback point's
        while state.epoch < t.cfg.epochs:
            t.run_epoch(state.epoch)
            state.epoch += 1
            state.world_sizes = dict(t.world_sizes)
            state.commit()  # the rollback point for the next failure

    loop(state)  # the first sync broadcasts rank 0's resumed state and epoch to every rank
    return {"resumed_from_epoch": state.start, "elastic_resets": resets}


def elastic_state(hvd, t: Trainer, start: int):
    """``hvd.elastic.TorchState`` of the model, optimizer and epoch, whose optimizer is broadcast
    only once rank 0's has state. Horovod's own handler gives an empty optimizer a zero-gradient
    step first, so a fresh elastic run's Adam counted one step more than a static run's and
    trained another model; static and elastic runs share checkpoints, so they must agree."""
    from horovod.torch.elastic.state import OptimizerStateHandler

    class OptimizerSyncedOnceStateful(OptimizerStateHandler):
        def sync(self) -> None:
            if hvd.broadcast_object(bool(self.value.state_dict()["state"]), root_rank=0):
                super().sync()

    state = hvd.elastic.TorchState(model=t.net, optimizer=t.opt, epoch=start, start=start,
                                   world_sizes=dict(t.world_sizes))
    state._handlers["optimizer"] = OptimizerSyncedOnceStateful(t.opt)  # Horovod has no public hook per state
    return state


def _size_runs(sizes: dict[int, int]) -> list[dict]:
    """{1: 2, 2: 2, 3: 1} -> [{"epochs": "1-2", "world_size": 2}, {"epochs": "3", "world_size": 1}]."""
    runs: list[dict] = []
    for epoch in sorted(sizes):
        if runs and runs[-1]["world_size"] == sizes[epoch] and runs[-1]["last"] == epoch - 1:
            runs[-1]["last"] = epoch
        else:
            runs.append({"first": epoch, "last": epoch, "world_size": sizes[epoch]})
    return [{"epochs": f"{r['first']}-{r['last']}" if r["last"] > r["first"] else str(r["first"]),
             "world_size": r["world_size"]} for r in runs]


def main(trainer_cls: type[Trainer], argv: list[str] | None = None) -> int:
    """Train with ``trainer_cls`` under horovodrun; rank 0 writes the model and ``metrics.json``."""
    from dlpipe.spec import read_spec_from_argv

    spec = read_spec_from_argv(argv)
    import horovod.torch as hvd
    import torch

    hvd.init()
    t = trainer_cls(spec, hvd)
    t0 = time.perf_counter()
    progress = train_elastic(t) if spec.get("elastic") else train_static(t)
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    total_samples = t.total(t.samples)
    timing = {"rank": t.rank, "data_wait_s": round(t.wait_s, 3), "compute_s": round(max(0.0, train_s - t.wait_s), 3)}

    t.net.eval()
    metrics = t.final_metrics()
    ranks = hvd.allgather_object(timing)
    metrics.update({
        "train_rows": t.rows["train"],
        "rows_per_epoch": t.rows_per_epoch,  # fewer than train_rows when the ranks' shards are uneven
        "val_rows": t.rows["validation"],
        "epochs": t.cfg.epochs,
        **progress,
        "world_size": t.size,
        "device": t.device.type,
        "allreduce": "NCCL" if t.device.type == "cuda" and hvd.nccl_built() else "Gloo",
        # each epoch's world size, this attempt's and earlier ones' (from the checkpoint): one
        # entry when the whole model trained at one size
        "world_sizes": _size_runs(t.world_sizes),
        # this attempt's time and throughput only (a resumed attempt trained fewer epochs)
        "train_seconds": round(train_s, 3),
        "samples_per_s": round(total_samples / train_s, 1) if train_s > 0 and total_samples else None,
        # per rank: time blocked on the data loader versus everything else in the training loop
        "ranks": ranks,
        "data_wait_fraction": round(sum(r["data_wait_s"] for r in ranks) / max(1e-9, t.size * train_s), 4),
    })
    if t.rank == 0:
        out = Path(spec["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        t.save(out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        log(0, "metrics " + json.dumps(metrics, sort_keys=True))
    hvd.shutdown()
    return 0
