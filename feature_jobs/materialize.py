"""Materialize a Petastorm dataset from a window of committed feature partitions.

Writes two Petastorm datasets, ``train/`` and ``validation/``, under the attempt directory. The
split is a deterministic function of the key (``xxhash64(key) % 100``), so a trip stays in the
same split whichever window it appears in. Each split is written as ``num_files`` files of
sorted rows, so the row groups can be sharded across training ranks.
"""

from __future__ import annotations

import json
import sys
import warnings


def unischema(columns: list[tuple[str, str]]):
    """A Petastorm Unischema of scalar fields from ``(name, 'float'|'int'|'string')`` pairs."""
    import numpy as np
    from petastorm.codecs import ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import FloatType, IntegerType, StringType

    kinds = {"float": (np.float32, FloatType()), "int": (np.int32, IntegerType()),
             "string": (np.str_, StringType())}
    return Unischema("EtaFeatures", [
        UnischemaField(name, kinds[kind][0], (), ScalarCodec(kinds[kind][1]), False)
        for name, kind in columns
    ])


def column_stats(df, columns: list[str]) -> dict:
    """count, nulls, min, max, mean and std (numeric columns) of each column, in one Spark pass.

    NaN counts as missing, as in the data gate (pandas, and its Spark engine's NaN-as-null):
    Spark would count it as a value, and its mean, std and max of a column holding one are NaN,
    which the drift check cannot compare with anything.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType, NumericType

    kinds = {f.name: f.dataType for f in df.schema.fields}
    aggs = [F.count(F.lit(1)).alias("__rows")]
    for c in columns:
        value = F.col(c)
        if isinstance(kinds.get(c), (FloatType, DoubleType)):
            value = F.when(~F.isnan(value), value)  # NaN -> null
        aggs += [F.count(value).alias(f"{c}__count"), F.min(value).alias(f"{c}__min"),
                 F.max(value).alias(f"{c}__max")]
        if isinstance(kinds.get(c), NumericType):
            aggs += [F.avg(value).alias(f"{c}__mean"), F.stddev_pop(value).alias(f"{c}__std")]
    row = df.agg(*aggs).collect()[0].asDict()
    out = {}
    for c in columns:
        out[c] = {"count": row[f"{c}__count"], "nulls": row["__rows"] - row[f"{c}__count"],
                  "min": row[f"{c}__min"], "max": row[f"{c}__max"], "mean": row.get(f"{c}__mean"),
                  "std": row.get(f"{c}__std")}
    return out


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from dlpipe.spec import read_spec_from_argv
    from feature_jobs.session import spark_session

    # petastorm 0.13 uses pyarrow's legacy dataset API; its FutureWarnings are known and harmless.
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    from petastorm.etl.dataset_metadata import materialize_dataset

    spec = read_spec_from_argv(argv)
    spark = spark_session(f"materialize {spec['name']}")
    try:
        schema = unischema([tuple(c) for c in spec["columns"]])
        names = [c[0] for c in spec["columns"]]
        df = spark.read.parquet(*spec["input_files"]).select(*names)
        bucket = F.pmod(F.xxhash64(F.col(spec["key"])), F.lit(100))
        splits = {"train": bucket >= spec["validation_percent"],
                  "validation": bucket < spec["validation_percent"]}
        for split, cond in splits.items():
            url = f"file://{spec['output_dir']}/{split}"
            with materialize_dataset(spark, url, schema, spec["row_group_size_mb"]):
                (df.where(cond).repartition(int(spec["num_files"]), spec["key"])
                 .sortWithinPartitions(spec["key"])
                 .write.mode("errorifexists").parquet(url))
            print(f"[materialize] wrote {url}", flush=True)
        stats = {split: column_stats(spark.read.parquet(f"file://{spec['output_dir']}/{split}"), names)
                 for split in splits}
        with open(f"{spec['output_dir']}/stats.json", "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
