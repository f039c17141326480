"""What Horovod costs: the training loop alone versus the same loop under horovodrun.

    python -m benchmarks.horovod_overhead [--rows 400000] [--features 64] [--hidden 256,256] [--np 2]
                                          [--decode-in threads|processes]

All rows train the same MLP on the same Parquet dataset, fed by ``training.loader.ShardLoader``:

- ``plain``: the loop of ``training/train_eta.py`` in this process, no Horovod;
- ``horovodrun -np 1``: ``training.train_eta``'s trainer under horovodrun (Gloo on CPUs, NCCL on
  a GPU), through ``benchmarks.horovod_rank``, which times its epochs the same way;
- ``horovodrun -np N --gloo``: N processes on this machine, gradients averaged with Gloo.

Both sides are timed alike: ``train s`` runs from asking for each epoch's first batch to the end
of its last step (the GPU's work included: the plain loop reads its loss sum back, train_eta
allreduces it), and samples/s (all epochs, all ranks together) divides by it. What only one side
does is in columns of its own: ``set-up s`` (plain: the loader and the model; Horovod: also the
row-count allreduce, the batch-count allgather and the parameter broadcast) and ``checkpoint s``
(train_eta seals one per epoch; the plain loop writes none). Before 2026-12-06 the Horovod
side's samples/s also paid for its set-up and checkpoints, the plain side's for neither.
Process start-up and the final evaluation are in ``wall s`` only.
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

from benchmarks.common import machine, positive_int, table
from benchmarks.loader import make_dataset, require_dataset_rows


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


def plain(spec: dict, device: torch.device) -> dict:
    """The training loop of train_eta.py without Horovod, set up as a rank of ``-np 1`` is
    (loader, torch threads, loss sum read back each epoch); its samples and seconds."""
    from training.loader import ShardLoader
    from training.model import build_mlp

    cfg = spec["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # as training.horovod_loop.Trainer sets it for one rank
    t = time.perf_counter()
    loader = ShardLoader(spec["train_url"], spec["features"], "label", batch_size=cfg["batch_size"],
                         seed=cfg["seed"], device=device, workers=min(8, os.cpu_count() or 1),
                         processes=cfg["decode_in"] == "processes")
    mean = torch.tensor([spec["stats"][c]["mean"] for c in spec["features"]], device=device)
    std = torch.tensor([spec["stats"][c]["std"] for c in spec["features"]], device=device)
    y_mean, y_std = spec["stats"]["label"]["mean"], spec["stats"]["label"]["std"]
    torch.manual_seed(cfg["seed"])
    net = build_mlp(len(spec["features"]), cfg["hidden"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["learning_rate"])
    setup_s, loop_s, samples = time.perf_counter() - t, 0.0, 0
    try:
        for epoch in range(cfg["epochs"]):
            t = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            with closing(loader.epoch(epoch)) as batches:
                for xb, yb in batches:
                    opt.zero_grad()
                    loss = torch.nn.functional.smooth_l1_loss(net((xb - mean) / std).squeeze(-1),
                                                              (yb - y_mean) / y_std)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach()
                    samples += len(xb)
            loss_sum.item()  # waits for the last step, as train_eta's loss allreduce does
            loop_s += time.perf_counter() - t
    finally:
        loader.close()
        torch.set_num_threads(threads)
    return {"samples": samples, "loop_s": loop_s, "setup_s": setup_s, "wait_s": loader.wait_s}


def horovod(spec: dict, work: Path, np_: int, controller: str) -> dict:
    """Run train_eta's trainer under horovodrun (``benchmarks.horovod_rank``); its metrics.json."""
    from dlpipe.spec import write_spec
    from training.config import ScaleConfig
    from training.launcher import horovod_launcher

    out = work / f"np{np_}-{controller}"
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    path = write_spec(out / "spec.json", {**spec, "checkpoint_dir": str(out / "ckpt"), "output_dir": str(out / "model")})
    scale = ScaleConfig(num_proc=np_, hosts=f"localhost:{np_}", controller=controller)
    horovod_launcher(scale, emit=lambda line: None)([sys.executable, "-m", "benchmarks.horovod_rank", "--spec", str(path)])
    return json.loads((out / "model" / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_int, default=400_000, help="training rows (8 or more: one per file)")
    ap.add_argument("--features", type=positive_int, default=64)
    ap.add_argument("--hidden", default="256,256", type=widths, help="hidden widths, comma-separated")
    ap.add_argument("--batch", type=positive_int, default=1024)
    ap.add_argument("--epochs", type=positive_int, default=2)
    ap.add_argument("--np", type=positive_int, default=2, help="processes for the multi-process row")
    ap.add_argument("--decode-in", choices=["threads", "processes"], default="threads",
                    help="where every run decodes its data (ShardLoader(processes=...))")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DLPIPE_HOME", ".dlpipe")) / "bench" / "horovod",
                    help="its train/ and validation/ folders are replaced only when empty or written here")
    args = ap.parse_args()
    require_dataset_rows(ap, args.rows)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    hidden = args.hidden
    print(f"machine: {machine()}; torch {torch.__version__}; device {device}", flush=True)
    spec = build_spec(args.data, args.rows, args.features, hidden, args.batch, args.epochs, args.decode_in)
    print(f"dataset: {spec['expected_rows']} rows x {args.features} features; MLP {hidden}; "
          f"batch {args.batch}; {args.epochs} epochs; decoding in {args.decode_in}", flush=True)

    t = time.perf_counter()
    p = plain(spec, device)
    rows = [{"run": f"plain loop, 1 process ({device.type})", "samples": p["samples"], "train s": p["loop_s"],
             "set-up s": p["setup_s"], "checkpoint s": "-", "wall s": time.perf_counter() - t,
             "data wait": f"{100 * p['wait_s'] / p['loop_s']:.1f}%"}]
    runs = [(1, "gloo")] + ([(args.np, "gloo")] if args.np > 1 and device.type == "cpu" else [])
    with tempfile.TemporaryDirectory() as work:
        for np_, controller in runs:
            t = time.perf_counter()
            m = horovod(spec, Path(work), np_, controller)
            loop_s, ckpt_s = m["bench_loop_s"], m["bench_checkpoint_s"]
            wait_s = sum(r["data_wait_s"] for r in m["ranks"]) / len(m["ranks"])
            rows.append({"run": f"horovodrun -np {np_} ({m['device']}, {m['allreduce']} allreduce)",
                         "samples": m["bench_samples"], "train s": loop_s, "checkpoint s": f"{ckpt_s:.2f}",
                         "set-up s": max(0.0, m["train_seconds"] - loop_s - ckpt_s),
                         "wall s": time.perf_counter() - t, "data wait": f"{100 * wait_s / loop_s:.1f}%"})
            print(f"{rows[-1]['run']}: {m['bench_samples'] / loop_s:,.0f} samples/s", flush=True)
    base = rows[0]["samples"] / rows[0]["train s"]
    for r in rows:
        rate = r["samples"] / r["train s"]
        r["samples/s"], r["vs plain"] = f"{rate:,.0f}", f"{rate / base:.2f}"
        for c in ("train s", "set-up s", "wall s"):
            r[c] = f"{r[c]:.2f}"
    print()
    print(table(rows, ["run", "samples/s", "vs plain", "data wait", "train s", "set-up s", "checkpoint s", "wall s"]))


def widths(text: str) -> list[int]:
    """``--hidden``'s argparse type: comma-separated layer widths, each >= 1."""
    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated whole numbers; give e.g. 256,256") from None
    if any(w < 1 for w in values):
        raise argparse.ArgumentTypeError(f"{text!r} has a width below 1; give widths >= 1, e.g. 256,256")
    return values


if __name__ == "__main__":
    main()
