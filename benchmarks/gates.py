"""The data gate (Great Expectations) on a 1M-row dataset versus the same checks done by hand,
on each engine.

    python -m benchmarks.gates [--rows 1000000] [--repeats 3] [--no-spark]

Both sides check the shipped ETA suite (pipelines/eta_training.yaml: column exists, dtype,
not-null, range, for 11 columns, plus the row-count floor) on the same data, so the ratio is the
price of running the checks through GX (and of the evidence GX produces: the validation result
and its Data Docs page, written to a temporary directory as the gate does).

pandas, in memory: the gate on an in-memory DataFrame vs one vectorised pandas pass. The gate
runs as it does on a committed split: the frame carries the split's committed fingerprint, so GX
does not hash every row (dlpipe/gx_pandas.py); a second row shows the gate with GX's own row
hash, for comparison.
pandas, from Parquet: the same, each side first reading the split's Parquet file into pandas, as
the gate does in a pipeline run.
Spark: the gate on a Spark DataFrame read from a Parquet file of the same rows vs one Spark
aggregation job on it; the SparkSession is started before timing (its start-up is reported
separately), and the gate's own row count and caching are inside its time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import machine, positive_int, table


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    f32 = lambda lo, hi: rng.uniform(lo, hi, rows).astype(np.float32)  # noqa: E731
    return pd.DataFrame({
        "trip_id": [f"20260101-{i:07d}" for i in range(rows)],
        "distance_km": f32(0, 20), "hour_sin": f32(-1, 1), "hour_cos": f32(-1, 1),
        "is_weekend": rng.integers(0, 2, rows).astype(np.float32),
        "city_code": rng.integers(0, 4, rows).astype(np.int32),
        "restaurant_prep_mean": f32(5, 40), "restaurant_trips": f32(0, 500),
        "pickup_lat": f32(40, 53), "pickup_lon": f32(-4, 14), "delivery_minutes": f32(5, 120),
    })


def pandas_checks(df: pd.DataFrame, cfg) -> list[str]:
    """The same checks as the gate, by hand: one vectorised pass per column."""
    failures = []
    if len(df) < cfg.min_rows.get("train", 1):
        failures.append("row count")
    for col, rule in cfg.columns.items():
        if col not in df:
            failures.append(f"{col} missing")
            continue
        s = df[col]
        if rule.type and str(s.dtype) != rule.type:
            failures.append(f"{col} type")
        if rule.not_null and s.isna().any():
            failures.append(f"{col} nulls")
        if rule.min is not None and (s < rule.min).any():
            failures.append(f"{col} min")
        if rule.max is not None and (s > rule.max).any():
            failures.append(f"{col} max")
    return failures


def spark_checks(df, cfg) -> list[str]:
    """The same checks on a Spark DataFrame: types from the schema, then one aggregation job
    (row count, and per column the non-null count, min and max, NaN counted as null)."""
    from pyspark.sql import functions as F

    from dlpipe.gates import spark_type

    types = {f.name: type(f.dataType).__name__ for f in df.schema.fields}
    failures, aggs = [], [F.count(F.lit(1)).alias("_rows")]
    for col, rule in cfg.columns.items():
        if col not in types:
            failures.append(f"{col} missing")
            continue
        if rule.type and types[col] != spark_type(col, rule.type):
            failures.append(f"{col} type")
        value = F.col(col)
        if types[col] in ("FloatType", "DoubleType"):
            value = F.when(F.isnan(value), F.lit(None)).otherwise(value)
        aggs += [F.count(value).alias(f"{col}.n"), F.min(value).alias(f"{col}.min"),
                 F.max(value).alias(f"{col}.max")]
    row = df.agg(*aggs).collect()[0].asDict()
    if row["_rows"] < cfg.min_rows.get("train", 1):
        failures.append("row count")
    for col, rule in cfg.columns.items():
        if col not in types:
            continue
        if rule.not_null and row[f"{col}.n"] < row["_rows"]:
            failures.append(f"{col} nulls")
        if rule.min is not None and row[f"{col}.min"] is not None and row[f"{col}.min"] < rule.min:
            failures.append(f"{col} min")
        if rule.max is not None and row[f"{col}.max"] is not None and row[f"{col}.max"] > rule.max:
            failures.append(f"{col} max")
    return failures


def _time(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _rows(label: str, n: int, rows: int, base: list[float], gates: dict[str, list[float]]) -> list[dict]:
    b = statistics.median(base)
    checks = f"{n} expectations + row count"
    out = [{"checks": checks, "engine": f"{label}: by hand (baseline)", "median s": f"{b:.3f}",
            "rows/s": f"{rows / b:,.0f}", "ratio": "1.0"}]
    for name, times in gates.items():
        g = statistics.median(times)
        out.append({"checks": checks, "engine": f"{label}: {name}", "median s": f"{g:.3f}",
                    "rows/s": f"{rows / g:,.0f}", "ratio": f"{g / b:.1f}"})
    return out


def _measure(label: str, gates: dict, by_hand, cfg, docs: Path, repeats: int) -> tuple[dict, list, int]:
    """Alternate each gate variant and the hand-written checks ``repeats`` times; all must pass.

    ``gates`` maps a variant's name to a function returning the DataFrame it validates (reading
    it, when reading is part of what is measured); ``by_hand`` does the same checks by hand.
    """
    from dlpipe.gates import validate_frames

    gate_t: dict[str, list[float]] = {name: [] for name in gates}
    hand_t = []
    for i in range(repeats):
        for name, data in gates.items():
            t, (failures, evidence) = _time(lambda: validate_frames({"train": data()}, cfg, docs_dir=docs))
            gate_t[name].append(t)
            assert failures == [], failures
        t, found = _time(by_hand)
        hand_t.append(t)
        assert found == [], found
        print(f"[bench] {label} repeat {i + 1}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in gate_t.items())
              + f", by hand {hand_t[-1]:.3f}s", flush=True)
    return gate_t, hand_t, evidence["splits"]["train"]["expectations"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_int, default=1_000_000)
    ap.add_argument("--repeats", type=positive_int, default=3, help="the table gives the median of N")
    ap.add_argument("--no-spark", action="store_true", help="only the pandas engine")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe.gates import DataGateConfig, data_gate_spark, validate_frames
    from dlpipe.gx_pandas import with_fingerprint
    from dlpipe.hashing import sha256_file
    from dlpipe.pipeline_config import load_pipeline, section

    cfg = section(load_pipeline("pipelines/eta_training.yaml"), "data_gate", DataGateConfig)
    floor = cfg.min_rows.get("train", 1)
    if args.rows < floor:  # the gate would fail its row-count check and the run stop on an assert
        ap.error(f"--rows {args.rows} is below the suite's row-count floor for train ({floor}, "
                 f"pipelines/eta_training.yaml); give --rows {floor} or more")
    df = frame(args.rows)
    out, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "data_docs"
        path = f"{tmp}/train.parquet"
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=128 * 1024)
        # what the gate reads from the split's manifest (its files' SHA-256), outside the timing
        fingerprint = sha256_file(Path(path))
        committed = with_fingerprint(df, fingerprint)
        validate_frames({"train": df}, cfg)  # untimed: imports and GX's first-use set-up
        gx_t, pd_t, n = _measure("pandas", {
            "dlpipe data gate (GX 1.x)": lambda: committed,
            "the same gate, GX hashing every row": lambda: df,
        }, lambda: pandas_checks(df, cfg), cfg, docs, args.repeats)
        out += _rows("pandas, in memory", n, args.rows, pd_t, gx_t)

        def read() -> pd.DataFrame:  # as dlpipe.gates.read_split reads a split
            return pq.ParquetDataset([path]).read().to_pandas()

        gx_t, pd_t, n = _measure("pandas from Parquet", {
            "dlpipe data gate (GX 1.x)": lambda: with_fingerprint(read(), fingerprint),
        }, lambda: pandas_checks(read(), cfg), cfg, docs, args.repeats)
        out += _rows("pandas, from Parquet", n, args.rows, pd_t, gx_t)

        if not args.no_spark:
            start, spark = _time(data_gate_spark)
            results["spark start-up s"] = start
            # not cached: both sides read the Parquet file, as the gate does in a pipeline run
            sdf = spark.read.parquet(f"file://{tmp}/train.parquet")
            assert sdf.count() == args.rows
            validate_frames({"train": sdf}, cfg)  # untimed: the JVM's JIT warm-up, GX's Spark set-up
            spark_checks(sdf, cfg)
            gx_t, sp_t, n = _measure("spark", {"dlpipe data gate (GX 1.x)": lambda: sdf},
                                     lambda: spark_checks(sdf, cfg), cfg, docs, args.repeats)
            out += _rows("Spark local[*]", n, args.rows, sp_t, gx_t)
            spark.stop()
    print()
    print(f"machine: {machine()}")
    if results:
        print(f"SparkSession start-up (not in the table): {results['spark start-up s']:.1f}s")
    print(table(out, ["checks", "engine", "median s", "rows/s", "ratio"]))


if __name__ == "__main__":
    main()
