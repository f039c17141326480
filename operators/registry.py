"""RegisterModelOperator: publish a gated model as a new immutable registry version."""

from __future__ import annotations

import json
from typing import Any, Sequence

from dlpipe import audit, commit, registry, settings
from dlpipe.commit import StageResult
from dlpipe.errors import NotCommittedError
from dlpipe.lineage import model_lineage
from dlpipe.runctx import RunContext
from dlpipe.storage import open_store
from operators.base import DlpipeOperator


class RegisterModelOperator(DlpipeOperator):
    """Register the model of a training run that passed its gates.

    Registering the same model (same artifacts and lineage) again returns the existing version.

    :param training_id: manifest id of the training run (templated)
    :param gate_ids: manifest ids of the gates it passed (templated)
    :param registry_root: directory or ``s3://bucket/prefix``; default ``DLPIPE_REGISTRY_ROOT`` or
        ``$DLPIPE_HOME/registry``. S3 endpoint and credentials come from boto3's chain
        (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...).
    """

    template_fields: Sequence[str] = ("pipeline_config", "training_id", "gate_ids", "registry_root")
    ui_color = "#f3e5f5"

    def __init__(self, *, training_id: str, gate_ids: list[str] | None = None,
                 registry_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.training_id, self.gate_ids = training_id, gate_ids or []
        self.registry_root = registry_root

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        training = commit.load_manifest(self.training_id)
        for gid in self.gate_ids:  # refuse models whose gates did not commit a pass
            verdict = commit.load_manifest(gid)["summary"].get("verdict")
            if verdict != "passed":
                raise NotCommittedError(f"gate {gid} verdict is {verdict!r}, not 'passed'")
        store = open_store(self.registry_root or settings.registry_root())
        name = pipeline.get("model_name", "model")
        audit.record("started", stage="registry", run=run, manifest_id=f"{name}@?", training=training["id"])
        try:
            record, created = registry.register(
                store, name, commit.location(training) / training["summary"]["model_dir"],
                metrics=training["summary"]["metrics"],
                lineage=model_lineage(training["id"], list(self.gate_ids)), run=run)
        except BaseException as exc:
            audit.record("failed", stage="registry", run=run, manifest_id=f"{name}@?",
                         error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        ref = f"{name}@{record['version']}"
        self.log.info("%s %s in %s", ref, "registered" if created else "already registered", store.uri)
        self.log.info("lineage: %s", json.dumps(record["lineage"], indent=1)[:4000])
        return StageResult({"id": ref, "summary": {"version": record["version"], "created": created}},
                           skipped=not created)
