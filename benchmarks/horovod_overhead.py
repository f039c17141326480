"""What Horovod costs: the training loop alone versus the same loop under horovodrun.

    python -m benchmarks.horovod_overhead [--rows 400000] [--features 64] [--hidden 256,256] [--np 2]
                                          [--decode-in threads|processes]

All rows train the same MLP on the same Parquet dataset, fed by ``training.loader.ShardLoader``:

- ``plain``: the loop of ``training/train_eta.py`` in this process, no Horovod;
- ``horovodrun -np 1``: ``training.train_eta`` under horovodrun (Gloo on CPUs, NCCL on a GPU);
- ``horovodrun -np N --gloo``: N processes on this machine, gradients averaged with Gloo.

samples/s is measured inside the training loop (all epochs, all ranks together), so process
start-up and the final evaluation are not counted; ``wall s`` shows the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from benchmarks.common import machine, table
from benchmarks.loader import make_dataset


def build_spec(root: Path, rows: int, features: int, hidden: list[int], batch: int, epochs: int,
               decode_in: str = "threads") -> dict:
    """A training spec for ``training.train_eta`` over a synthetic dataset with manifest-like stats."""
    root = root.resolve()
    columns = make_dataset(root / "train", rows, features, files=8)
    make_dataset(root / "validation", max(rows // 10, 8 * 1024), features, files=8)
    table_ = pq.read_table(root / "train")
    stats = {c: {"mean": float(np.mean(table_.column(c).to_numpy(), dtype=np.float64)),
                 "std": float(np.std(table_.column(c).to_numpy(), dtype=np.float64))}
             for c in columns + ["label"]}
    count = lambda split: pq.ParquetDataset(root / split).read(columns=["label"]).num_rows  # noqa: E731
    return {
        "train": {"hidden": hidden, "epochs": epochs, "batch_size": batch, "learning_rate": 1e-3, "seed": 1,
                  "decode_in": decode_in},
        "train_url": f"file://{root / 'train'}", "validation_url": f"file://{root / 'validation'}",
        "features": columns, "label": "label", "stats": stats,
        "expected_rows": {"train": count("train"), "validation": count("validation")},
    }


def plain(spec: dict, device: torch.device) -> float:
    """The training loop of train_eta.py without Horovod; samples/s."""
    from training.loader import ShardLoader
    from training.model import build_mlp

    cfg = spec["train"]
    loader = ShardLoader(spec["train_url"], spec["features"], "label", batch_size=cfg["batch_size"],
                         seed=cfg["seed"], device=device, workers=min(8, os.cpu_count() or 1),
                         processes=cfg["decode_in"] == "processes")
    mean = torch.tensor([spec["stats"][c]["mean"] for c in spec["features"]], device=device)
    std = torch.tensor([spec["stats"][c]["std"] for c in spec["features"]], device=device)
    y_mean, y_std = spec["stats"]["label"]["mean"], spec["stats"]["label"]["std"]
    torch.manual_seed(cfg["seed"])
    net = build_mlp(len(spec["features"]), cfg["hidden"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["learning_rate"])
    samples = 0
    t = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        with closing(loader.epoch(epoch)) as batches:
            for xb, yb in batches:
                opt.zero_grad()
                loss = torch.nn.functional.smooth_l1_loss(net((xb - mean) / std).squeeze(-1), (yb - y_mean) / y_std)
                loss.backward()
                opt.step()
                samples += len(xb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - t)


def horovod(spec: dict, work: Path, np_: int, controller: str) -> dict:
    """Run training.train_eta under horovodrun; its metrics.json."""
    from dlpipe.spec import write_spec
    from training.config import ScaleConfig
    from training.launcher import horovod_launcher

    out = work / f"np{np_}-{controller}"
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    path = write_spec(out / "spec.json", {**spec, "checkpoint_dir": str(out / "ckpt"), "output_dir": str(out / "model")})
    scale = ScaleConfig(num_proc=np_, hosts=f"localhost:{np_}", controller=controller)
    horovod_launcher(scale, emit=lambda line: None)([sys.executable, "-m", "training.train_eta", "--spec", str(path)])
    return json.loads((out / "model" / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", default="256,256", help="hidden widths, comma-separated")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--np", type=int, default=2, help="processes for the multi-process row")
    ap.add_argument("--decode-in", choices=["threads", "processes"], default="threads",
                    help="where every run decodes its data (ShardLoader(processes=...))")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DLPIPE_HOME", ".dlpipe")) / "bench" / "horovod")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hidden = [int(h) for h in args.hidden.split(",")]
    print(f"machine: {machine()}; torch {torch.__version__}; device {device}", flush=True)
    spec = build_spec(args.data, args.rows, args.features, hidden, args.batch, args.epochs, args.decode_in)
    print(f"dataset: {spec['expected_rows']} rows x {args.features} features; MLP {hidden}; "
          f"batch {args.batch}; {args.epochs} epochs; decoding in {args.decode_in}", flush=True)

    rows = []
    t = time.perf_counter()
    base = plain(spec, device)
    rows.append({"run": f"plain loop, 1 process ({device.type})", "samples/s": base, "wall s": time.perf_counter() - t,
                 "data wait": "-"})
    runs = [(1, "gloo")] + ([(args.np, "gloo")] if args.np > 1 and device.type == "cpu" else [])
    with tempfile.TemporaryDirectory() as work:
        for np_, controller in runs:
            t = time.perf_counter()
            m = horovod(spec, Path(work), np_, controller)
            rows.append({"run": f"horovodrun -np {np_} ({m['device']}, {m['allreduce']} allreduce)",
                         "samples/s": m["samples_per_s"], "wall s": time.perf_counter() - t,
                         "data wait": f"{100 * m['data_wait_fraction']:.1f}%"})
            print(f"{rows[-1]['run']}: {m['samples_per_s']:,.0f} samples/s", flush=True)
    for r in rows:
        r["vs plain"] = f"{r['samples/s'] / base:.2f}"
        r["samples/s"] = f"{r['samples/s']:,.0f}"
        r["wall s"] = f"{r['wall s']:.1f}"
    print()
    print(table(rows, ["run", "samples/s", "vs plain", "data wait", "wall s"]))


if __name__ == "__main__":
    main()
