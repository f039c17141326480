"""ETA (delivery-time) training: raw trips -> features -> dataset -> gates -> Horovod -> registry.

The registered version is then promoted to the ``staging`` alias (compare-and-swap, with history);
promotion to ``production`` is a deliberate step: ``dlpipe registry promote eta@N production``.

Each task commits its output through a manifest and skips when the same inputs, config and code
were committed before, so retries, clears and backfills are safe. Configuration lives in
``pipelines/eta_training.yaml`` and is read when a task runs, not when this file is parsed.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable

from dlpipe.errors import ConfigError
from operators.base import run_params
from operators.factory import pipeline_tasks

# DLPIPE_ETA_PIPELINE points a deployment (or a test) at another copy of the pipeline YAML.
PIPELINE = os.environ.get("DLPIPE_ETA_PIPELINE") or str(
    Path(__file__).resolve().parent.parent / "pipelines" / "eta_training.yaml")

# DLPIPE_ETA_END_DATE (YYYY-MM-DD): the scheduler creates no run after this date. For test and
# demo deployments that hold a fixed range of data; triggered runs and backfills up to it still run.
END_DATE = os.environ.get("DLPIPE_ETA_END_DATE")
try:
    END = datetime.fromisoformat(END_DATE) if END_DATE else None
    if END is not None and END.tzinfo is None:  # a UTC day, whatever Airflow's default_timezone
        END = END.replace(tzinfo=timezone.utc)
except ValueError:
    raise ConfigError("DLPIPE_ETA_END_DATE", END_DATE, "use YYYY-MM-DD, or unset it for no end") from None

with DAG(
    dag_id="eta_training",
    description="Daily ETA regressor: Spark features, Petastorm dataset, GX gate, Horovod, registry",
    # A data-interval timetable: the run for logical date D processes [D, D+1 day).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),  # a naive one is in Airflow's default_timezone
    end_date=END,
    catchup=False,
    max_active_runs=1,
    tags=["dlpipe", "eta", "example"],
    default_args={"owner": "delivery", "retries": 2, "retry_delay": timedelta(seconds=30),
                  "pipeline_config": PIPELINE},
    doc_md=__doc__,
    params=run_params(),
) as dag:
    pipeline_tasks(train_timeout=timedelta(hours=2))
