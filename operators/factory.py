"""Pipelines from spec files: one YAML file describes a team's whole pipeline and its DAG.

A spec is a pipeline YAML (its ``kind:``, see ``operators.kinds``, and the sections the stages
read: ``features``, ``dataset``, ``data_gate``, ``train``, ``scale``, ``model_gate``,
``registry``) plus a ``dag:`` section (id, owner, schedule, dates, retries, timeouts). Every section is validated when the DAG file is
parsed, so a typo shows up as an import error in the Airflow UI that names the spec file, the
field path, the bad value and the fix, not as a failed task at 3 a.m. (The data gate's Great
Expectations arguments are checked when a run's first task starts, before any stage: importing
Great Expectations at every parse would cost seconds.)

Each spec gets its own two-line DAG file (Airflow's safe mode only parses files that mention
both "airflow" and "dag", hence the comment)::

    # Airflow DAG from a dlpipe spec
    from operators.factory import pipeline_dag
    dag = pipeline_dag("pipelines/marketplace_eta.yaml")

Airflow reports import errors per Python file, so one file per spec is what lets a bad spec
break only its own DAG while the DagBag names the file and the reason.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dlpipe.errors import ConfigError
from dlpipe.pipeline_config import load_pipeline, section
from dlpipe.registry import RegistryConfig
from operators.kinds import kind_of

SCHEDULE_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly"}


class DagSpec(BaseModel):
    """The ``dag:`` section: how Airflow schedules and runs the pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dag_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,200}$", description="unique DAG id")
    owner: str = Field(min_length=1, description="the team that answers for it")
    schedule: str = Field("@daily", description="cron expression or @hourly/@daily/@weekly/@monthly; "
                                                "a kind with a feature stage needs whole UTC days (@daily)")
    start_date: date = Field(description="first data interval")
    end_date: date | None = Field(None, description="no scheduled run after this date")
    catchup: bool = Field(False, description="create the runs missed since start_date")
    max_active_runs: int = Field(1, strict=True, ge=1, le=64, description="runs at once (backfills set their own)")
    retries: int = Field(2, strict=True, ge=0, le=10, description="retries of transient failures")
    retry_delay_s: int = Field(60, strict=True, ge=0, description="wait before a retry")
    train_timeout_s: int = Field(7200, strict=True, ge=60, description="execution timeout of the training task")
    registry_timeout_s: int = Field(1800, strict=True, ge=60, description="execution timeout of the registration "
                                    "and promotion tasks: a registry store that stops answering must not hold them")
    tags: list[str] = Field(default_factory=list, description="shown and filterable in the UI")
    description: str = Field("", description="one line for the DAG list")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if value in SCHEDULE_PRESETS:
            return value
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"not a cron expression or one of {sorted(SCHEDULE_PRESETS)}")
        return value


def check_pipeline(pipeline: dict[str, Any], *, at_run: bool = False) -> None:
    """Every section of a pipeline YAML known to its kind and valid, whichever stage reads it.

    Run when a spec's DAG is parsed and again when any dlpipe task starts (``at_run``: then the
    data gate's Great Expectations arguments too), so a misspelt section (``trian:``) or
    argument fails the first task, naming the file and the field, instead of leaving every
    default in force or failing after the Spark stages committed."""
    path = pipeline.get("_source", "?")
    kind = kind_of(pipeline)
    check_kind(kind)
    try:
        _check_sections(pipeline, kind, path, at_run)
    except ConfigError as exc:
        if "kind" in pipeline:
            raise
        # a spec copied from another team's may name no kind: say which one it was judged as
        raise ConfigError(exc.field, exc.value, f"{exc.fix} (this spec names no kind: it is judged as a {kind.name} "
                                                f"pipeline, the default; set kind: if it is another)") from None
    from training.stages import ENTRY_SOURCES, entry_files

    if kind.train_entry not in ENTRY_SOURCES:  # else the train task fails after three stages committed
        raise ConfigError(f"{path}: kind", kind.name,
                          f"its train_entry {kind.train_entry!r} has no entry in training/stages.py ENTRY_SOURCES; "
                          f"list the training modules it runs there")
    try:
        entry_files(kind.train_entry)  # the module and its listed files exist, where the workers import them
    except ConfigError as exc:
        raise ConfigError(f"{path}: kind {kind.name}: {exc.field}", exc.value, exc.fix) from None
    if "model_name" not in pipeline:  # a shared default would mix teams' versions, aliases and champions
        raise ConfigError(f"{path}: model_name", "(missing)",
                          "add model_name: the registry name of this pipeline's models (e.g. fraud_eta); "
                          "pipelines with the same name share versions and aliases, and each one's model "
                          "gate judges against the other's production model")
    name = pipeline["model_name"]
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,62}", name):
        raise ConfigError(f"{path}: model_name", name, "use lower-case letters, digits, '-' and '_'")


