"""PetastormDatasetOperator: a Petastorm dataset over a window of feature partitions."""

from __future__ import annotations

from typing import Any

from dlpipe.commit import StageResult
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from operators.features import SparkStageOperator


class PetastormDatasetOperator(SparkStageOperator):
    """Commit the dataset whose window ends with the run's data interval (section ``dataset``);
    takes the same Spark arguments as SparkFeatureOperator."""

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from feature_jobs.stages import DatasetConfig, materialize_dataset

        cfg = section(pipeline, "dataset", DatasetConfig)
        return materialize_dataset(self.data_interval_start, self.data_interval_end, config=cfg,
                                   run=run, submit=self._submitter(run))
