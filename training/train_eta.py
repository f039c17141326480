"""Horovod entry point: train the ETA regressor on a committed Petastorm dataset.

Run by ``horovodrun -np N ... python -m training.train_eta --spec SPEC.json``. Every rank streams
its own shard through ``training.loader.ShardLoader`` (to its GPU when there is one); gradients
are averaged by ``hvd.DistributedOptimizer``; all ranks take the same number of steps per epoch
(the smallest shard decides) so no rank waits in a collective for a peer that has finished.
Rank 0 writes a sealed checkpoint per epoch, the model (safetensors) and ``metrics.json``, which
records each rank's time waiting for data versus computing.
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


def main(argv: list[str] | None = None) -> int:
    from dlpipe.spec import read_spec_from_argv

    spec = read_spec_from_argv(argv)
    import horovod.torch as hvd
    import torch

    from training import checkpoint
    from training.config import TrainConfig
    from training.loader import ShardLoader
    from training.model import EtaModel, build_mlp

    cfg = TrainConfig(**spec["train"])
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    device = _device(hvd.local_rank())
    cpus = max(1, (os.cpu_count() or 1) // hvd.local_size())
    torch.set_num_threads(cpus)
    torch.manual_seed(cfg.seed)
    features, label = spec["features"], spec["label"]

    def loader(split: str, **kw) -> ShardLoader:
        return ShardLoader(spec[f"{split}_url"], features, label, rank=rank, size=size, seed=cfg.seed,
                           device=device, workers=min(8, cpus), **kw)

    train = loader("train", batch_size=cfg.batch_size)
    _log(rank, f"shard: {train.num_rows} training rows in {len(train.groups)} of {train.total_row_groups} "
               f"row groups, {train.num_batches()} batches of {cfg.batch_size}, on {device}")

    def total(v: float) -> float:
        return float(hvd.allreduce(torch.tensor(float(v), dtype=torch.float64), op=hvd.Sum).item())

    # Row counts come from the Parquet footers before anything is read; the loader then checks
    # each row group against its footer, so a partial read fails instead of training on less.
    got = {"train": int(total(train.num_rows)),
           "validation": int(total(loader("validation", batch_size=8192, shuffle=False).num_rows))}
    if got != spec["expected_rows"]:
        raise SystemExit(f"the ranks found {got} rows, the dataset's manifest commits "
                         f"{spec['expected_rows']}: the dataset changed after it was committed")
    if got["train"] == 0:
        raise SystemExit("training split is empty on every rank: nothing to train on")
    steps = int(hvd.allreduce(torch.tensor(train.num_batches()), op=hvd.Min).item())
    if steps == 0:
        raise SystemExit(f"rank {rank} has no training rows: the dataset has {train.total_row_groups} row "
                         f"groups for {size} ranks; write at least {size} files per split")
    x_mean, x_std, y_mean, y_std = _normalization(spec["stats"], features, label, device)

    net = build_mlp(len(features), cfg.hidden).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate * size)
    # Resume: rank 0 loads the newest checkpoint that verifies; every rank gets its state and
    # epoch by broadcast, so all ranks continue from the same point.
    ckpt_dir = Path(spec["checkpoint_dir"])
    start_epoch = 0
    if rank == 0:
        found = checkpoint.latest_valid(ckpt_dir)
        if found:
            start_epoch, path = found
            state = checkpoint.load(path)
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            _log(rank, f"resuming from {path.name}: {start_epoch} of {cfg.epochs} epochs done")
    start_epoch = int(hvd.broadcast(torch.tensor(start_epoch), root_rank=0).item())
    hvd.broadcast_parameters(net.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=net.named_parameters())

    t0 = time.perf_counter()
    samples = 0
    (ckpt_dir / f"rank-{rank}.pid").write_text(str(os.getpid()))  # lets operators find each rank
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        loss_sum = torch.zeros((), device=device)
        with closing(train.epoch(epoch)) as batches:  # all ranks take `steps` steps
            for _, (xb, yb) in zip(range(steps), batches):
                opt.zero_grad()
                pred = net((xb - x_mean) / x_std).squeeze(-1)
                loss = torch.nn.functional.smooth_l1_loss(pred, (yb - y_mean) / y_std)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                samples += len(xb)
        avg = hvd.allreduce((loss_sum / steps).cpu(), op=hvd.Average).item()
        if rank == 0:
            _log(rank, f"epoch {epoch + 1}/{cfg.epochs}: loss {avg:.4f} ({steps} steps/rank, "
                       f"{train.wait_s:.2f}s waiting for data so far)")
            path = checkpoint.save(ckpt_dir, epoch + 1, {"model": net.state_dict(),
                                                         "optimizer": opt.state_dict(),
                                                         "epoch": epoch + 1})
            _log(rank, f"checkpoint {path.name} sealed")
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    total_samples = total(samples)
    timing = {"rank": rank, "data_wait_s": round(train.wait_s, 3),
              "compute_s": round(max(0.0, train_s - train.wait_s), 3)}

    model = EtaModel(net.eval(), x_mean, x_std, y_mean, y_std, features)

    def errors(split: str) -> tuple[float, float, float]:
        """Summed |error| of the model and of the mean baseline, and rows, over all ranks."""
        err = base = torch.zeros((), dtype=torch.float64, device=device)
        rows = 0
        with closing(loader(split, batch_size=8192, shuffle=False).epoch(0)) as batches:
            for xb, yb in batches:
                err = err + (model.predict(xb) - yb).abs().double().sum()
                base = base + (yb.double() - y_mean).abs().sum()
                rows += len(yb)
        return total(err.item()), total(base.item()), total(rows)

    tr_err, _, tr_rows = errors("train")
    va_err, va_base, va_rows = errors("validation")
    ranks = hvd.allgather_object(timing)
    metrics = {
        "train_mae": tr_err / tr_rows,
        "val_mae": va_err / va_rows if va_rows else float("nan"),
        # the naive baseline: always predict the training mean
        "baseline_mae": va_base / va_rows if va_rows else float("nan"),
        "train_rows": got["train"],
        "val_rows": got["validation"],
        "epochs": cfg.epochs,
        "resumed_from_epoch": start_epoch,
        "world_size": size,
        "device": device.type,
        "allreduce": "NCCL" if device.type == "cuda" and hvd.nccl_built() else "Gloo",
        "train_seconds": round(train_s, 3),
        "samples_per_s": round(total_samples / train_s, 1) if train_s > 0 else None,
        # per rank: time blocked on the data loader versus everything else in the training loop
        "ranks": ranks,
        "data_wait_fraction": round(sum(r["data_wait_s"] for r in ranks) / max(1e-9, size * train_s), 4),
    }
    if rank == 0:
        out = Path(spec["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        cpu_model = EtaModel(net.cpu(), x_mean.cpu(), x_std.cpu(), y_mean, y_std, features)
        cpu_model.save(out, cfg.hidden)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _log(rank, "metrics " + json.dumps(metrics, sort_keys=True))
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