def check_kind(kind: Any) -> None:
    """A kind's own declarations, which a spec's checks are made against: a kind that forgot
    them let a misspelt gate column through, or blamed the spec's metric for the kind's gap."""
    where = f"operators/kinds.py: kind {kind.name}"
    if not kind.gate_metrics or not kind.baseline_metrics:
        missing = "gate_metrics" if not kind.gate_metrics else "baseline_metrics"
        raise ConfigError(f"{where}: {missing}", "()", "list the validation metrics its training reports that a "
                                                       "model gate may judge (gate_metrics), and the naive "
                                                       "predictor's values of them (baseline_metrics)")
    if both := sorted(set(kind.gate_metrics) & set(kind.baseline_metrics)):  # a gate judging a metric against itself
        raise ConfigError(f"{where}: baseline_metrics", both, "a metric cannot be its own baseline: list the naive "
                                                              "predictor's values under other names")
    if kind.dataset_columns is None:
        raise ConfigError(f"{where}: dataset_columns", None, "give the function that lists its datasets' columns: "
                                                             "the data gate's column names are checked against it")


def _check_sections(pipeline: dict[str, Any], kind: Any, path: str, at_run: bool) -> None:
    sections = kind.sections()
    known = set(sections) | {"dag", "kind", "model_name", "_source"}
    for key in sorted(set(pipeline) - known):
        raise ConfigError(f"{path}: {key}", pipeline[key],
                          f"remove it or fix its name; a {kind.name} pipeline has the sections "
                          f"{sorted(known - {'_source'})}")
    for name, model in sections.items():
        checked = section(pipeline, name, model)
        if name == "data_gate":
            from dlpipe.gates import check_expectations, check_gate_columns

            check_gate_columns(checked, kind.dataset_columns(), path)
            if at_run:
                check_expectations(checked, path)
    gate = section(pipeline, "model_gate", sections["model_gate"])
    given = pipeline.get("model_gate") or {}
    for field, allowed, what in (("metric", kind.gate_metrics, "the model's metric on the validation split"),
                                 ("baseline_metric", kind.baseline_metrics, "the naive predictor's value of it")):
        value = getattr(gate, field)
        if value not in allowed:
            default = "" if field in given else f" (model_gate.{field} is not set: this is its default)"
            raise ConfigError(f"{path}: model_gate.{field}", value,
                              f"use one of {list(allowed)}: {what} in a {kind.name} training run (lower is "
                              f"better); training-split metrics are not judged, as an overfit model wins them"
                              f"{default}")


def _daily_at_midnight(schedule: str) -> bool:
    """Whether every interval is one whole UTC day: the cron fires at 00:00 every day of every
    month. Judged from its fields, not from a few firings: '0 0 * * 1-6' fires at midnight a day
    apart most of the week, and then leaves a two-day interval."""
    from croniter import croniter

    if schedule in ("@daily", "@midnight"):
        return True
    # each field as the values it allows; croniter writes a field that allows all of them
    # ('*', '*/1', '1-31', '0-6') as ['*']
    expanded, _ = croniter.expand(schedule)
    return expanded == [[0], [0], ["*"], ["*"], ["*"]]


