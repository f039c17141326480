"""The ETA feature stage under dlpipe's commit protocol (the dataset stage, which reads its
partitions, is ``feature_jobs.dataset_stage``).

These functions decide *what* to run (which committed inputs, which config, where to write) and
commit the result; *how* the Spark application is launched is the ``submit`` callable they are
given (SparkSubmitHook in Airflow, plain spark-submit in tests).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.demo_data import CITIES, CITY_TIME_ZONES, RAW_DATASET
from dlpipe.errors import ConfigError, InputNotReady, NotCommittedError
from dlpipe.hashing import content_hash, fingerprint, sources_hash
from dlpipe.interval import day_partition, interval_days
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit
from dlpipe.spec import write_spec
from feature_jobs import eta_features
from feature_jobs.stage_files import SHARED_SOURCES, name_parts_by_order, parquet_rows

log = logging.getLogger(__name__)


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


def feature_version(config: FeatureJobConfig) -> tuple[dict, dict]:
    """(config, code) of the feature stage as its fingerprint takes them: the city vocabulary
    that defines ``city_code`` is part of the config, since adding a city renumbers the codes."""
    return ({**config.model_dump(), "cities": sorted(CITIES), "city_time_zones": CITY_TIME_ZONES},
            {"sources_hash": sources_hash([eta_features.__file__, __file__, *SHARED_SOURCES])})


def _made_by(manifest: dict, config: dict, code: dict) -> bool:
    return (manifest["code"]["sources_hash"] == code["sources_hash"]
            and fingerprint(manifest["config"]) == fingerprint(config))


def committed_days(name: str, stage: str, days: list, *, required: bool,
                    version: tuple[dict, dict] | None = None, late_ok: bool = False) -> tuple[list[dict], list[str]]:
    """For each day, the newest committed partition of ``stage``/``name``, and only one made by
    ``version`` (config, code) when it is given; (found, days without one). A dataset passes its
    feature version: one made by other code or settings (before a release, or a setting since
    reverted) is never taken, since a window mixing two feature definitions would train on
    columns that mean different things. ``late_ok``: a required day that is missing raises
    InputNotReady, which Airflow retries (the interval's raw data may land late), not
    NotCommittedError."""
    found, missing = [], []
    for day in days:
        key = StageKey(stage, name, day_partition(day))
        versions = commit.committed(key)
        matching = [m for m in versions if version is None or _made_by(m, *version)]
        if matching:
            found.append(matching[-1])
        elif required and late_ok:  # the interval's raw data, which may land late
            raise InputNotReady(f"no committed {stage} partition {name}/{day_partition(day)} yet; the "
                                f"task retries in case it is late; run the stage that produces it "
                                f"(for demo data: dlpipe demo-data)")
        elif required and version is None:
            raise NotCommittedError(f"no committed {stage} partition {key.relpath}; run the stage that "
                                    f"produces it for {day.isoformat()} first")
        elif required:
            raise NotCommittedError(
                f"no feature partition {key.relpath} made by the current feature settings and code"
                f"{' (other versions exist)' if versions else ''}; run the feature stage for "
                f"{day.isoformat()} first (extract_features, or its Airflow task)")
        else:
            missing.append(day.isoformat())
    return found, missing


def check_raw_files(paths: list[Path]) -> None:
    """Every raw input file has the columns the feature job reads, of the right kind (from its
    Parquet footer). Spark would read a column missing from one file as nulls for its rows, and
    the gate's ranges would not notice a history day without prep times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds = {"string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
             "timestamp": pa.types.is_timestamp, "integer": pa.types.is_integer,
             "floating": pa.types.is_floating}
    for path in paths:
        schema = pq.read_schema(path)
        for column, kind in eta_features.RAW_COLUMNS.items():
            found = schema.field(column).type if column in schema.names else None
            if found is None or not kinds[kind](found):
                raise ConfigError(f"raw file {path}: column {column}", str(found) if found else "(missing)",
                                  f"the ETA feature job reads it as {kind}; fix the ingestion that wrote "
                                  f"this partition, then commit it again")


def extract_features(interval_start, interval_end, *, config: FeatureJobConfig, run: RunContext,
                     submit: SparkSubmit) -> StageResult:
    """Commit the ETA feature partition of one daily interval (skip if already committed)."""
    days = interval_days(interval_start, interval_end)
    if len(days) != 1:
        raise ConfigError("data_interval", f"{interval_start}..{interval_end}",
                          "the ETA feature job writes one daily partition per run: schedule it @daily")
    day = days[0]
    history = [day - timedelta(days=i) for i in range(config.lookback_days, 0, -1)]
    earlier, missing = committed_days(config.raw, "raw", history, required=False)
    for absent in missing:
        log.info("raw/%s/%s not committed: treated as missing history", config.raw, absent)
    inputs = earlier + committed_days(config.raw, "raw", [day], required=True, late_ok=True)[0]
    key = StageKey("features", config.name, day_partition(day))
    fp_config, code = feature_version(config)

    input_files = [p for m in inputs for p in commit.files(m, ".parquet")]
    check_raw_files(input_files)

    def produce(attempt: Path) -> dict:
        out = attempt / "data"
        spec = {
            "input_files": [str(p) for p in input_files],
            "interval_start": f"{day.isoformat()}T00:00:00+00:00",
            "interval_end": f"{(day + timedelta(days=1)).isoformat()}T00:00:00+00:00",
            "history_start": f"{history[0].isoformat() if history else day.isoformat()}T00:00:00+00:00",
            "history_days": len(earlier),
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


