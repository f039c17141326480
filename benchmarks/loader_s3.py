"""Reading training row groups from S3: a request per column chunk against coalesced requests.

    python -m benchmarks.loader_s3 [--rows 524288] [--features 64] [--threads N] [--repeats 2]

A dataset of ``--rows`` x ``--features`` float32 columns plus a label (2 files, row groups of
at most 65,536 rows; our dataset stage sizes its row groups in MB instead) goes into a bucket of moto's S3 server, a separate process on
loopback. Each way of reading every row group on ``--threads`` threads is then timed, best of
``--repeats``:

- a request per column chunk: ``read_row_group``, pyarrow without ``pre_buffer`` (what
  ShardLoader did on S3 before 2026-12-03, the baseline);
- coalesced: ``column_chunks`` as ShardLoader reads a remote row group now, whole, its column
  chunks fetched together (``pre_buffer``);
- ShardLoader itself, one shuffled epoch on ``--threads`` worker threads.

moto is not S3: its requests cost more CPU and no network latency. The ratio shows what the
number of requests costs; a real bucket's latency (tens of ms a request) favours coalescing too.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from urllib.parse import urlparse

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import machine, positive_int, s3_server, table
from training.loader import ShardLoader
from training.parquet_groups import column_chunks, list_row_groups, read_row_group

GROUP_ROWS = 65536
BASELINE = "a request per column chunk (the baseline)"


def upload(client, bucket: str, rows: int, features: int, files: int = 2) -> list[str]:
    columns = [f"f{i:02d}" for i in range(features)]
    rng = np.random.default_rng(0)
    per_file = -(-rows // files)
    for k in range(files):
        x = rng.normal(size=(min(per_file, rows - k * per_file), features)).astype(np.float32)
        sink = io.BytesIO()
        pq.write_table(pa.table({**{c: x[:, i] for i, c in enumerate(columns)}, "label": x[:, 0]}), sink,
                       row_group_size=GROUP_ROWS)
        client.put_object(Bucket=bucket, Key=f"ds/train/part-{k:05d}.parquet", Body=sink.getvalue())
    return columns


def best_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_int, default=8 * GROUP_ROWS)
    ap.add_argument("--features", type=positive_int, default=64)
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=positive_int, default=2, help="best of N")
    args = ap.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    print(f"machine: {machine()}; pyarrow {pa.__version__}", flush=True)
    with s3_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench-loader")
        columns = upload(client, "bench-loader", args.rows, args.features)
        url = f"s3://bench-loader/ds/train?endpoint_override={urlparse(endpoint).netloc}&scheme=http&region=us-east-1"
        fs, groups = list_row_groups(url)
        names = columns + ["label"]
        print(f"dataset: {args.rows:,} rows x {len(names)} columns, {len(groups)} row groups on moto's S3 "
              f"server; {args.threads} threads", flush=True)
        pool = ThreadPoolExecutor(args.threads)

        def per_column_chunk(g) -> None:  # ShardLoader's read before 2026-12-03
            table_ = read_row_group(fs, g, names)
            for name in names:
                table_.column(name).to_numpy()

        def coalesced(g) -> None:
            for _ in column_chunks(fs, g, names):
                pass

        loader = ShardLoader(url, columns, "label", batch_size=8192, workers=args.threads,
                             cache_bytes=0)  # every pass reads from S3
        epochs = iter(range(1_000_000))
        ways = {
            BASELINE: lambda: list(pool.map(per_column_chunk, groups)),
            "coalesced: column_chunks (ShardLoader's read)": lambda: list(pool.map(coalesced, groups)),
            "ShardLoader, one shuffled epoch": lambda: sum(len(x) for x, _ in loader.epoch(next(epochs))),
        }
        seconds = {}
        for name, fn in ways.items():
            seconds[name] = best_s(fn, args.repeats)
            print(f"{name}: {seconds[name]:.2f} s", flush=True)
    rows = [{"read": name, "seconds": f"{s:.2f}", "rows/s": f"{args.rows / s:,.0f}",
             "vs baseline": f"{seconds[BASELINE] / s:.1f}x"} for name, s in seconds.items()]
    print()
    print(table(rows, ["read", "seconds", "rows/s", "vs baseline"]))


if __name__ == "__main__":
    main()
