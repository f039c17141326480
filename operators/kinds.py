"""Pipeline kinds: what differs between the pipelines a spec can describe.

Every dlpipe pipeline has the same stages with the same guarantees (commit protocol, gates,
registry, audit). What a kind adds is the model-specific part: which sections its spec has and
how they are validated, which Spark application builds its dataset, which Horovod entry point
trains it, and how a trained model is evaluated for the model gate. A spec picks its kind with
the top-level key ``kind:`` (default ``eta_regressor``).

Adding a kind means writing those four things, one entry in ``KINDS`` (with the metrics its
model gate may judge and its datasets' columns, which ``check_kind`` requires), and the list of
training modules its entry point runs in ``training.stages.ENTRY_SOURCES`` (they enter the
training fingerprint; ``check_pipeline`` refuses a kind without one). The operators, the DAG
factory and the documentation of the sections follow from it; docs/kinds.md is the guide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from dlpipe.commit import StageResult
from dlpipe.errors import ConfigError

DEFAULT_KIND = "eta_regressor"


@dataclass(frozen=True)
class PipelineKind:
    """The model-specific parts of a pipeline (see the module docstring)."""

    name: str
    description: str
    # Spark stage that commits the feature partition of a data interval; None: the kind has no
    # feature stage (its DAG starts at the dataset)
    features: Callable[..., StageResult] | None
    # Spark stage that commits the dataset of a data interval
    dataset: Callable[..., StageResult]
    # the Horovod entry module (``python -m ...``), run by training.stages.train_model
    train_entry: str
    # (model_dir, dataset manifest) -> evaluation, the shape training.evaluate documents
    evaluate: Callable[[Path, dict], dict]
    # spec section -> pydantic model that validates it
    sections: Callable[[], dict[str, type[BaseModel]]]
    # the metrics its training reports on the validation split that a model gate can judge
    # (lower is better), and the naive predictor's values of them that the gate compares with;
    # the two lists are disjoint, so a gate cannot judge the baseline against the model or a
    # metric against itself, and training-split metrics (which an overfit model wins) are in neither
    gate_metrics: tuple[str, ...] = ()
    baseline_metrics: tuple[str, ...] = ()
    # the columns of its datasets, which the data gate's column names are checked against
    dataset_columns: Callable[[], list[str]] | None = None


def _common_sections() -> dict[str, type[BaseModel]]:
    from dlpipe.gates import DataGateConfig, ModelGateConfig
    from dlpipe.registry import RegistryConfig
    from training.config import ScaleConfig

    return {"data_gate": DataGateConfig, "scale": ScaleConfig, "model_gate": ModelGateConfig,
            "registry": RegistryConfig}


def _eta_sections() -> dict[str, type[BaseModel]]:
    from feature_jobs.dataset_stage import DatasetConfig
    from feature_jobs.feature_stage import FeatureJobConfig
    from training.config import TrainConfig

    return {"features": FeatureJobConfig, "dataset": DatasetConfig, "train": TrainConfig, **_common_sections()}


def _digits_sections() -> dict[str, type[BaseModel]]:
    from feature_jobs.digits_stage import DigitsConfig
    from training.config import DigitsTrainConfig

    return {"dataset": DigitsConfig, "train": DigitsTrainConfig, **_common_sections()}


def _eta_features(interval_start: str, interval_end: str, **kw: Any) -> StageResult:
    from feature_jobs.feature_stage import extract_features

    return extract_features(interval_start, interval_end, **kw)


def _eta_dataset(interval_start: str, interval_end: str, **kw: Any) -> StageResult:
    from feature_jobs.dataset_stage import materialize_dataset

    return materialize_dataset(interval_start, interval_end, **kw)


def _digits_dataset(interval_start: str, interval_end: str, **kw: Any) -> StageResult:
    """The digits corpus is one fixed, versioned set of images: the interval selects nothing,
    and every run after the first finds it committed (a new scikit-learn re-materializes it)."""
    from feature_jobs.digits_stage import materialize_digits

    return materialize_digits(**kw)


def _eta_evaluate(model_dir: Path, dataset: dict) -> dict:
    from training.evaluate import evaluate

    return evaluate(model_dir, dataset)


def _digits_evaluate(model_dir: Path, dataset: dict) -> dict:
    from training.evaluate_digits import evaluate_digits

    return evaluate_digits(model_dir, dataset)


def _eta_columns() -> list[str]:
    from feature_jobs.dataset_stage import DATASET_COLUMNS

    return [name for name, _ in DATASET_COLUMNS]


def _digits_columns() -> list[str]:
    from feature_jobs.digits_stage import DIGITS_COLUMNS

    return [name for name, _ in DIGITS_COLUMNS]


KINDS: dict[str, PipelineKind] = {
    "eta_regressor": PipelineKind(
        name="eta_regressor",
        description="tabular regression: raw trips -> daily features -> windowed dataset -> MLP",
        features=_eta_features, dataset=_eta_dataset, train_entry="training.train_eta",
        evaluate=_eta_evaluate, sections=_eta_sections,
        gate_metrics=("val_mae",), baseline_metrics=("baseline_mae",), dataset_columns=_eta_columns),
    "digits_classifier": PipelineKind(
        name="digits_classifier",
        description="image classification: scikit-learn's 8x8 digits -> ndarray dataset -> CNN",
        features=None, dataset=_digits_dataset, train_entry="training.train_digits",
        evaluate=_digits_evaluate, sections=_digits_sections,
        gate_metrics=("val_error",), baseline_metrics=("baseline_error",), dataset_columns=_digits_columns),
}


def kind_of(pipeline: dict) -> PipelineKind:
    """The kind a pipeline YAML names (``kind:``), with an error that lists the known ones."""
    name = pipeline.get("kind", DEFAULT_KIND)
    if name not in KINDS:
        raise ConfigError(f"{pipeline.get('_source', '?')}: kind", name,
                          f"use one of {sorted(KINDS)} (default {DEFAULT_KIND})")
    return KINDS[name]
