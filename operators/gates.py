"""DataGateOperator and ModelGateOperator: a failed gate fails the task without retry."""

from __future__ import annotations

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
        return run_data_gate(commit.load_manifest(self.dataset_id), cfg, run=run,
                             name=f"{pipeline.get('model_name', 'model')}_data")


class ModelGateOperator(DlpipeOperator):
    """Judge a committed training run against the ``model_gate`` thresholds.

    :param training_id: manifest id of the training run (templated)
    """

    template_fields: Sequence[str] = ("pipeline_config", "training_id")
    ui_color = "#fdf2d0"

    def __init__(self, *, training_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.training_id = training_id

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from dlpipe.gates import ModelGateConfig, run_model_gate

        cfg = section(pipeline, "model_gate", ModelGateConfig)
        return run_model_gate(commit.load_manifest(self.training_id), cfg, run=run,
                              name=f"{pipeline.get('model_name', 'model')}_model")
