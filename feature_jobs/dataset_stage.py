"""The ETA dataset stage under dlpipe's commit protocol: a Petastorm dataset over the feature
partitions of a window of days.

Apart from the feature stage (``feature_jobs.feature_stage``) so that an edit here leaves the
fingerprint of every committed feature partition as it was, and the other way round: a
fingerprint covers its stage's own sources.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.errors import InputNotReady
from dlpipe.hashing import content_hash, sources_hash
from dlpipe.interval import day_partition, interval_days
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit
from dlpipe.spec import write_spec
from feature_jobs import eta_features, materialize
from feature_jobs.feature_stage import FeatureJobConfig, committed_days, feature_version, first_partition
from feature_jobs.stage_files import SHARED_SOURCES, parquet_rows

log = logging.getLogger(__name__)


class DatasetConfig(BaseModel):
    """How feature partitions become a Petastorm training dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no count
    name: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                      description="the dataset; specs with different dataset settings need different names")
    features: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                          description="the feature set it reads (features.name of the spec that writes it)")
    window_days: int = Field(7, ge=1, le=3650, description="feature partitions ending at the interval")
    validation_percent: int = Field(20, ge=1, le=50, description="share of keys in the validation split")
    num_files: int = Field(8, ge=1, le=4096, description="files per split (>= training processes)")
    row_group_size_mb: int = Field(32, ge=1, le=1024, description="Parquet row-group size")


def schema_description(columns: list[tuple[str, str]]) -> list[dict]:
    """The Unischema of a scalar dataset as plain data for its manifest."""
    numpy = {"float": "float32", "int": "int32", "string": "str"}
    return [{"name": n, "numpy_dtype": numpy[k], "shape": [], "codec": "ScalarCodec", "nullable": False}
            for n, k in columns]


DATASET_COLUMNS: list[tuple[str, str]] = (
    [("trip_id", "string")]
    + [(c, "int" if c == "city_code" else "float") for c in eta_features.FEATURE_COLUMNS]
    + [(eta_features.LABEL_COLUMN, "float")]
)


def _wait_for_other_spec(name: str, day) -> None:
    """Another spec's feature set without ``day``'s partition yet: its DAG runs on its own
    schedule, and its days may commit out of order (a parallel backfill, a day waiting on late
    raw data), so the task is retried (InputNotReady). A day before the set's first partition
    will not come by waiting, and a set with no partition at all is a wrong name: the
    NotCommittedError that follows fails at once."""
    if commit.committed(StageKey("features", name, day_partition(day))):
        return
    first = first_partition("features", name)
    if first is not None and day_partition(day) > first:
        raise InputNotReady(f"no committed partition of feature set {name!r} (another spec's) for {day.isoformat()} "
                            f"yet (it has partitions from {first}): its DAG may not have reached this day; the "
                            f"task retries. Retries are a short wait: make this DAG wait for that one (an "
                            f"ExternalTaskSensor on its extract_features task, or asset scheduling)")


def materialize_dataset(interval_start, interval_end, *, config: DatasetConfig, features: FeatureJobConfig,
                        run: RunContext, submit: SparkSubmit) -> StageResult:
    """Commit a Petastorm dataset over the feature partitions of the window ending at the
    interval: those that ``features`` (the spec's feature settings) and today's code made."""
    days = interval_days(interval_start, interval_end)
    last = days[-1]
    window = [last - timedelta(days=i) for i in range(config.window_days - 1, -1, -1)]
    # The spec's own feature set: the version its settings and today's code make. Another
    # spec's (dataset.features names it): the version of its newest partition of the last day.
    version = feature_version(features) if features.name == config.features else None
    if version is None:
        _wait_for_other_spec(config.features, last)
    (newest,), _ = committed_days(config.features, "features", [last], required=True, version=version)
    version = version or (newest["config"], {"sources_hash": newest["code"]["sources_hash"]})
    earlier, missing = committed_days(config.features, "features", window[:-1], required=False, version=version)
    if missing:
        log.warning("feature partitions of %s are missing or were made by other feature settings or code: "
                    "the dataset leaves them out; backfill the feature task for those days to include them",
                    missing)
    inputs = earlier + [newest]
    key = StageKey("datasets", config.name, f"window_end={last.isoformat()}")
    code = {"sources_hash": sources_hash([materialize.__file__, __file__, *SHARED_SOURCES])}

    def produce(attempt: Path) -> dict:
        spec = {
            "name": config.name,
            "input_files": [str(p) for m in inputs for p in commit.files(m, ".parquet")],
            "columns": DATASET_COLUMNS,
            "key": eta_features.KEY_COLUMN,
            "output_dir": str(attempt),
            **config.model_dump(),
        }
        spec_path = write_spec(attempt / "spec.json", spec)
        submit(materialize.__file__, ["--spec", str(spec_path)])
        splits = {s: parquet_rows(sorted((attempt / s).glob("*.parquet"))) for s in ("train", "validation")}
        data_files = sorted(attempt.glob("*/*.parquet"))
        return {
            "rows": splits,
            # Petastorm's metadata names the files Spark chose at random: hash contents only
            "content_sha256": content_hash(data_files, attempt, by_name=False),
            "stats": json.loads((attempt / "stats.json").read_text()),
            "schema": schema_description(DATASET_COLUMNS),
            "splits": sorted(splits),
            "feature_partitions": [m["id"] for m in inputs],
            "missing_feature_days": missing,
            "columns": DATASET_COLUMNS,
            "features": eta_features.FEATURE_COLUMNS,
            "label": eta_features.LABEL_COLUMN,
            "window": [window[0].isoformat(), last.isoformat()],
        }

    return commit.run_stage(key, inputs=inputs, config=config.model_dump(), code=code,
                            run=run, produce=produce)
