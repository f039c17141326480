"""The SparkSession of a spark-submit application."""

from __future__ import annotations


def spark_session(app_name: str):
    """The session of a spark-submit application (master and conf come from spark-submit)."""
    from dlpipe.spark_submit import spark_session as session

    return session(app_name)
