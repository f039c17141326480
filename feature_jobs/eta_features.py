"""ETA feature job: one feature partition for one data interval.

Contract: reads exactly the raw files listed in the spec (the committed partitions of
``[interval_start - lookback_days, interval_end)``), writes the features of the trips ordered in
``[interval_start, interval_end)`` into ``output_dir``, and never looks at the clock. The
restaurant history features use only days *before* the interval, so no label leaks in.

Output rows are sorted by ``trip_id`` and written as ``num_files`` files, so the same input gives
the same rows in the same order.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger(__name__)

FEATURE_COLUMNS = [
    "distance_km", "hour_sin", "hour_cos", "is_weekend", "city_code",
    "restaurant_prep_mean", "restaurant_trips", "pickup_lat", "pickup_lon",
]
LABEL_COLUMN = "delivery_minutes"
KEY_COLUMN = "trip_id"
# The raw columns this job reads, by kind. Spark takes a schema from one file and reads a column
# another file lacks as nulls, so the stage checks every input file against this first
# (feature_stage.check_raw_files).
RAW_COLUMNS = {
    "trip_id": "string", "order_ts": "timestamp", "pickup_ts": "timestamp", "restaurant_id": "integer",
    "city": "string", "pickup_lat": "floating", "pickup_lon": "floating", "dropoff_lat": "floating",
    "dropoff_lon": "floating", "prep_minutes": "floating", LABEL_COLUMN: "floating",
}


def one_row_per_trip(rows, columns: list[str]):
    """One row per trip: ingestion delivers at least once, so a trip can arrive twice (in one
    day's partition, or in two). A copy would count twice in ``restaurant_trips`` and be trained
    on twice. The row kept is the greatest of the copies by ``columns``, a NaN counting as a null
    (below every value: a corrected copy wins over one without a label), so which one is kept
    does not depend on the order Spark read the files in. Rows without a trip_id are all kept
    (the data gate's not-null check names them). On rows already hash-partitioned by trip this
    adds no shuffle, only a sort within each partition."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    def rank(c: str) -> list:
        if RAW_COLUMNS.get(c) != "floating":
            return [F.col(c).desc_nulls_last()]
        # a value first, then NaN before null: copies that differ only there still have one order
        return [F.when(~F.isnan(c), F.col(c)).desc_nulls_last(), F.col(c).desc_nulls_last()]

    order = Window.partitionBy(KEY_COLUMN).orderBy(*(key for c in columns for key in rank(c)))
    kept = F.col(KEY_COLUMN).isNull() | (F.col("_copy") == 1)
    return rows.withColumn("_copy", F.row_number().over(order)).where(kept).drop("_copy")


def input_stats(spark, spec: dict) -> dict:
    """For the manifest: the input rows ordered in the interval (the stage subtracts the rows it
    wrote to count copies of a trip), and the rows of the interval's own partition ordered
    outside it. A row filed in ``dt=D`` but ordered on an earlier day is in no feature partition
    (that day's run never read ``dt=D``) unless it is a second copy of a trip filed under its
    own day: ``before_interval_not_in_lookback`` counts those whose trip is not in this run's
    lookback partitions. A row ordered on a later day is picked up by the runs whose lookback
    reaches back to ``dt=D``: ``after_lookback_reach`` counts those ordered later than that.
    Scans of ``order_ts`` only, and a join on trip ids only when some rows were ordered before
    the day."""
    from datetime import datetime, timedelta

    from pyspark.sql import functions as F

    ts, start, end = F.col("order_ts"), F.lit(spec["interval_start"]).cast("timestamp"), \
        F.lit(spec["interval_end"]).cast("timestamp")
    reach = datetime.fromisoformat(spec["interval_end"]) + timedelta(days=int(spec.get("lookback_days", 0)))
    read = spark.read.parquet(*spec["input_files"]).select("order_ts").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(((ts >= start) & (ts < end)).cast("int")).alias("in_interval")).first()
    own = spark.read.parquet(*spec["interval_files"])
    counts = own.select("order_ts").agg(
        F.sum((ts < start).cast("int")).alias("before"), F.sum((ts >= end).cast("int")).alias("after"),
        F.sum((ts >= F.lit(reach.isoformat()).cast("timestamp")).cast("int")).alias("beyond"),
        F.sum(ts.isNull().cast("int")).alias("no_order_ts")).first()
    missing = before = counts["before"] or 0
    history_files = [f for f in spec["input_files"] if f not in set(spec["interval_files"])]
    if before and history_files:
        earlier = spark.read.parquet(*history_files).select(KEY_COLUMN)
        missing = own.where(ts < start).select(KEY_COLUMN).join(earlier, KEY_COLUMN, "left_anti").count()
    return {"input_rows": read["rows"], "rows_in_interval": read["in_interval"] or 0,
            "ordered_before_interval": before, "before_interval_not_in_lookback": missing,
            "ordered_after_interval": counts["after"] or 0, "after_lookback_reach": counts["beyond"] or 0,
            # in no day: a null compares neither before, in nor after the interval
            "without_order_ts": counts["no_order_ts"] or 0}


def build_features(spark, spec: dict, partitions: int = 1):
    """The feature DataFrame for the spec's interval (pure function of the listed inputs), in
    ``partitions`` partitions by hash of ``trip_id``: the output files, so the same input gives
    the same rows in each file whatever order the inputs were read in."""
    from pyspark.sql import functions as F

    raw = spark.read.parquet(*spec["input_files"])
    start, end = spec["interval_start"], spec["interval_end"]
    in_interval = (F.col("order_ts") >= F.lit(start).cast("timestamp")) & (
        F.col("order_ts") < F.lit(end).cast("timestamp"))
    history_start = F.lit(spec["history_start"]).cast("timestamp")
    # Trips picked up before the interval: a prep time is known only once the order is picked
    # up, so an order of D-1 23:50 picked up at D 00:20 is not history for D's orders.
    history = one_row_per_trip(  # only the columns the aggregation reads are shuffled
        raw.where((F.col("order_ts") >= history_start) & (F.col("pickup_ts") < F.lit(start).cast("timestamp")))
        .select(KEY_COLUMN, "restaurant_id", "prep_minutes"), ["restaurant_id", "prep_minutes"])
    # NaN and an infinity count as unknown, like null: one inf would make a restaurant's mean inf
    # for every trip of the next lookback_days
    prep = F.when(~F.isnan("prep_minutes") & (F.abs("prep_minutes") != F.lit(float("inf"))), F.col("prep_minutes"))
    history_days = max(1, int(spec["history_days"]))  # days of history committed (some may be missing)
    per_restaurant = history.groupBy("restaurant_id").agg(
        F.avg(prep).alias("restaurant_prep_mean"),
        # per day of history present: the same restaurant scores alike on a day with 3 days of
        # history and on one with 7
        (F.count(F.lit(1)) / F.lit(float(history_days))).alias("restaurant_trips"),
    )
    cities = spec["cities"]
    city_code = F.lit(-1)
    for i, name in enumerate(cities):
        city_code = F.when(F.col("city") == name, F.lit(i)).otherwise(city_code)

    lat1, lon1 = F.radians("pickup_lat"), F.radians("pickup_lon")
    lat2, lon2 = F.radians("dropoff_lat"), F.radians("dropoff_lon")
    a = F.sin((lat2 - lat1) / 2) ** 2 + F.cos(lat1) * F.cos(lat2) * F.sin((lon2 - lon1) / 2) ** 2
    # hour and weekday on the city's clock (a city without a zone stays on UTC)
    local_ts = F.col("order_ts")
    for name, zone in sorted(spec.get("city_time_zones", {}).items()):
        local_ts = F.when(F.col("city") == name, F.from_utc_timestamp("order_ts", zone)).otherwise(local_ts)
    hour = F.hour(local_ts) + F.minute(local_ts) / 60.0
    trips = one_row_per_trip(raw.where(in_interval).select(*RAW_COLUMNS).repartition(partitions, KEY_COLUMN),
                             [c for c in RAW_COLUMNS if c != KEY_COLUMN])
    return (trips.join(F.broadcast(per_restaurant), "restaurant_id", "left")
            .select(
                F.col("trip_id"),
                F.to_date("order_ts").cast("string").alias("dt"),
                (6371.0 * 2 * F.asin(F.sqrt(a))).cast("float").alias("distance_km"),
                F.sin(hour * (2 * 3.141592653589793 / 24)).cast("float").alias("hour_sin"),
                F.cos(hour * (2 * 3.141592653589793 / 24)).cast("float").alias("hour_cos"),
                F.dayofweek(local_ts).isin(1, 7).cast("float").alias("is_weekend"),
                city_code.cast("int").alias("city_code"),
                F.coalesce(F.col("restaurant_prep_mean"), F.lit(spec["default_prep_minutes"]))
                .cast("float").alias("restaurant_prep_mean"),
                F.coalesce(F.col("restaurant_trips"), F.lit(0.0)).cast("float").alias("restaurant_trips"),
                F.col("pickup_lat").cast("float"), F.col("pickup_lon").cast("float"),
                F.col(LABEL_COLUMN).cast("float").alias(LABEL_COLUMN),
            ))


def main(argv: list[str] | None = None) -> int:
    from dlpipe.spec import read_spec_from_argv
    from feature_jobs.session import spark_session

    t0 = time.perf_counter()
    spec = read_spec_from_argv(argv)
    spark = spark_session(f"eta_features {spec['interval_start']}")
    t1 = time.perf_counter()
    print(f"[eta_features] session ready in {t1 - t0:.2f}s", flush=True)
    try:
        # Hash partitioning (unlike range partitioning, which samples) puts each key in the same
        # file whatever order the inputs were read in: the same input gives the same bytes.
        features = build_features(spark, spec, partitions=int(spec["num_files"]))
        (features.sortWithinPartitions(KEY_COLUMN)
         .write.mode("errorifexists").parquet(spec["output_dir"]))
        t2 = time.perf_counter()
        print(f"[eta_features] job done in {t2 - t1:.2f}s: wrote {spec['output_dir']}", flush=True)
        if spec.get("stats_path"):
            with open(spec["stats_path"], "w") as f:
                json.dump(input_stats(spark, spec), f)
            print(f"[eta_features] input stats in {time.perf_counter() - t2:.2f}s", flush=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
