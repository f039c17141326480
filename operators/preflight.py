"""Before ``airflow dags test DAG LOGICAL_DATE``: refuse, with the way out, when an earlier run of
the DAG would hold it forever, or when the date is past the DAG's end date (a run of no tasks).
``python -m operators.preflight DAG_ID LOGICAL_DATE [--task T]`` exits 1 with the reason and the
way out (``make demo`` runs it first).

A task with ``depends_on_past`` (the dataset task of every dlpipe pipeline) waits for its own
previous run's, by logical date. When that one did not succeed (a refused midnight run, a failed
day, a run a stopped ``dags test`` left unfinished), ``airflow dags test`` prints "No tasks to
run" every second and never ends, and a scheduler leaves the run waiting.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

DONE = ("success", "skipped")
HELD_TASKS = ("materialize_dataset",)  # the dataset task of pipeline_dag's DAGs (depends_on_past)


def serialized_dag(dag_id: str) -> Any:
    """The DAG as the database last serialized it, or None when it never was."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return SerializedDagModel.get_dag(dag_id, session=session)


def held_by(dag_id: str, logical: datetime, tasks: tuple[str, ...] = HELD_TASKS, dag: Any = None) -> str | None:
    """Why a run of ``dag_id`` at ``logical`` would wait forever on the run before it, or None.
    ``dag``: its serialized DAG (``serialized_dag``), None when it never was serialized."""
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType
    from sqlalchemy import select

    with create_session() as session:
        # the previous run as Airflow's PrevDagrunDep picks it: with catchup, manual runs do not count
        before = select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date < logical)
        if dag is not None and dag.catchup:
            before = before.where(DagRun.run_type != DagRunType.MANUAL)
        previous = session.scalar(before.order_by(DagRun.logical_date.desc()).limit(1))
        if previous is None:
            return None
        states = dict(session.execute(select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == previous.run_id,
            TaskInstance.task_id.in_(tasks))).all())
        run_id, earlier = previous.run_id, previous.logical_date
    for task in tasks:
        state = states.get(task)
        state = str(getattr(state, "value", state)) if state is not None else None
        if state not in DONE:
            return (f"the run {run_id} (logical date {earlier:%Y-%m-%dT%H:%M%z}) holds this one: its {task} is "
                    f"{state or 'not run'}, and each run's {task} waits for the previous run's "
                    f"(depends_on_past), so `airflow dags test` would wait for it, forever unless a scheduler "
                    f"is running that run (a `dags test` stopped with Ctrl-C leaves its run unfinished). Keep "
                    f"the run and clear it so that a scheduler runs it again, or mark its {task} skipped in the "
                    f"UI to go on without that day (docs/operations.md#alerting). On a scratch database only "
                    f"(it deletes every run's history; committed data stays and is reused): airflow dags "
                    f"delete {dag_id} --yes")
    return None


def past_end(dag_id: str, logical: datetime, tasks: tuple[str, ...], dag: Any) -> str | None:
    """Why a run of ``dag_id`` at ``logical`` would run none of ``tasks``, or None: Airflow makes
    no task instance past a task's end date (the DAG's ``end_date`` by default), so `airflow dags
    test` marks such a run successful having run nothing, and that run, without a dataset, then
    holds every later one. Judged from the DAG as last serialized (nothing when it never was)."""
    if dag is None:
        return None
    dag_end = getattr(dag, "end_date", None)
    for task in tasks:
        end = getattr(dag.task_dict.get(task), "end_date", None) or dag_end
        if end is not None and logical > end:
            set_by = f" (from the DAG's end date {dag_end.isoformat()})" if dag_end and dag_end != end else ""
            return (f"the logical date {logical.isoformat()} is after {end.isoformat()}, the last one {dag_id}'s "
                    f"{task} runs at{set_by}: Airflow "
                    f"runs no task of such a run (its {task} included), `airflow dags test` marks it successful "
                    f"having done nothing, and the run then holds every later one (depends_on_past). Give a "
                    f"logical date up to the end date, or move the end date (dag.end_date in the spec, "
                    f"DLPIPE_ETA_END_DATE for the example DAG) and run `airflow dags reserialize`")
    return None


def _logical_date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a logical date with its zone; use "
                                         f"YYYY-MM-DDTHH:MM:SS+00:00, e.g. 2026-01-05T06:00:00+00:00")
    return when


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m operators.preflight", description=__doc__.splitlines()[0])
    p.add_argument("dag_id")
    p.add_argument("logical_date", type=_logical_date, help="the logical date dags test is given, with its zone")
    p.add_argument("--task", action="append", help="a task with depends_on_past (default: materialize_dataset); "
                                                   "repeat for several")
    args = p.parse_args(argv)
    tasks = tuple(args.task or HELD_TASKS)
    dag = serialized_dag(args.dag_id)
    why = past_end(args.dag_id, args.logical_date, tasks, dag) or held_by(args.dag_id, args.logical_date, tasks, dag)
    if why:
        print(f"preflight: error: {why}", file=sys.stderr)
        return 1
    print(f"{args.dag_id} {args.logical_date.isoformat()}: no earlier run holds it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
