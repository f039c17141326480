"""OpenLineage from the registry operators: like every stage, they report what they read.

RegisterModelOperator reads the training run and the gate verdicts it registers on;
PromoteModelOperator reads the registered version it points the alias at. Without these inputs a
lineage backend would show registry versions and aliases that come from nowhere."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dlpipe import commit
from dlpipe.gates import ModelGateConfig, run_model_gate
from dlpipe.runctx import RunContext
from operators import PromoteModelOperator, RegisterModelOperator
from tests.conftest import ROOT
from tests.dags.test_register_gates import _training
from tests.unit.test_gate_reruns import _evaluation

PIPELINE = str(ROOT / "pipelines" / "eta_training.yaml")


def _context(task_id: str) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id=task_id, try_number=1)
    return {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}}


def _names(datasets) -> list[tuple[str, str | None]]:
    """(name, version) of OpenLineage datasets, as a lineage backend would key them."""
    out = []
    for d in datasets:
        version = d.facets.get("version")
        out.append((d.name, version.datasetVersion if version else None))
    return out


def _passed_data_gate(dataset: dict) -> dict:
    """A committed data-gate verdict on ``dataset`` (the verdict is what registering checks)."""
    return commit.run_stage(commit.StageKey("gates", "eta_data", dataset["partition"]), inputs=[dataset],
                            config={}, code={"sources_hash": "test"}, run=RunContext(),
                            produce=lambda attempt: {"verdict": "passed"}).manifest


def test_register_and_promote_report_their_inputs_to_openlineage(dlpipe_home):
    training = _training(3.0)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    data_gate = _passed_data_gate(dataset)
    model_gate = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0),
                                champion=None).manifest
    root = str(dlpipe_home / "registry")

    register = RegisterModelOperator(task_id="register_model", training_id=training["id"],
                                     gate_ids=[data_gate["id"], model_gate["id"]], registry_root=root,
                                     pipeline_config=PIPELINE)
    ref = register.execute(_context("register_model"))
    assert ref == "eta@1"
    lineage = register.get_openlineage_facets_on_complete(None)
    assert _names(lineage.outputs) == [("registry/eta", "1")]
    assert _names(lineage.inputs) == [
        (m["id"].split("@")[0], m["id"].split("@")[1]) for m in (training, data_gate, model_gate)]

    promote = PromoteModelOperator(task_id="promote_staging", model_ref=ref, alias="staging",
                                   registry_root=root, pipeline_config=PIPELINE)
    assert promote.execute(_context("promote_staging")) == "eta:staging"
    lineage = promote.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("registry/eta", "1")]
    assert _names(lineage.outputs) == [("registry/eta:staging", None)]
