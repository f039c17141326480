"""DataGateOperator and ModelGateOperator: a failed gate fails the task without retry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dlpipe import commit
from dlpipe.commit import StageResult
from dlpipe.errors import IntegrityError, NotCommittedError
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from operators.base import DlpipeOperator


class DataGateOperator(DlpipeOperator):
    """Validate a committed dataset with the ``data_gate`` suite (Great Expectations).

    :param dataset_id: manifest id of the dataset (templated; usually ``dataset_task.output``)
    """

    pipeline_stage = "data_gate"

    template_fields: Sequence[str] = ("pipeline_config", "dataset_id")
    ui_color = "#fdf2d0"

    def __init__(self, *, dataset_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_id = dataset_id

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from dlpipe.gates import DataGateConfig, run_data_gate

        cfg = section(pipeline, "data_gate", DataGateConfig)
        dataset = commit.load_manifest(self.dataset_id, stage="datasets", field="dataset_id")
        return run_data_gate(dataset, cfg, run=run, name=f"{pipeline.get('model_name', 'model')}_data")


class ModelGateOperator(DlpipeOperator):
    """Judge a committed training run against the ``model_gate`` thresholds.

    The candidate and the model behind the ``champion_alias`` (default ``production``) are both
    evaluated on the candidate's validation rows; the champion check judges the overall value
    (both models' per-slice values are recorded in the verdict, not compared). The champion is
    read from the registry named in the pipeline's ``registry`` section, with verified hashes.

    :param training_id: manifest id of the training run (templated)
    :param registry_root: where to find the champion, as for RegisterModelOperator (default: the
        pipeline's ``registry.root``, then ``DLPIPE_REGISTRY_ROOT``, then ``$DLPIPE_HOME/registry``);
        give the gate the same registry as the tasks that register and promote
    :param aws_conn_id: Airflow AWS connection for an S3 registry (default: ``registry.aws_conn_id``)
    """

    pipeline_stage = "model_gate"

    template_fields: Sequence[str] = ("pipeline_config", "training_id", "registry_root")
    ui_color = "#fdf2d0"

    def __init__(self, *, training_id: str, registry_root: str | None = None, aws_conn_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from operators.registry import check_registry_root

        check_registry_root(type(self).__name__, self.task_id, registry_root)
        self.training_id = training_id
        self.registry_root, self.aws_conn_id = registry_root, aws_conn_id

    def lineage_inputs(self, manifest: dict) -> list[str]:
        """The training run, and the champion version the verdict was judged against (a registry
        version, kept in the verdict's config rather than among its fingerprinted inputs)."""
        champion = (manifest.get("config") or {}).get("champion")
        return super().lineage_inputs(manifest) + ([champion] if champion else [])

    def champion_store(self, pipeline: dict):
        """The registry that holds the champion: this operator's arguments, else the YAML's."""
        from dlpipe.registry import RegistryConfig
        from operators.registry import registry_store

        reg = section(pipeline, "registry", RegistryConfig)
        store = registry_store(self.registry_root or reg.root, self.aws_conn_id or reg.aws_conn_id)
        self._registry_uri = store.uri  # where OpenLineage says the champion lives
        return store

    def _feature_manifests(self, record: dict) -> list[dict]:
        """The feature partitions the champion's dataset was built from, as committed here; none
        (with a warning) when this DLPIPE_HOME lacks them (a model trained elsewhere, or removed
        under retention): then its feature version cannot be compared."""
        ids = (record.get("lineage") or {}).get("feature_partitions") or []
        try:
            return [commit.load_manifest(mid) for mid in ids]
        except (NotCommittedError, IntegrityError) as exc:
            self.log.warning("cannot tell which features %s@%s was trained on (%s): it is compared as if they were "
                             "this dataset's", record.get("name"), record.get("version"), exc)
            return []

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        import tempfile

        from dlpipe import registry
        from dlpipe.gates import ModelGateConfig, feature_mismatch, run_model_gate, split_mismatch
        from operators.kinds import kind_of

        cfg = section(pipeline, "model_gate", ModelGateConfig)
        evaluate = kind_of(pipeline).evaluate
        name = pipeline.get("model_name", "model")
        training = commit.load_manifest(self.training_id, stage="training", field="training_id")
        dataset = commit.load_manifest(training["inputs"][0]["id"])
        candidate = evaluate(commit.location(training) / training["summary"]["model_dir"], dataset)
        champion = None
        if cfg.champion_alias:
            store = self.champion_store(pipeline)
            alias = registry.get_alias(store, name, cfg.champion_alias)
            if alias is None:
                self.log.info("no %s:%s in %s: the candidate is judged as the first model", name,
                              cfg.champion_alias, store.uri)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    record = registry.download(store, name, alias["version"], Path(tmp))  # hashes verified
                    champion = {"ref": f"{name}@{alias['version']}", **evaluate(Path(tmp), dataset)}
                if why := split_mismatch(record, dataset):  # only then: other verdicts keep their fingerprint
                    champion["split_mismatch"] = why
                features = [commit.load_manifest(i["id"]) for i in dataset["inputs"]]
                if why := feature_mismatch(record, self._feature_manifests(record), features):
                    champion["feature_mismatch"] = why
                # the evaluator's label is for people, and an empty split's value is None: neither may fail the gate here
                self.log.info("champion %s:%s = %s: %s %s on the candidate's validation rows", name,
                              cfg.champion_alias, champion["ref"], champion.get("label", champion.get("metric")),
                              champion.get("value"))
        return run_model_gate(training, cfg, run=run, name=f"{name}_model",
                              candidate=candidate, champion=champion)
