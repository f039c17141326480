"""ETA (delivery-time) training: raw trips -> features -> dataset -> gates -> Horovod -> registry.

The registered version is then promoted to the ``staging`` alias (compare-and-swap, with history);
promotion to ``production`` is a deliberate step: ``dlpipe registry promote eta@N production``.

Each task commits its output through a manifest and skips when the same inputs, config and code
were committed before, so retries, clears and backfills are safe. Configuration lives in
``pipelines/eta_training.yaml`` and is read when a task runs, not when this file is parsed.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from operators import (DataGateOperator, HorovodTrainOperator, ModelGateOperator,
                       PetastormDatasetOperator, PromoteModelOperator, RegisterModelOperator,
                       SparkFeatureOperator)
from operators.base import run_params

# DLPIPE_ETA_PIPELINE points a deployment (or a test) at another copy of the pipeline YAML.
PIPELINE = os.environ.get("DLPIPE_ETA_PIPELINE") or str(
    Path(__file__).resolve().parent.parent / "pipelines" / "eta_training.yaml")

# DLPIPE_ETA_END_DATE (YYYY-MM-DD): the scheduler creates no run after this date. For test and
# demo deployments that hold a fixed range of data; triggered runs and backfills up to it still run.
END_DATE = os.environ.get("DLPIPE_ETA_END_DATE")

with DAG(
    dag_id="eta_training",
    description="Daily ETA regressor: Spark features, Petastorm dataset, GX gate, Horovod, registry",
    # A data-interval timetable: the run for logical date D processes [D, D+1 day).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    end_date=datetime.fromisoformat(END_DATE) if END_DATE else None,
    catchup=False,
    max_active_runs=1,
    tags=["dlpipe", "eta", "example"],
    default_args={"owner": "delivery", "retries": 2, "retry_delay": timedelta(seconds=30),
                  "pipeline_config": PIPELINE},
    doc_md=__doc__,
    params=run_params(),
) as dag:
    features = SparkFeatureOperator(task_id="extract_features")
    # A dataset's window holds the features of earlier days, which earlier runs compute. When a
    # backfill runs days in parallel, wait for the previous day's dataset (and so its features):
    # otherwise a dataset's content would depend on which run finished first.
    dataset = PetastormDatasetOperator(task_id="materialize_dataset", depends_on_past=True)
    data_gate = DataGateOperator(task_id="data_gate", dataset_id=dataset.output)
    train = HorovodTrainOperator(task_id="train", dataset_id=dataset.output,
                                 execution_timeout=timedelta(hours=2))
    model_gate = ModelGateOperator(task_id="model_gate", training_id=train.output)
    register = RegisterModelOperator(task_id="register_model", training_id=train.output,
                                     gate_ids=[data_gate.output, model_gate.output])

    promote = PromoteModelOperator(task_id="promote_staging", model_ref=register.output)

    features >> dataset >> data_gate >> train >> model_gate >> register >> promote
