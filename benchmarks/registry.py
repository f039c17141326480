"""Registering a large artifact into S3 versus a raw boto3 upload of the same file.

    python -m benchmarks.registry [--mb 100] [--repeats 3]

Both sides talk to the same S3-compatible server process on loopback in the same run. The
registry does more than the upload (SHA-256 of the file and of every part, the server's checksum
compared with ours, the create-only version record); the ratio says what that costs. Two paths:

- pipeline: the model comes from a committed training manifest, which already holds each file's
  SHA-256 and its S3 part digests (RegisterModelOperator); they go to S3 as the part checksums,
  so S3 verifies the bytes against the commit and the client hashes nothing;
- external: ``dlpipe registry register NAME DIR``; the file is hashed first (the blob is stored
  under its hash, and a blob already stored that still verifies is not uploaded again), then
  hashed again while uploaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import bench_bucket, machine, positive_int, s3_server, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=positive_int, default=100)
    ap.add_argument("--repeats", type=positive_int, default=3, help="the table gives the median of N")
    args = ap.parse_args()

    from boto3.s3.transfer import TransferConfig

    from dlpipe import registry
    from dlpipe.runctx import RunContext
    from dlpipe.storage import PART_SIZE, S3Store

    with tempfile.TemporaryDirectory() as tmp, s3_server() as endpoint:
        os.environ["DLPIPE_HOME"] = str(Path(tmp) / "home")
        client = bench_bucket(endpoint)
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "model.bin").write_bytes(os.urandom(args.mb * 2**20))
        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
        from dlpipe.commit import describe_files

        # what the training stage's manifest records for its model files
        known = {f["path"]: f for f in describe_files(model, with_parts=True)}
        raw, reg, ext = [], [], []
        print(f"[bench] {args.mb} MB artifact, {args.repeats} repeats, S3 server at {endpoint}", flush=True)
        for i in range(args.repeats):
            t = time.perf_counter()
            client.upload_file(str(model / "model.bin"), "bench", f"raw/{uuid.uuid4().hex}", Config=config)
            raw.append(time.perf_counter() - t)
            for times, hashes, label in ((reg, known, "pipeline"), (ext, None, "external")):
                # a fresh registry each time: no dedup shortcut
                store = S3Store(f"s3://bench/{label}-{i}", client)
                t = time.perf_counter()
                _, created = registry.register(store, "bench", model, metrics={}, lineage={"i": i},
                                               run=RunContext(), committed_files=hashes)
                times.append(time.perf_counter() - t)
                assert created
            print(f"[bench] repeat {i + 1}: raw {raw[-1]:.2f}s, register (pipeline) {reg[-1]:.2f}s, "
                  f"register (external) {ext[-1]:.2f}s", flush=True)
        r, g, e = statistics.median(raw), statistics.median(reg), statistics.median(ext)
        print()
        print(f"machine: {machine()}")
        print(table([
            {"operation": "boto3 upload_file (baseline)", "median s": f"{r:.2f}", "MB/s": f"{args.mb / r:.0f}", "ratio": "1.00"},
            {"operation": "register from a committed manifest", "median s": f"{g:.2f}", "MB/s": f"{args.mb / g:.0f}", "ratio": f"{g / r:.2f}"},
            {"operation": "register an external directory", "median s": f"{e:.2f}", "MB/s": f"{args.mb / e:.0f}", "ratio": f"{e / r:.2f}"},
        ], ["operation", "median s", "MB/s", "ratio"]))


if __name__ == "__main__":
    main()
