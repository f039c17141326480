"""PetastormDatasetOperator: a Petastorm dataset over a window of feature partitions."""

from __future__ import annotations

from typing import Any, Sequence

from dlpipe.commit import StageResult
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from operators.base import DlpipeOperator
from operators.features import SparkSubmitMixin


class PetastormDatasetOperator(SparkSubmitMixin, DlpipeOperator):
    """Commit the dataset whose window ends with the run's data interval (section ``dataset``)."""

    template_fields: Sequence[str] = ("pipeline_config", "data_interval_start", "data_interval_end")

    def __init__(self, *, conn_id: str = "dlpipe_spark", spark_conf: dict[str, str] | None = None,
                 spark_resources: dict[str, Any] | None = None,
                 data_interval_start: str = "{{ data_interval_start }}",
                 data_interval_end: str = "{{ data_interval_end }}", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_spark(conn_id, spark_conf, spark_resources)
        self.data_interval_start, self.data_interval_end = data_interval_start, data_interval_end

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from feature_jobs.stages import DatasetConfig, materialize_dataset

        cfg = section(pipeline, "dataset", DatasetConfig)
        submit = self._submitter(run)
        return materialize_dataset(self.data_interval_start, self.data_interval_end, config=cfg,
                                   run=run, submit=submit)
