"""The data gate (Great Expectations) on a 1M-row dataset versus the same checks in one
vectorised pandas pass.

    python -m benchmarks.gates [--rows 1000000] [--repeats 3]

Both sides check the shipped ETA suite (pipelines/eta_training.yaml: column exists, dtype,
not-null, range, for 11 columns, plus the row-count floor) on the same in-memory DataFrame, so
the ratio is the price of running the checks through GX (and of the evidence GX produces).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from benchmarks.common import machine, table


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from dlpipe.gates import DataGateConfig, validate_frames
    from dlpipe.pipeline_config import load_pipeline, section

    cfg = section(load_pipeline("pipelines/eta_training.yaml"), "data_gate", DataGateConfig)
    df = frame(args.rows)
    gx_t, pd_t = [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        failures, evidence = validate_frames({"train": df}, cfg)
        gx_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        by_hand = pandas_checks(df, cfg)
        pd_t.append(time.perf_counter() - t)
        assert failures == [] and by_hand == [], (failures, by_hand)
        print(f"[bench] repeat {i + 1}: gate {gx_t[-1]:.2f}s, pandas {pd_t[-1]:.3f}s", flush=True)
    g, p = statistics.median(gx_t), statistics.median(pd_t)
    n = evidence["splits"]["train"]["expectations"]
    print()
    print(f"machine: {machine()}")
    print(table([
        {"checks": f"{n} expectations + row count", "engine": "vectorised pandas (baseline)",
         "median s": f"{p:.3f}", "rows/s": f"{args.rows / p:,.0f}", "ratio": "1.0"},
        {"checks": f"{n} expectations + row count", "engine": "dlpipe data gate (GX 1.x, pandas)",
         "median s": f"{g:.3f}", "rows/s": f"{args.rows / g:,.0f}", "ratio": f"{g / p:.1f}"},
    ], ["checks", "engine", "median s", "rows/s", "ratio"]))


if __name__ == "__main__":
    main()
