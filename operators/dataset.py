"""PetastormDatasetOperator: the Petastorm dataset of a run (for the ETA kind, over a window of
feature partitions; for the digits kind, the image corpus)."""

from __future__ import annotations

from typing import Any

from dlpipe.commit import StageResult
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from operators.features import SparkStageOperator


class PetastormDatasetOperator(SparkStageOperator):
    """Commit the dataset of the run's data interval (section ``dataset``; what it holds is the
    pipeline kind's, see ``operators.kinds``); takes the same Spark arguments as
    SparkFeatureOperator."""

    pipeline_stage = "materialize_dataset"

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from operators.kinds import kind_of

        kind = kind_of(pipeline)
        cfg = section(pipeline, "dataset", kind.sections()["dataset"])
        if kind.features:  # a window ending at the run's interval, of the spec's feature version
            start, end = self.interval(context)
            extra = {"features": section(pipeline, "features", kind.sections()["features"])}
        else:  # the digits corpus: the interval selects nothing
            start, end, extra = None, None, {}
        return kind.dataset(start, end, config=cfg, run=run, submit=self._submitter(run), **extra)
