"""What every dlpipe operator shares: run identity, pipeline config, error translation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dlpipe import audit, settings
from dlpipe.commit import StageResult
from dlpipe.errors import ConfigError, GateFailed, InputNotReady, IntegrityError, NewerFormatError, NotCommittedError
from dlpipe.pipeline_config import load_pipeline
from dlpipe.runctx import RunContext

log = logging.getLogger(__name__)

# Failures that will fail the same way on every retry: fail the task without retrying (except
# InputNotReady: an input that may still come, such as the interval's raw data landing late).
DETERMINISTIC = (ConfigError, GateFailed, IntegrityError, NotCommittedError, NewerFormatError)


REASON_MAX = 500  # characters of a run's reason, kept in every audit event of the run


def run_params() -> dict:
    """The params every dlpipe DAG takes, validated by JSON schema when a run is triggered."""
    from airflow.sdk import Param

    return {"reason": Param("", type="string", maxLength=REASON_MAX, title="Reason",
                            description="Why this run was started; kept with every stage's audit event.")}


def run_context(context: Any, pipeline_stage: str = "-") -> RunContext:
    """The Airflow run/task/try (and who triggered it, and the task's place in the chain) for
    manifests and audit events."""
    ti, dag_run = context["ti"], context["dag_run"]
    run_type = getattr(dag_run, "run_type", "-")
    return RunContext(
        dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id, try_number=int(ti.try_number),
        # the Task SDK's DagRunType prints as 'DagRunType.SCHEDULED': its value is 'scheduled'
        triggered_by=getattr(dag_run, "triggering_user_name", None) or str(getattr(run_type, "value", run_type)),
        # a backfill records the user who created it as triggering_user_name: kept apart, so
        # both who and how survive
        run_type=str(getattr(run_type, "value", run_type)),
        reason=_reason(context),
        pipeline_stage=pipeline_stage,
    )


def _reason(context: Any) -> str:
    """The run's ``reason`` param; from the run's conf when params do not carry it ([core]
    dag_run_conf_overrides_params off). Conf keys the DAG does not declare are named in the
    task log: ``{"reasn": ...}`` was accepted and the reason silently lost."""
    params = context.get("params") or {}
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    declared = set(getattr(context.get("dag"), "params", None) or {})
    unknown = sorted(set(conf) - declared) if declared and isinstance(conf, dict) else []
    if unknown:
        log.warning("this run's conf has keys %s that are not params of the DAG (its params: %s): they are "
                    "ignored; a misspelt key?", unknown, sorted(declared))
    reason = params.get("reason") or (conf.get("reason") if isinstance(conf, dict) else "") or ""
    if not isinstance(reason, str) or len(reason) > REASON_MAX:  # a conf the params' schema never saw
        log.warning("this run's reason is not text of at most %d characters (the reason param's schema, which "
                    "a conf read past the params does not go through): kept as its first %d characters",
                    REASON_MAX, REASON_MAX)
        reason = (reason if isinstance(reason, str) else json.dumps(reason, default=str))[:REASON_MAX]
    return reason


def brief(summary: dict, limit: int = 240, field_limit: int = 60) -> str:
    """The summary for a task log line. Small fields print as they are; of a bulky dict only its
    small fields (training metrics without the per-rank list); other bulky fields (a dataset's
    column statistics and schema run to kilobytes) are only named: they are in the manifest."""
    out: dict = {}
    left_out: list[str] = []
    for key, value in summary.items():
        if len(repr(value)) <= limit:
            out[key] = value
            continue
        small = {k: v for k, v in value.items() if len(repr(v)) <= field_limit} if isinstance(value, dict) else {}
        if small:
            out[key] = small
            left_out += [f"{key}.{k}" for k in value if k not in small]
        else:
            left_out.append(key)
    return f"{out}" + (f"; {', '.join(left_out)}: in the manifest" if left_out else "")


class DlpipeOperator(BaseOperator):
    """Base class: subclasses implement ``run_stage(context, pipeline, run)``.

    ``pipeline_config`` is the path of the pipeline YAML; it is read in ``execute()``, never at
    DAG parse time. The task returns the committed manifest id (a short string) as its XCom.
    """

    template_fields: Sequence[str] = ("pipeline_config",)
    ui_color = "#e8f1fb"
    # the task's place in the chain, named as the shipped DAGs name its task; subclasses inherit
    # it, so `dlpipe summary` knows a team's own task ids and subclasses
    pipeline_stage = "-"

    def __init__(self, *, pipeline_config: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_config = pipeline_config
        self._killed = False  # set by on_kill, which can come before the stage starts its tool

    def on_kill(self) -> None:
        """Airflow 3's SIGTERM handler calls this and returns, so the task may go on: operators
        that start a tool check ``_killed`` before or as they start it. The kill is audited
        first (a stage with no tool to stop, a gate or an upload, is SIGKILLed 5 s later and
        would leave only its ``started`` event, which reads like a task still running), then
        the tool is stopped, whose own wait or failure must not lose the event. Outside
        ``execute`` (a kill after the task finished, Airflow's call after a timeout that
        ``execute`` already audited) nothing is audited."""
        self._killed = True
        try:
            self._audit_kill()
        finally:
            self.stop_tools()

    def _audit_kill(self) -> None:
        run = getattr(self, "_run", None)
        if run is None or getattr(self, "_kill_audited", False):
            return
        try:  # in a signal handler: never wait long for a lock the interrupted code may hold
            written = audit.record("failed", stage=type(self).__name__, run=run, lock_wait_s=1.0,
                                   error="killed: Airflow stopped the task (SIGTERM: its execution_timeout, "
                                         "a clear or mark from the UI, or a lost heartbeat)")
        except Exception as exc:  # the kill goes on whatever the log does
            self.log.warning("could not audit the kill: %s", exc)
            return
        self._kill_audited = written is not None  # not written: the failure it causes is audited instead

    def pipeline_path(self) -> str:
        """``pipeline_config``, a relative path found as ``pipeline_dag`` finds one: next to the
        DAG file, then in its parent folder (not the worker's working directory, which differs
        from the scheduler's and between deployments)."""
        from operators.factory import spec_path  # here: factory imports the operators

        try:
            dag_file = self.dag.fileloc
        except RuntimeError:  # an operator outside a DAG (a test, a script): the path as given
            return self.pipeline_config
        try:
            return str(spec_path(self.pipeline_config, dag_file))
        except ConfigError:
            if not Path(self.pipeline_config).is_file():
                raise
            # found only from the working directory, as before: works where it is fixed (an image)
            self.log.warning("pipeline_config %s was found only in the working directory %s; give it absolute, "
                             "or relative to the DAG file's folder or its parent: workers' working directories "
                             "differ", self.pipeline_config, Path.cwd())
            return self.pipeline_config

    def stop_tools(self) -> None:
        """Stop the tools this task started (spark-submit, horovodrun); none here."""

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        raise NotImplementedError

    def execute(self, context: Any) -> str:
        run = self._run = run_context(context, self.pipeline_stage)
        self._kill_audited = False
        try:
            pipeline = load_pipeline(self.pipeline_path())
            from operators.factory import check_pipeline  # here: factory imports the operators

            check_pipeline(pipeline, at_run=True)
            result = self.run_stage(context, pipeline, run)
        except BaseException as exc:
            # every attempt leaves an event, also one that failed before its stage began (a bad
            # spec, an input not committed): `dlpipe audit` and `dlpipe summary` show it; a
            # kill that on_kill audited is not audited again as what it caused
            if not getattr(self, "_kill_audited", False):
                audit.failed(exc, stage=type(self).__name__, run=run)
            if isinstance(exc, DETERMINISTIC) and not isinstance(exc, InputNotReady):
                raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
            raise
        finally:
            self._run = None  # a kill from now on is not this attempt's to audit
        verb = "skipped (already committed)" if result.skipped else "committed"
        self.log.info("%s %s; summary: %s", result.id, verb, brief(result.manifest.get("summary") or {}))
        self._committed = result.manifest
        return result.id

    def get_openlineage_facets_on_complete(self, task_instance: Any):
        """OpenLineage: the committed inputs and the output of this stage, as datasets.

        Named by where they live (``dlpipe.lineage.openlineage_dataset``): a stage partition by
        its directory under ``DLPIPE_HOME``, a model by its registry root. The fingerprint (or
        registry version) is the dataset version, so a lineage backend links the exact inputs
        of every model. Called by the OpenLineage provider when installed.
        """
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.facet_v2 import dataset_version_dataset

        from dlpipe.lineage import openlineage_dataset

        manifest = getattr(self, "_committed", None)
        if not manifest:
            return OperatorLineage()
        home = settings.home()
        registry_uri = getattr(self, "_registry_uri", None) or settings.registry_root()

        def dataset(ref: str) -> Dataset:
            namespace, name, version = openlineage_dataset(ref, home=home, registry_uri=registry_uri)
            facet = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)
            return Dataset(namespace=namespace, name=name, facets={"version": facet} if version else {})

        return OperatorLineage(inputs=[dataset(i) for i in self.lineage_inputs(manifest)],
                               outputs=[dataset(manifest["id"])])

    def lineage_inputs(self, manifest: dict) -> list[str]:
        """Ids of what the committed stage read, for OpenLineage: its manifest's inputs."""
        return [i["id"] for i in manifest.get("inputs", [])]
