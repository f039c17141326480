"""RegisterModelOperator and PromoteModelOperator: publish gated models, move aliases safely."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator, Sequence

from dlpipe import audit, commit, registry, settings
from dlpipe.commit import StageResult
from dlpipe.errors import ConfigError, NotCommittedError
from dlpipe.lineage import judged, model_files, model_lineage, vouches_for
from dlpipe.pipeline_config import section
from dlpipe.registry import RegistryConfig
from dlpipe.runctx import RunContext
from dlpipe.storage import S3Store, Store, open_store, s3_config, shown_url
from operators.base import DlpipeOperator


def check_registry_root(operator: str, task_id: str, root: str | None) -> None:
    """A registry_root argument checked when the DAG is parsed (a templated one when it runs):
    a relative or misspelt root ('tmp/reg', 's3:/bucket') otherwise failed only the task."""
    if isinstance(root, str) and "{{" not in root and (problem := registry.root_problem(root)):
        raise ConfigError(f"{operator}(task_id={task_id!r}) argument registry_root", shown_url(root), problem)


def registry_store(root: str | None, aws_conn_id: str | None) -> Store:
    """The registry store; for ``s3://`` roots the boto3 client comes from an Airflow AWS
    connection (Amazon provider's S3Hook) when one is named, else from boto3's own chain; either
    way with ``storage.s3_config``'s timeouts and attempts."""
    if root and (problem := registry.root_problem(root)):  # an operator's argument, rendered
        raise ConfigError("registry_root", shown_url(root), problem)
    if not root and (problem := registry.root_problem(settings.registry_root())):
        raise ConfigError("DLPIPE_REGISTRY_ROOT", shown_url(settings.registry_root()), problem)
    root = root or settings.registry_root()
    client = None
    if root.startswith("s3://") and aws_conn_id:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from airflow.providers.common.compat.sdk import AirflowNotFoundException

        hook = S3Hook(aws_conn_id=aws_conn_id)
        try:  # the hook itself only warns, and goes on with boto3's own chain: another account's keys
            hook.get_connection(aws_conn_id)
        except AirflowNotFoundException:
            raise ConfigError("aws_conn_id", aws_conn_id, "no such Airflow connection: create it (Admin > "
                              "Connections, or AIRFLOW_CONN_<ID>), or fix the name in registry.aws_conn_id "
                              "or the operator's aws_conn_id") from None
        # dlpipe's deadlines, under whatever the connection's extra config_kwargs set: a hook given a
        # config ignores the connection's, so the two are merged (the connection's win)
        own = hook.conn_config.botocore_config
        client = S3Hook(aws_conn_id=aws_conn_id, config=s3_config().merge(own) if own else s3_config()).get_conn()
    return open_store(root, client)


# S3 refusals that a retry of the task cannot change (a wrong key pair, a missing bucket, no
# rights), with what to fix. As ConfigErrors they are not retried (operators.base.DETERMINISTIC).
_S3_REFUSALS = {
    "InvalidAccessKeyId": "the connection's access key id is not known to the server: fix its login",
    "SignatureDoesNotMatch": "the connection's secret key is wrong for its access key id: fix its password",
    "InvalidToken": "the connection's session token is not valid: fix or remove it",
    "NoSuchBucket": "the bucket does not exist at the connection's endpoint: create it, or fix the registry root",
    "AccessDenied": "the connection's credentials may not use this bucket: grant them s3:GetObject, s3:PutObject "
                    "and s3:ListBucket on it",
    "AllAccessDisabled": "all access to the bucket is disabled: use another bucket",
}


@contextlib.contextmanager
def s3_refusals(store: Store, aws_conn_id: str | None) -> Iterator[None]:
    """Turn an S3 refusal a retry cannot change into a ConfigError naming the bucket and the
    connection: a raw ClientError names neither, and Airflow would retry it to no purpose."""
    try:
        yield
    except Exception as exc:
        fix = _S3_REFUSALS.get(S3Store._code(exc)) if isinstance(store, S3Store) else None
        if fix is None:
            raise
        conn = f"aws_conn_id={aws_conn_id!r}" if aws_conn_id else "boto3's credential chain (no aws_conn_id)"
        raise ConfigError("registry bucket", store.bucket,
                          f"S3 refused the request with {S3Store._code(exc)}, using {conn}: {fix}") from exc


class _RegistryOperator(DlpipeOperator):
    ui_color = "#f3e5f5"

    def __init__(self, *, registry_root: str | None = None, aws_conn_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_registry_root(type(self).__name__, self.task_id, registry_root)
        self.registry_root, self.aws_conn_id = registry_root, aws_conn_id

    def _settings(self, pipeline: dict) -> tuple[RegistryConfig, Store]:
        cfg = section(pipeline, "registry", RegistryConfig)
        store = registry_store(self.registry_root or cfg.root, self.aws_conn_id or cfg.aws_conn_id)
        self._registry_uri = store.uri  # where OpenLineage says the model lives
        self._aws_conn_id = self.aws_conn_id or cfg.aws_conn_id  # named by an S3 refusal
        return cfg, store


class RegisterModelOperator(_RegistryOperator):
    """Register the model of a training run that passed its gates; returns ``name@version``.

    Registering the same model (same artifacts and lineage) again returns the existing version.

    :param training_id: manifest id of the training run (templated)
    :param gate_ids: manifest ids of the gates it passed (templated; required, not empty)
    :param registry_root: directory or ``s3://bucket/prefix`` (default: the pipeline's
        ``registry.root``, then ``DLPIPE_REGISTRY_ROOT``, then ``$DLPIPE_HOME/registry``)
    :param aws_conn_id: Airflow AWS connection for S3 (default: the pipeline's ``registry.aws_conn_id``,
        then boto3's credential chain)
    """

    pipeline_stage = "register_model"

    template_fields: Sequence[str] = ("pipeline_config", "training_id", "gate_ids", "registry_root")

    def __init__(self, *, training_id: str, gate_ids: list[str] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._gate_list(gate_ids, "no gate given")  # when the DAG is parsed; again once rendered
        self.training_id, self.gate_ids = training_id, gate_ids

    def _gate_list(self, gate_ids: Any, why: str) -> Any:
        """``gate_ids`` as a list (one gate's XCom renders as a string, not a list of one), or as
        it is while it is still a template or an XCom. None, or an empty id, is refused: a model
        no gate passed would become a deployable version unnoticed."""
        listed = [gate_ids] if isinstance(gate_ids, str) else gate_ids
        if not listed or (isinstance(listed, (list, tuple)) and not all(listed)):
            raise ConfigError(f"RegisterModelOperator(task_id={self.task_id!r}) argument gate_ids", gate_ids,
                              f"{why}: name the gates this model passed, e.g. gate_ids=[data_gate.output, "
                              "model_gate.output]; a model from outside a pipeline registers with "
                              "`dlpipe registry register`")
        return listed

    def _rendered_gates(self) -> list[str]:
        """The gate ids as the run rendered them. An empty one at run time is a gate task that
        returned nothing: it committed no verdict, yet the run went on (it was marked success
        by hand). Said so, rather than blaming the DAG's arguments."""
        listed = [self.gate_ids] if isinstance(self.gate_ids, str) else self.gate_ids
        if isinstance(listed, (list, tuple)) and listed and not all(listed):
            empty = [i for i, g in enumerate(listed) if not g]
            raise ConfigError(f"RegisterModelOperator(task_id={self.task_id!r}) argument gate_ids", listed,
                              f"gate_ids{empty} rendered empty: its gate task committed no verdict, yet this run "
                              f"went on (was it marked success by hand?). A model no gate passed is not "
                              f"registered: clear the gate task to judge the model again, or, to accept what it "
                              f"refused, see docs/operations.md, When a gate fails")
        return self._gate_list(self.gate_ids, "rendered to no gate")

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        training = commit.load_manifest(self.training_id, stage="training", field="training_id")
        gates = []
        gate_ids = self._rendered_gates()  # a template or XCom, as run
        for gid in gate_ids:  # refuse models whose gates did not commit a pass
            gate = commit.load_manifest(gid, stage="gates", field="gate_ids")
            gates.append(gate)
            verdict = gate["summary"].get("verdict")
            if verdict != "passed":
                raise NotCommittedError(f"gate {gid} verdict is {verdict!r}, not 'passed'")
            if not vouches_for(gate, training):
                raise NotCommittedError(
                    f"gate {gid} judged {judged(gate)}, not training {training['id']} "
                    f"or its dataset: pass the gates of this run (clear the gate tasks with the train task)")
        _, store = self._settings(pipeline)
        name = pipeline.get("model_name", "model")
        if training["name"] != name:  # trainings are named for their pipeline's model: another spec's
            raise ConfigError(f"{pipeline.get('_source', 'pipeline')}: model_name", name,
                              f"training_id {training['id']} trained model {training['name']!r}, not this pipeline's: "
                              f"two specs or DAG files with the same dag_id (each task then loads either)? Give "
                              f"each its own dag_id, or register it from its own pipeline")
        # what runs after registration in this DAG: `dlpipe summary` expects a promotion only where there is one
        try:  # their stages too: a hand-written DAG's promotion task has its own id
            follows = {"downstream_stages": sorted({getattr(t, "pipeline_stage", "-") for t in self.downstream_list})}
        except RuntimeError:  # an operator outside a DAG
            follows = {}
        audit.record("started", stage="registry", run=run, manifest_id=f"{name}@?", training=training["id"],
                     downstream=sorted(self.downstream_task_ids), **follows)
        try:
            with s3_refusals(store, self._aws_conn_id):
                record, created = registry.register(
                    store, name, commit.location(training) / training["summary"]["model_dir"],
                    metrics=training["summary"]["metrics"],
                    lineage=model_lineage(training["id"], list(gate_ids)), run=run,
                    committed_files=model_files(training))
        except BaseException as exc:
            audit.failed(exc, stage="registry", run=run, manifest_id=f"{name}@?")
            raise
        ref = f"{name}@{record['version']}"
        self.log.info("%s %s in %s", ref, "registered" if created else "already registered", store.uri)
        self.log.info("lineage: %s", json.dumps(record["lineage"], indent=1)[:4000])
        # OpenLineage inputs: the training and the verdicts the version was registered on
        inputs = [{"id": m["id"], "fingerprint": m["fingerprint"]} for m in (training, *gates)]
        return StageResult({"id": ref, "inputs": inputs,
                            "summary": {"version": record["version"], "created": created}},
                           skipped=not created)


class PromoteModelOperator(_RegistryOperator):
    """Point an alias at a registered version by compare-and-swap; returns ``name:alias``.

    :param model_ref: ``name@version`` (templated; usually ``register_task.output``)
    :param alias: alias to move (default: the pipeline's ``registry.promote_to``)
    :param reason: recorded in the alias history
    :param only_forward: leave the alias alone when it already points at a version trained on
        newer data (see ``registry.data_position``): backfills and retries of older dates must not
        move it back. ``False`` moves it regardless; deliberate rollbacks use
        ``dlpipe registry rollback``.
    """

    pipeline_stage = "promote_staging"

    template_fields: Sequence[str] = ("pipeline_config", "model_ref", "alias", "reason", "registry_root")

    def __init__(self, *, model_ref: str, alias: str | None = None, reason: str = "", only_forward: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        where = f"PromoteModelOperator(task_id={self.task_id!r}) argument"
        if not isinstance(only_forward, bool):  # the string "false" would count as True
            raise ConfigError(f"{where} only_forward", only_forward, "pass True or False, not a string")
        if isinstance(alias, str) and "{{" not in alias:  # a templated one is checked once rendered
            try:
                registry.check_alias(alias)
            except ConfigError as exc:
                raise ConfigError(f"{where} alias", exc.value, exc.fix) from None
        self.model_ref, self.alias, self.reason, self.only_forward = model_ref, alias, reason, only_forward

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        cfg, store = self._settings(pipeline)
        alias = self.alias or cfg.promote_to
        if not alias:
            raise ConfigError("alias", alias, "registry.promote_to is null in the pipeline, so it promotes no alias: "
                                              "set it, pass alias=, or leave this task out of the DAG")
        if not isinstance(self.model_ref, str) or not self.model_ref:
            raise ConfigError(f"PromoteModelOperator(task_id={self.task_id!r}) argument model_ref", self.model_ref,
                              "rendered to no model version: the task that registers it returned none (was it "
                              "marked success by hand?), so there is nothing to promote. Clear the registration "
                              "task, or promote a version by hand: dlpipe registry promote NAME@N ALIAS --reason "
                              "TEXT")
        name, version = registry.parse_ref(self.model_ref)
        # the alias history's "why": this task's reason, else the run and the reason it was started with
        reason = self.reason or f"{run.dag_id} {run.run_id}" + (f": {run.reason}" if run.reason else "")
        with s3_refusals(store, self._aws_conn_id):
            if self.only_forward:
                doc, moved = registry.promote_forward(store, name, alias, version, run=run, reason=reason)
            else:
                before = registry.get_alias(store, name, alias)
                doc = registry.promote(store, name, alias, version, run=run, reason=reason)
                moved = before is None or before["version"] != doc["version"]
        self.log.info("%s:%s -> version %d (%s)", name, alias, doc["version"], "moved" if moved else "unchanged")
        # OpenLineage input: the registered version this run asked the alias to point at
        return StageResult({"id": f"{name}:{alias}", "inputs": [{"id": f"{name}@{version}"}],
                            "summary": {"version": doc["version"], "moved": moved}},
                           skipped=not moved)
