"""Horovod entry point: train the ETA regressor on a committed Petastorm dataset.

Run by ``horovodrun -np N ... python -m training.train_eta --spec SPEC.json``. Every rank reads
its own shard; gradients are averaged by ``hvd.DistributedOptimizer``; all ranks take the same
number of steps per epoch (the smallest shard decides) so no rank waits in a collective for a
peer that has finished. Rank 0 writes the model (safetensors) and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


def _log(rank: int, msg: str) -> None:
    print(f"[train rank {rank}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from dlpipe.spec import read_spec_from_argv

    spec = read_spec_from_argv(argv)
    import horovod.torch as hvd
    import torch

    from training import checkpoint
    from training.config import TrainConfig
    from training.data import read_shard
    from training.model import EtaModel, build_mlp

    cfg = TrainConfig(**spec["train"])
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    torch.manual_seed(cfg.seed)
    features, label = spec["features"], spec["label"]

    t_read = time.perf_counter()
    x_np, y_np = read_shard(spec["train_url"], features, label, rank, size)
    xv_np, yv_np = read_shard(spec["validation_url"], features, label, rank, size)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    xv, yv = torch.from_numpy(xv_np), torch.from_numpy(yv_np)
    read_s = time.perf_counter() - t_read
    _log(rank, f"read {len(x)} train / {len(xv)} validation rows in {read_s:.2f}s")

    def total(t: torch.Tensor) -> torch.Tensor:
        return hvd.allreduce(t.double(), op=hvd.Sum)

    n = total(torch.tensor(float(len(x))))
    got = {"train": int(n.item()), "validation": int(total(torch.tensor(float(len(xv)))).item())}
    if got != spec["expected_rows"]:  # never train on a silently partial read
        raise SystemExit(f"the ranks read {got} rows, the dataset's manifest commits "
                         f"{spec['expected_rows']}: the read was incomplete; retry the task")
    if n.item() == 0:
        raise SystemExit("training split is empty on every rank: nothing to train on")
    x_mean = total(x.double().sum(0)) / n
    x_std = (total(((x.double() - x_mean) ** 2).sum(0)) / n).sqrt().clamp_min(1e-6)
    y_mean = total(y.double().sum()) / n
    y_std = (total(((y.double() - y_mean) ** 2).sum()) / n).sqrt().clamp_min(1e-6)
    x_mean, x_std = x_mean.float(), x_std.float()
    xn = (x - x_mean) / x_std
    yn = (y - y_mean.float()) / y_std.float()

    net = build_mlp(len(features), cfg.hidden)
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
    local_steps = torch.tensor(math.ceil(len(x) / cfg.batch_size))
    steps = int(hvd.allreduce(local_steps, op=hvd.Min).item())
    if steps == 0:
        raise SystemExit(f"rank {rank} has no training rows: the dataset needs at least {size} row groups")

    t0 = time.perf_counter()
    samples = 0
    (ckpt_dir / f"rank-{rank}.pid").write_text(str(os.getpid()))  # lets operators find each rank
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1009 + rank)
        perm = torch.randperm(len(x), generator=gen)
        net.train()
        loss_sum = 0.0
        for step in range(steps):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            opt.zero_grad()
            loss = torch.nn.functional.smooth_l1_loss(net(xn[idx]).squeeze(-1), yn[idx])
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            samples += len(idx)
        avg = hvd.allreduce(torch.tensor(loss_sum / steps), op=hvd.Average).item()
        if rank == 0:
            _log(rank, f"epoch {epoch + 1}/{cfg.epochs}: loss {avg:.4f} ({steps} steps/rank)")
            path = checkpoint.save(ckpt_dir, epoch + 1, {"model": net.state_dict(),
                                                         "optimizer": opt.state_dict(),
                                                         "epoch": epoch + 1})
            _log(rank, f"checkpoint {path.name} sealed")
    train_s = time.perf_counter() - t0
    total_samples = total(torch.tensor(float(samples))).item()

    model = EtaModel(net.eval(), x_mean, x_std, float(y_mean), float(y_std), features)

    def mae(xs: torch.Tensor, ys: torch.Tensor) -> float:
        err = total((model.predict(xs) - ys).abs().sum())
        cnt = total(torch.tensor(float(len(ys))))
        return float(err / cnt) if cnt.item() else float("nan")

    metrics = {
        "train_mae": mae(x, y),
        "val_mae": mae(xv, yv),
        # the naive baseline: always predict the training mean
        "baseline_mae": float(total((yv.double() - y_mean).abs().sum()) / total(torch.tensor(float(len(yv))))),
        "train_rows": int(n.item()),
        "val_rows": got["validation"],
        "epochs": cfg.epochs,
        "resumed_from_epoch": start_epoch,
        "world_size": size,
        "train_seconds": round(train_s, 3),
        "samples_per_s": round(total_samples / train_s, 1) if train_s > 0 else None,
        "read_seconds_rank0": round(read_s, 3),
    }
    if rank == 0:
        out = Path(spec["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        model.save(out, cfg.hidden)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        _log(rank, "metrics " + json.dumps(metrics, sort_keys=True))
    hvd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
