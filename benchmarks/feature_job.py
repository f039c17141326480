"""The ETA feature job at two input sizes in local[2]: throughput and how cost grows.

    python -m benchmarks.feature_job [--rows 1000000 4000000]

For each size N, raw demo data is generated as two days of N/2 trips; the job computes day 2's
features with a one-day lookback, so it reads N raw rows. Reported separately: the time until
the SparkSession is ready (JVM start, fixed per job) and the job itself (read, join, shuffle,
sort, write), and the input statistics counted after it for the manifest (duplicate trip ids,
rows filed under another day). The ratio of job times between the sizes shows how cost grows (4x the rows
ideally costs 4x the time).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.common import int_at_least, machine, table


def run_size(rows: int, workdir: Path) -> dict:
    os.environ["DLPIPE_HOME"] = str(workdir / f"home-{rows}")
    from dlpipe.demo_data import DemoDataConfig, write_raw
    from dlpipe.runctx import RunContext
    from dlpipe.spark_submit import local_spark_submit
    from feature_jobs.feature_stage import FeatureJobConfig, extract_features

    t = time.perf_counter()
    write_raw(DemoDataConfig(start=date(2026, 1, 1), days=2, rows_per_day=rows // 2), RunContext())
    gen_s = time.perf_counter() - t
    lines: list[str] = []

    submit = local_spark_submit("local[2]", conf={"spark.driver.memory": "6g"}, timeout_s=1800,
                                emit=lines.append)

    t = time.perf_counter()
    result = extract_features("2026-01-02", "2026-01-03", config=FeatureJobConfig(lookback_days=1, num_files=8),
                              run=RunContext(), submit=submit)
    total = time.perf_counter() - t
    text = "\n".join(lines)
    session = float(re.search(r"session ready in ([\d.]+)s", text).group(1))
    job = float(re.search(r"job done in ([\d.]+)s", text).group(1))
    stats = float(re.search(r"input stats in ([\d.]+)s", text).group(1))
    return {"raw rows": rows, "feature rows": result.manifest["summary"]["rows"], "generate s": gen_s,
            "session s": session, "job s": job, "stats s": stats, "stage total s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=[1_000_000, 4_000_000],
                    type=int_at_least(2, ": the rows are two days of N/2 trips each"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            print(f"[bench] {n:,} raw rows ...", flush=True)
            results.append(run_size(n, Path(tmp)))
            r = results[-1]
            print(f"[bench]   session {r['session s']:.1f}s, job {r['job s']:.1f}s, stage {r['stage total s']:.1f}s",
                  flush=True)
    base = results[0]
    rows = [{"raw rows": f"{r['raw rows']:,}", "feature rows": f"{r['feature rows']:,}",
             "session start s": f"{r['session s']:.1f}", "job s": f"{r['job s']:.1f}",
             "raw rows/s (job)": f"{r['raw rows'] / r['job s']:,.0f}",
             "input stats s": f"{r['stats s']:.1f} ({r['stats s'] / r['job s']:.2f} of job)",
             "stage total s": f"{r['stage total s']:.1f}",
             "job time ratio": f"{r['job s'] / base['job s']:.2f} (rows x{r['raw rows'] / base['raw rows']:.0f})"}
            for r in results]
    print()
    print(f"machine: {machine()}")
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
