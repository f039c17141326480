"""The feature and dataset stages of the ETA example, under dlpipe's commit protocol.

These functions decide *what* to run (which committed inputs, which config, where to write) and
commit the result; *how* the Spark application is launched is the ``submit`` callable they are
given (SparkSubmitHook in Airflow, plain spark-submit in tests).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.demo_data import CITIES, RAW_DATASET
from dlpipe.errors import ConfigError, NotCommittedError
from dlpipe.hashing import content_hash, fingerprint, sources_hash
from dlpipe.interval import day_partition, interval_days
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit
from dlpipe.spec import write_spec
from feature_jobs import eta_features, materialize

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent


class FeatureJobConfig(BaseModel):
    """The ETA feature job's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                      description="the feature set; specs with different feature settings need different names")
    raw: str = Field(RAW_DATASET, pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                     description="the raw source: committed raw/<raw>/dt=<day> partitions of trip events")
    lookback_days: int = Field(7, ge=0, le=365, description="days of history for restaurant features")
    num_files: int = Field(4, ge=1, le=4096, description="output files per partition")
    default_prep_minutes: float = Field(15.0, gt=0, description="prep time for restaurants with no history")


class DatasetConfig(BaseModel):
    """How feature partitions become a Petastorm training dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                      description="the dataset; specs with different dataset settings need different names")
    features: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                          description="the feature set it reads (features.name of the spec that writes it)")
    window_days: int = Field(7, ge=1, le=3650, description="feature partitions ending at the interval")
    validation_percent: int = Field(20, ge=1, le=50, description="share of keys in the validation split")
    num_files: int = Field(8, ge=1, le=4096, description="files per split (>= training processes)")
    row_group_size_mb: int = Field(32, ge=1, le=1024, description="Parquet row-group size")


def name_parts_by_order(out: Path) -> list[Path]:
    """Rename Spark's ``part-NNNNN-<uuid>...parquet`` files to ``part-NNNNN.parquet``.

    Spark puts a random job UUID in every file name; the part number is the hash partition of
    the key, so after renaming, the same input gives the same names and the same rows in each
    file. Hadoop's ``.crc`` side files (checksums of the old names) are removed.
    """
    for crc in out.glob(".*.crc"):
        crc.unlink()
    renamed = []
    for path in sorted(out.glob("part-*.parquet")):
        target = out / f"{path.name[:10]}.parquet"  # "part-00003"
        if target.exists() and target != path:
            raise RuntimeError(f"two Spark files for partition {path.name[:10]} in {out}")
        path.rename(target)
        renamed.append(target)
    return renamed


def parquet_rows(paths: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def feature_version(config: FeatureJobConfig) -> tuple[dict, dict]:
    """(config, code) of the feature stage as its fingerprint takes them: the city vocabulary
    that defines ``city_code`` is part of the config, since adding a city renumbers the codes."""
    return ({**config.model_dump(), "cities": sorted(CITIES)},
            {"sources_hash": sources_hash([eta_features.__file__, __file__])})


def _made_by(manifest: dict, config: dict, code: dict) -> bool:
    return (manifest["code"]["sources_hash"] == code["sources_hash"]
            and fingerprint(manifest["config"]) == fingerprint(config))


def _committed_days(name: str, stage: str, days: list, *, required: bool,
                    version: tuple[dict, dict] | None = None) -> tuple[list[dict], list[str]]:
    """For each day, the newest committed partition of ``stage``/``name``, and only one made by
    ``version`` (config, code) when it is given; (found, days without one). A dataset passes its
    feature version: one made by other code or settings (before a release, or a setting since
    reverted) is never taken, since a window mixing two feature definitions would train on
    columns that mean different things."""
    found, missing = [], []
    for day in days:
        key = StageKey(stage, name, day_partition(day))
        versions = commit.committed(key)
        matching = [m for m in versions if version is None or _made_by(m, *version)]
        if matching:
            found.append(matching[-1])
        elif required and version is None:
            raise NotCommittedError(f"no committed {stage} partition {name}/{day_partition(day)}; "
                                    f"run the stage that produces it (for demo data: dlpipe demo-data)")
        elif required:
            raise NotCommittedError(
                f"no feature partition {key.relpath} made by the current feature settings and code"
                f"{' (other versions exist)' if versions else ''}; run the feature stage for "
                f"{day.isoformat()} first (extract_features, or its Airflow task)")
        else:
            missing.append(day.isoformat())
    return found, missing


def extract_features(interval_start, interval_end, *, config: FeatureJobConfig, run: RunContext,
                     submit: SparkSubmit) -> StageResult:
    """Commit the ETA feature partition of one daily interval (skip if already committed)."""
    days = interval_days(interval_start, interval_end)
    if len(days) != 1:
        raise ConfigError("data_interval", f"{interval_start}..{interval_end}",
                          "the ETA feature job writes one daily partition per run: schedule it @daily")
    day = days[0]
    history = [day - timedelta(days=i) for i in range(config.lookback_days, 0, -1)]
    earlier, missing = _committed_days(config.raw, "raw", history, required=False)
    for absent in missing:
        log.info("raw/%s/%s not committed: treated as missing history", config.raw, absent)
    inputs = earlier + _committed_days(config.raw, "raw", [day], required=True)[0]
    key = StageKey("features", config.name, day_partition(day))
    fp_config, code = feature_version(config)

    def produce(attempt: Path) -> dict:
        out = attempt / "data"
        spec = {
            "input_files": [str(p) for m in inputs for p in commit.files(m, ".parquet")],
            "interval_start": f"{day.isoformat()}T00:00:00+00:00",
            "interval_end": f"{(day + timedelta(days=1)).isoformat()}T00:00:00+00:00",
            "history_start": f"{history[0].isoformat() if history else day.isoformat()}T00:00:00+00:00",
            "output_dir": str(out),
            **fp_config,
        }
        spec_path = write_spec(attempt / "spec.json", spec)
        submit(eta_features.__file__, ["--spec", str(spec_path)])
        parts = name_parts_by_order(out)
        return {"rows": parquet_rows(parts), "day": day.isoformat(),
                "content_sha256": content_hash(parts, out),
                "history_days": len(inputs) - 1, "missing_history_days": sorted(missing)}

    return commit.run_stage(key, inputs=inputs, config=fp_config, code=code,
                            run=run, produce=produce)


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
    (newest,), _ = _committed_days(config.features, "features", [last], required=True, version=version)
    version = version or (newest["config"], {"sources_hash": newest["code"]["sources_hash"]})
    earlier, missing = _committed_days(config.features, "features", window[:-1], required=False, version=version)
    if missing:
        log.warning("feature partitions of %s are missing or were made by other feature settings or code: "
                    "the dataset leaves them out; backfill the feature task for those days to include them",
                    missing)
    inputs = earlier + [newest]
    key = StageKey("datasets", config.name, f"window_end={last.isoformat()}")
    code = {"sources_hash": sources_hash([materialize.__file__, __file__])}

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
