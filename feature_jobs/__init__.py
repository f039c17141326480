"""Spark applications (spark-submit entry points). pyspark is imported inside functions only."""