def spec_path(path: str | Path, dag_file: str | Path | None = None) -> Path:
    """Where a spec named by ``path`` is: an absolute path as it is; a relative one next to the
    DAG file that names it, then in that file's parent folder (the project root, as in
    ``dags/`` beside ``pipelines/``); without a DAG file, in the working directory. Not the
    working directory otherwise (the scheduler's and the workers' differ), and not dlpipe's own
    source tree: a team's DAG must not pick up an example spec of the same relative name."""
    path = Path(path)
    if path.is_absolute():
        return path
    bases = [Path(dag_file).resolve().parent, Path(dag_file).resolve().parent.parent] if dag_file else [Path.cwd()]
    tried = [base / path for base in bases]
    found = next((candidate for candidate in tried if candidate.is_file()), None)
    if found is None:
        raise ConfigError("pipeline_config", str(path), "no such spec file; looked in "
                          f"{', '.join(str(t) for t in tried)}: give an absolute path or one relative "
                          "to the DAG file's folder or its parent")
    return found


def load_spec(path: str | Path, dag_file: str | Path | None = None) -> tuple[DagSpec, dict[str, Any]]:
    """Validate a whole spec; ConfigError names the file, the field path, the value and the fix."""
    path = spec_path(path, dag_file)
    pipeline = load_pipeline(path)
    check_pipeline(pipeline)
    if "dag" not in pipeline:
        raise ConfigError(f"{path}: dag", None, "add a dag: section (dag_id, owner, schedule, start_date, ...)")
    spec = section(pipeline, "dag", DagSpec)
    if kind_of(pipeline).features is not None and not _daily_at_midnight(spec.schedule):
        raise ConfigError(f"{path}: dag.schedule", spec.schedule,
                          "this kind's feature stage writes one partition per UTC day, so every run "
                          "must cover exactly one day: use @daily (or '0 0 * * *'); a cron that skips "
                          "days gives some runs several days")
    scale = section(pipeline, "scale", kind_of(pipeline).sections()["scale"])
    from operators.train import TEARDOWN_S

    if spec.train_timeout_s < scale.run_timeout_s + TEARDOWN_S:
        raise ConfigError(f"{path}: dag.train_timeout_s", spec.train_timeout_s,
                          f"must be at least {TEARDOWN_S} s longer than scale.run_timeout_s={scale.run_timeout_s}: "
                          f"Airflow would "
                          f"kill the training task first and retry it, instead of dlpipe ending the job "
                          f"with every rank's output; raise it or lower scale.run_timeout_s")
    if spec.end_date and spec.end_date < spec.start_date:
        raise ConfigError(f"{path}: dag.end_date", spec.end_date.isoformat(),
                          f"must not be before dag.start_date {spec.start_date.isoformat()}")
    if twins := same_dag_id(path, spec.dag_id):
        raise ConfigError(f"{path}: dag.dag_id", spec.dag_id,
                          f"{', '.join(map(str, twins))} declares it too. Airflow parses each DAG file on its own, "
                          f"so it would not notice: the DAG would flip between the two, and one run could take "
                          f"some tasks from each spec (another team's features, training and model name). Give "
                          f"each spec its own dag_id")
    return spec, pipeline


def same_dag_id(path: Path, dag_id: str) -> list[Path]:
    """Other specs in ``path``'s folder that declare ``dag_id`` too. One that does not load
    is left to its own DAG file, which reports it."""
    twins = []
    for other in sorted([*path.parent.glob("*.yaml"), *path.parent.glob("*.yml")]):
        if other.resolve() == path.resolve():
            continue
        try:
            dag = load_pipeline(other).get("dag")
        except ConfigError:
            continue
        if isinstance(dag, dict) and dag.get("dag_id") == dag_id:
            twins.append(other)
    return twins


