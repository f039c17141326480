"""The marketplace team's ETA pipeline, generated from its spec (pipelines/marketplace_eta.yaml).

One spec, one two-line DAG file: a bad spec then breaks only this DAG, and the Airflow UI shows
the spec file, the field, the value and the fix as this file's import error.
"""

from operators.factory import pipeline_dag

dag = pipeline_dag("pipelines/marketplace_eta.yaml")
