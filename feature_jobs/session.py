"""The SparkSession of a spark-submit application.

Every Spark stage's fingerprint hashes this file (``stage_files.SHARED_SOURCES``), so the
session settings that change what a job writes live here: UTC for timestamps (the hour-of-day
features and the day partitions read it) and the shuffle width (how many files a job writes).
"""

from __future__ import annotations

# The settings that change a job's output; dlpipe.spark_submit adds what only runs it.
OUTPUT_CONF = {"spark.sql.session.timeZone": "UTC", "spark.sql.shuffle.partitions": "8"}


def spark_session(app_name: str):
    """The session of a spark-submit application (master and conf come from spark-submit)."""
    from dlpipe.spark_submit import spark_session as session

    return session(app_name, conf=OUTPUT_CONF)
