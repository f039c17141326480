"""Before `make demo` runs ``airflow dags test DAG LOGICAL_DATE``: refuse, with the way out, when
an earlier run of the DAG would hold it forever.

Each run's ``materialize_dataset`` waits for the previous run's (``depends_on_past``, by logical
date). When that one did not succeed (a refused midnight run, a failed day), ``airflow dags test``
prints "No tasks to run" every second and never ends; the scheduler would leave the run waiting.

Usage: python scripts/demo_preflight.py DAG_ID LOGICAL_DATE   (exit 1 when held, with advice)
"""

from __future__ import annotations

import sys
from datetime import datetime

DONE = ("success", "skipped")


def main(dag_id: str, logical: str) -> int:
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    when = datetime.fromisoformat(logical)
    with create_session() as session:
        previous = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date < when)
                                  .order_by(DagRun.logical_date.desc()).limit(1))
        if previous is None:
            return 0
        state = session.scalar(select(TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == previous.run_id,
            TaskInstance.task_id == "materialize_dataset"))
        run_id, earlier = previous.run_id, previous.logical_date
    if state is not None and str(getattr(state, "value", state)) in DONE:
        return 0
    print(f"[demo] error: the run {run_id} (logical date {earlier:%Y-%m-%dT%H:%M%z}) holds this one: its "
          f"materialize_dataset is {getattr(state, 'value', state) or 'not run'}, and each run's dataset task waits "
          f"for the previous run's (depends_on_past), so `airflow dags test` would wait for it, forever unless a "
          f"scheduler is running that run (a `dags test` stopped with Ctrl-C leaves its run unfinished). In this "
          f"project-local Airflow, forget the DAG's runs (committed data stays and is reused) and run again:\n"
          f"  airflow dags delete {dag_id} --yes && make demo\n"
          f"or, to keep the run, clear it so that it runs again (docs/operations.md#alerting).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
