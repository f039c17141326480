"""DataGateOperator and ModelGateOperator: a failed gate fails the task without retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dlpipe import commit
from dlpipe.commit import StageResult
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from operators.base import DlpipeOperator


class DataGateOperator(DlpipeOperator):
    """Validate a committed dataset with the ``data_gate`` suite (Great Expectations).

    :param dataset_id: manifest id of the dataset (templated; usually ``dataset_task.output``)
    """

    template_fields: Sequence[str] = ("pipeline_config", "dataset_id")
    ui_color = "#fdf2d0"

    def __init__(self, *, dataset_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_id = dataset_id

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from dlpipe.gates import DataGateConfig, run_data_gate

        cfg = section(pipeline, "data_gate", DataGateConfig)
        return run_data_gate(commit.load_manifest(self.dataset_id, stage="datasets", field="dataset_id"), cfg, run=run,
                             name=f"{pipeline.get('model_name', 'model')}_data")


class ModelGateOperator(DlpipeOperator):
    """Judge a committed training run against the ``model_gate`` thresholds.

    The candidate and the model behind the ``champion_alias`` (default ``production``) are both
    evaluated on the candidate's validation rows, overall and per slice; the champion is read
    from the registry named in the pipeline's ``registry`` section, with verified hashes.

    :param training_id: manifest id of the training run (templated)
    """

    template_fields: Sequence[str] = ("pipeline_config", "training_id")
    ui_color = "#fdf2d0"

    def __init__(self, *, training_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.training_id = training_id

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        import tempfile

        from dlpipe import registry
        from dlpipe.gates import ModelGateConfig, run_model_gate
        from dlpipe.registry import RegistryConfig
        from operators.kinds import kind_of
        from operators.registry import registry_store

        cfg = section(pipeline, "model_gate", ModelGateConfig)
        evaluate = kind_of(pipeline).evaluate
        name = pipeline.get("model_name", "model")
        training = commit.load_manifest(self.training_id, stage="training", field="training_id")
        dataset = commit.load_manifest(training["inputs"][0]["id"])
        candidate = evaluate(commit.location(training) / training["summary"]["model_dir"], dataset)
        champion = None
        if cfg.champion_alias:
            reg = section(pipeline, "registry", RegistryConfig)
            store = registry_store(reg.root, reg.aws_conn_id)
            alias = registry.get_alias(store, name, cfg.champion_alias)
            if alias is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    registry.download(store, name, alias["version"], Path(tmp))  # hashes verified
                    champion = {"ref": f"{name}@{alias['version']}", **evaluate(Path(tmp), dataset)}
                self.log.info("champion %s:%s = %s: %s %.4f on the candidate's validation rows",
                              name, cfg.champion_alias, champion["ref"], champion["label"], champion["value"])
        return run_model_gate(training, cfg, run=run, name=f"{name}_model",
                              candidate=candidate, champion=champion)
