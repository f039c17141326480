"""Finding an identical model among a registry's versions: reading every record versus the index.

    python -m benchmarks.registry_lookup [--versions 300] [--repeats 5]

A registration first looks for a version that already holds the same model (a rerun must not
register it twice). Reading every version record (``registry.list_versions``, one GET each) is
the baseline: it is what a registration did, twice, before the index. The index
(``<model>/identities/<fingerprint>/<NNNNNN>``) needs one listing of the model's keys and one
record read. Both run against the same S3-compatible server process on loopback, in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import bench_bucket, machine, positive_int, s3_server, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=positive_int, default=300, help="versions registered first")
    ap.add_argument("--repeats", type=positive_int, default=5, help="the table gives the median of N")
    args = ap.parse_args()

    from dlpipe import registry
    from dlpipe.runctx import RunContext
    from dlpipe.storage import S3Store

    with tempfile.TemporaryDirectory() as tmp, s3_server() as endpoint:
        os.environ["DLPIPE_HOME"] = str(Path(tmp) / "home")
        client = bench_bucket(endpoint)
        store = S3Store("s3://bench/registry", client)
        model = Path(tmp) / "model"
        model.mkdir()
        (model / "model.safetensors").write_bytes(b"weights")
        print(f"[bench] registering {args.versions} versions at {endpoint}", flush=True)
        for i in range(args.versions):
            registry.register(store, "eta", model, metrics={}, lineage={"i": i}, run=RunContext())
            if (i + 1) % 100 == 0:
                print(f"[bench] {i + 1} versions", flush=True)
        wanted = registry.model_identity(registry.get_version(store, "eta", 1)["artifacts"], {"i": 0})
        scan, index = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            found = [r for r in registry.list_versions(store, "eta")
                     if registry.model_identity(r["artifacts"], r["lineage"]) == wanted]
            scan.append(time.perf_counter() - t)
            t = time.perf_counter()
            record, _ = registry._find_same(store, "eta", wanted)
            index.append(time.perf_counter() - t)
            assert found[0]["version"] == record["version"] == 1
        s, x = statistics.median(scan), statistics.median(index)
        print()
        print(f"machine: {machine()}")
        print(table([
            {"lookup among": f"{args.versions} versions", "way": "read every record (baseline)",
             "median s": f"{s:.3f}", "ratio": "1.00"},
            {"lookup among": f"{args.versions} versions", "way": "index listing + one record",
             "median s": f"{x:.3f}", "ratio": f"{x / s:.3f}"},
        ], ["lookup among", "way", "median s", "ratio"]))


if __name__ == "__main__":
    main()
