"""Materialize scikit-learn's bundled digits images as a Petastorm dataset (an ndarray field).

The second, non-tabular example: 1,797 8x8 grey-level images shipped inside scikit-learn (no
download). Images are stored exactly as scikit-learn gives them (float64, values 0..16) with
Petastorm's NdarrayCodec, so they round-trip bit for bit; the split is a hash of the image id.
"""

from __future__ import annotations

import json
import sys
import warnings


def schema():
    import numpy as np
    from petastorm.codecs import NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import IntegerType

    return Unischema("Digits", [
        UnischemaField("image_id", np.int32, (), ScalarCodec(IntegerType()), False),
        UnischemaField("image", np.float64, (8, 8), NdarrayCodec(), False),
        UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    ])


def main(argv: list[str] | None = None) -> int:
    import hashlib

    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row
    from sklearn.datasets import load_digits

    from dlpipe.spec import read_spec_from_argv
    from feature_jobs.materialize import column_stats
    from feature_jobs.session import spark_session

    spec = read_spec_from_argv(argv)
    digits = load_digits()
    sch = schema()

    def split_of(i: int) -> str:
        bucket = int.from_bytes(hashlib.sha256(str(i).encode()).digest()[:4], "little") % 100
        return "validation" if bucket < spec["validation_percent"] else "train"

    spark = spark_session("materialize digits")
    try:
        for split in ("train", "validation"):
            rows = [dict_to_spark_row(sch, {"image_id": i, "image": digits.images[i],
                                            "label": int(digits.target[i])})
                    for i in range(len(digits.images)) if split_of(i) == split]
            url = f"file://{spec['output_dir']}/{split}"
            with materialize_dataset(spark, url, sch, spec["row_group_size_mb"]):
                (spark.createDataFrame(rows, sch.as_spark_schema())
                 .repartition(int(spec["num_files"]), "image_id").sortWithinPartitions("image_id")
                 .write.mode("errorifexists").parquet(url))
            print(f"[digits] wrote {len(rows)} images to {url}", flush=True)
        # label statistics for the data gate's drift check (the class balance must not move)
        stats = {split: column_stats(spark.read.parquet(f"file://{spec['output_dir']}/{split}"), ["label"])
                 for split in ("train", "validation")}
        with open(f"{spec['output_dir']}/stats.json", "w") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
