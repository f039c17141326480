"""The SparkSession of a spark-submit application."""

from __future__ import annotations


def spark_session(app_name: str):
    """The session of a spark-submit application (master and conf come from spark-submit)."""
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.appName(app_name)
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "8")
             .getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    return spark
