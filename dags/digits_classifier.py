"""The vision team's digits classifier: an Airflow DAG generated from its spec (pipelines/digits.yaml).

The second kind of pipeline dlpipe ships (``kind: digits_classifier``): an image dataset in a
Petastorm ndarray field and a CNN, through the same operators and guarantees as the ETA DAGs.
"""

from operators.factory import pipeline_dag

dag = pipeline_dag("pipelines/digits.yaml")