def pipeline_dag(path: str | Path):
    """The DAG of one spec: [features ->] dataset -> data gate -> train -> model gate -> register
    -> promote (the feature task only for kinds that have a feature stage). A relative ``path``
    is found from the calling DAG file (``spec_path``)."""
    import sys

    from airflow.sdk import DAG, CronDataIntervalTimetable

    from operators.base import run_params

    spec, pipeline = load_spec(path, sys._getframe(1).f_globals.get("__file__"))
    # UTC midnight: a naive datetime is read in Airflow's [core] default_timezone, which west of
    # UTC would skip the spec's first day
    day = lambda d: datetime(d.year, d.month, d.day, tzinfo=timezone.utc) if d else None  # noqa: E731
    with DAG(
        dag_id=spec.dag_id,
        description=spec.description or f"dlpipe pipeline from {Path(pipeline['_source']).name}",
        schedule=CronDataIntervalTimetable(spec.schedule, timezone="UTC"),
        start_date=day(spec.start_date),
        end_date=day(spec.end_date),
        catchup=spec.catchup,
        max_active_runs=spec.max_active_runs,
        tags=sorted({"dlpipe", *spec.tags}),
        default_args={"owner": spec.owner, "retries": spec.retries,
                      "retry_delay": timedelta(seconds=spec.retry_delay_s),
                      "pipeline_config": pipeline["_source"]},
        doc_md=f"Generated from `{pipeline['_source']}` by `operators.factory.pipeline_dag`; "
               f"edit the spec, not this DAG.",
        params=run_params(),
    ) as dag:
        pipeline_tasks(train_timeout=timedelta(seconds=spec.train_timeout_s),
                       registry_timeout=timedelta(seconds=spec.registry_timeout_s),
                       features=kind_of(pipeline).features is not None,
                       promote=section(pipeline, "registry", RegistryConfig).promote_to is not None)
    return dag


def pipeline_tasks(*, train_timeout: timedelta,
                   registry_timeout: timedelta = timedelta(seconds=DagSpec.model_fields["registry_timeout_s"].default),
                   features: bool = True, promote: bool = True) -> None:
    """The stages and their order, added to the DAG being defined (``with DAG(...)``); without
    ``features`` the chain starts at the dataset, without ``promote`` (``registry.promote_to:
    null``) it ends at the registration.

    Shared by the factory and by ``dags/eta_training.py``, so every dlpipe DAG runs the same
    chain with the same guarantees.
    """
    from operators import (DataGateOperator, HorovodTrainOperator, ModelGateOperator,
                           PetastormDatasetOperator, PromoteModelOperator, RegisterModelOperator,
                           SparkFeatureOperator)

    # A dataset's window holds the features of earlier days, which earlier runs compute. When a
    # backfill runs days in parallel, wait for the previous day's dataset (and so its features):
    # otherwise a dataset's content would depend on which run finished first.
    dataset = PetastormDatasetOperator(task_id="materialize_dataset", depends_on_past=True)
    data_gate = DataGateOperator(task_id="data_gate", dataset_id=dataset.output)
    train = HorovodTrainOperator(task_id="train", dataset_id=dataset.output, data_gate_id=data_gate.output,
                                 execution_timeout=train_timeout)
    model_gate = ModelGateOperator(task_id="model_gate", training_id=train.output)
    register = RegisterModelOperator(task_id="register_model", training_id=train.output,
                                     gate_ids=[data_gate.output, model_gate.output], execution_timeout=registry_timeout)
    dataset >> data_gate >> train >> model_gate >> register
    if promote:
        register >> PromoteModelOperator(task_id="promote_staging", model_ref=register.output,
                                         execution_timeout=registry_timeout)
    if features:
        SparkFeatureOperator(task_id="extract_features") >> dataset
    if dataset.dag:
        tasks_run_to_the_end(dataset.dag)


def tasks_run_to_the_end(dag: Any) -> None:
    """Let manual runs of a DAG's last days do their work: call it after adding the tasks of a
    DAG that has an ``end_date``.

    A DAG's end_date E stops its schedule; Airflow also copies it to every task, and a run dated
    after a task's end_date gets no instance of it: a manual run processing day E-1 or E (dated
    inside the day after) succeeded at once with nothing done, and then held the next run's
    dataset task (depends_on_past). The tasks end two days later: those runs do their work."""
    if dag.end_date:
        for task in dag.tasks:
            task.end_date = dag.end_date + timedelta(days=2)
