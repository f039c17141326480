"""The ETA feature stage under dlpipe's commit protocol (the dataset stage, which reads its
partitions, is ``feature_jobs.dataset_stage``).

These functions decide *what* to run (which committed inputs, which config, where to write) and
commit the result; *how* the Spark application is launched is the ``submit`` callable they are
given (SparkSubmitHook in Airflow, plain spark-submit in tests).
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.demo_data import CITIES, CITY_TIME_ZONES, RAW_DATASET
from dlpipe.errors import ConfigError, InputNotReady, IntegrityError, NotCommittedError
from dlpipe.hashing import content_hash, fingerprint, sources_hash
from dlpipe.interval import day_partition, interval_days
from dlpipe.pipeline_config import YamlFloat
from dlpipe.raw_ingest import uncommitted_files
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit
from dlpipe.spec import write_spec
from feature_jobs import eta_features
from feature_jobs.stage_files import SHARED_SOURCES, name_parts_by_order, parquet_rows

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


class FeatureJobConfig(BaseModel):
    """The ETA feature job's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no count
    name: str = Field("eta", pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                      description="the feature set; specs with different feature settings need different names")
    raw: str = Field(RAW_DATASET, pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$",
                     description="the raw source: committed raw/<raw>/dt=<day> partitions of trip events")
    lookback_days: int = Field(7, ge=0, le=365, description="days of history for restaurant features")
    num_files: int = Field(4, ge=1, le=4096, description="output files per partition")
    default_prep_minutes: YamlFloat = Field(15.0, gt=0, description="prep time for restaurants with no history")


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
            raise InputNotReady(not_ready_message(stage, name, day))
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


def not_ready_message(stage: str, name: str, day) -> str:
    """Why a required day is not there yet, and how it gets there. Files written straight into
    the day's folder are named: readers take only committed partitions, so they would wait for
    them forever."""
    where = f"{name}/{day_partition(day)}"
    loose = uncommitted_files(name, day) if stage == "raw" else []
    if loose:
        return (f"no committed {stage} partition {where}: {len(loose)} Parquet file(s) sit in "
                f"{loose[0].parent} but were never committed, and readers take only committed partitions; "
                f"commit them: dlpipe ingest-raw {name} --day {day.isoformat()} {loose[0].parent}")
    return (f"no committed {stage} partition {where} yet; the task retries in case it is late; commit the day "
            f"(your own files: dlpipe ingest-raw {name} --day {day.isoformat()} PATH; demo data: dlpipe demo-data)")


def first_partition(stage: str, name: str) -> str | None:
    """The oldest day partition (``dt=YYYY-MM-DD``) of ``stage/name`` that holds a commit,
    reading partitions oldest first until one has a manifest."""
    for part in sorted(StageKey(stage, name).dir().parent.glob("dt=*")):
        if any((part / "manifests").glob("*.json")):
            return part.name
    return None


_COMMIT_AGAIN = "then commit the partition again"


def _spark_type(found: pa.DataType, physical: str | None) -> str:
    """The type Spark reads a raw column as, for comparing files: Parquet stores a dictionary
    column as its values (pyarrow's dictionary is pandas' category, restored from the file's
    metadata) and a large string as a string; a timestamp in ms or us with any time zone, or in
    INT96 (Spark's own default, which pyarrow shows as naive ns), is one timestamp type to Spark.
    A naive ms or us timestamp is kept apart: Spark may read it as TIMESTAMP_NTZ."""
    import pyarrow as pa

    if pa.types.is_dictionary(found):
        found = found.value_type
    if pa.types.is_timestamp(found):
        return "timestamp" if physical == "INT96" or found.tz else "timestamp without time zone"
    return "string" if pa.types.is_large_string(found) else str(found)


def _raw_type_fix(kind: str, found: pa.DataType | None, physical: str | None) -> str | None:
    """What to do about a raw column stored as ``found`` (None: missing) that Spark cannot read
    as ``kind``; None when it can. The kind alone is not enough: Spark fails on a ns timestamp
    in the middle of the job, naming neither the column nor the file."""
    import pyarrow as pa

    reads_as = f"the ETA feature job reads it as {kind}; fix the ingestion that wrote this partition, {_COMMIT_AGAIN}"
    if found is None:
        return reads_as
    value = found.value_type if pa.types.is_dictionary(found) else found
    if kind == "timestamp" and pa.types.is_timestamp(value) and physical != "INT96" \
            and value.unit not in ("ms", "us"):
        return (f"Spark cannot read a {value.unit} Parquet timestamp as a timestamp (it fails with 'actual "
                f"Parquet type INT64'); write it with coerce_timestamps='us' (pyarrow) or as microseconds, "
                f"{_COMMIT_AGAIN}")
    accepted = {"string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
                "timestamp": pa.types.is_timestamp, "integer": pa.types.is_integer,
                "floating": pa.types.is_floating}
    return None if accepted[kind](value) else reads_as


def check_raw_files(paths: list[Path]) -> None:
    """Every raw input file has the columns the feature job reads, of types Spark reads as their
    kind, and the same type for each column in every file (from the Parquet footers). Spark
    would read a column missing from one file as nulls for its rows, and the gate's ranges would
    not notice a history day without prep times; it takes the schema from one file and fails on
    another file's int64 where that one had int32, without naming the column or the file."""
    first: dict[str, tuple[Path, str, str]] = {}  # column -> (first file, its type, as Spark reads it)
    for path in paths:
        meta = committed_footer(path)
        schema = meta.schema.to_arrow_schema()  # pyarrow's types: dictionaries, time zones
        physical = {meta.schema.column(i).path: meta.schema.column(i).physical_type
                    for i in range(len(meta.schema))}
        for column, kind in eta_features.RAW_COLUMNS.items():
            found = schema.field(column).type if column in schema.names else None
            shown = "(missing)" if found is None else \
                f"{found}{' (Parquet INT96)' if physical.get(column) == 'INT96' else ''}"
            fix = _raw_type_fix(kind, found, physical.get(column))
            if fix:
                raise ConfigError(f"raw file {path}: column {column}", shown, fix)
            spark_type = _spark_type(found, physical.get(column))
            other, other_shown, other_spark = first.setdefault(column, (path, shown, spark_type))
            if spark_type != other_spark:
                raise ConfigError(
                    f"raw file {path}: column {column}", shown,
                    f"{other} has it as {other_shown}; Spark reads every input file as one file's type "
                    f"and fails on the others: write the partition whose type differs from the rest again "
                    f"with theirs, {_COMMIT_AGAIN}")


def committed_footer(path: Path):
    """The Parquet footer of a committed raw file. One that cannot be read, with the committed
    size and no write since (``commit.check_unchanged`` passed), is damaged in place: an
    IntegrityError that fails the task, naming the file and the way out, instead of pyarrow's
    ArrowInvalid, which was retried and named neither."""
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise IntegrityError(f"raw file {path} is committed but cannot be read as Parquet ({type(exc).__name__}: "
                             f"{exc}): it was damaged after its commit; `dlpipe lineage ID --verify` re-hashes "
                             f"every file. Commit that day's files again (dlpipe ingest-raw NAME --day DAY "
                             f"PATH...), then clear the runs that read it") from None


def check_interval_partition(manifest: dict, raw: StageKey) -> int:
    """The rows of the interval's own raw partition (from its Parquet footers), refusing none.
    An empty day would commit as an empty feature partition, and the dataset over it; with no
    file and no history, Spark fails without saying which partition. A history day may be
    empty: the restaurant features then count it as a day without trips."""
    files = commit.files(manifest, ".parquet")
    rows = sum(committed_footer(f).num_rows for f in files)
    if rows == 0:
        raise ConfigError(f"raw partition {raw.relpath}", f"0 rows in {len(files)} file(s)",
                          "the interval's own partition is empty, so its feature partition would be "
                          "too; commit the day's data again through ingestion, then clear the task. If the "
                          "day truly had no trips, mark this run's tasks skipped: later windows then list "
                          "the day in missing_feature_days")
    return rows


def _warn_about_left_out(stats: dict, raw: StageKey) -> None:
    """Say what the features left out; the counts are in the manifest's summary too."""
    if stats["duplicate_rows"]:
        log.warning("%d raw row(s) of the day's trips repeated a trip_id (at-least-once delivery): each trip "
                    "was kept once", stats["duplicate_rows"])
    if stats["before_interval_not_in_lookback"]:
        log.warning("%d row(s) of %s were ordered before its day, and their trips are not in the lookback "
                    "partitions: unless filed under their order day before that, they are in no feature "
                    "partition. Raw partitions must be keyed by the UTC day of order_ts; file them under their "
                    "order day and run that day's features again", stats["before_interval_not_in_lookback"],
                    raw.relpath)
    if stats.get("without_order_ts"):
        log.warning("%d row(s) of %s have no order_ts: they belong to no day and are in no feature partition; "
                    "fix the ingestion that wrote them, commit the day again and clear this task",
                    stats["without_order_ts"], raw.relpath)
    if stats["after_lookback_reach"]:
        log.warning("%d row(s) of %s were ordered later than lookback_days after its day: no run reads this "
                    "partition for them, so they are in no feature partition", stats["after_lookback_reach"],
                    raw.relpath)


def extract_features(interval_start, interval_end, *, config: FeatureJobConfig, run: RunContext,
                     submit: SparkSubmit) -> StageResult:
    """Commit the ETA feature partition of one daily interval (skip if already committed)."""
    days = interval_days(interval_start, interval_end)
    if len(days) != 1:
        raise ConfigError("data_interval", f"{interval_start}..{interval_end}",
                          f"the ETA feature job writes one daily partition per run and this interval spans "
                          f"{len(days)} UTC days: schedule the DAG @daily, and give a run one day (a data "
                          f"interval chosen by hand in the trigger form, or a backfill, one day at a time)")
    day = days[0]
    history = [day - timedelta(days=i) for i in range(config.lookback_days, 0, -1)]
    earlier, missing = committed_days(config.raw, "raw", history, required=False)
    # the raw data's first committed day, over all its partitions (not only this lookback's)
    first = first_partition("raw", config.raw) if missing else None
    for absent in missing:
        if loose := uncommitted_files(config.raw, date.fromisoformat(absent)):
            log.warning("raw/%s/dt=%s holds %d Parquet file(s) that were never committed, and readers take only "
                        "committed partitions: this day counts as missing history. Commit them: dlpipe ingest-raw "
                        "%s --day %s %s", config.raw, absent, len(loose), config.raw, absent, loose[0].parent)
        elif first is None or day_partition(date.fromisoformat(absent)) < first:  # before the raw data began
            log.info("raw/%s/%s not committed: treated as missing history", config.raw, absent)
        else:  # a gap: late or lost raw data, which later days' features also lack
            log.warning("raw/%s/%s is not committed though earlier days are: these features are computed without "
                        "its history. When it lands, run that day again with the feature tasks of the %d days "
                        "after it: `airflow tasks clear DAG --task-regex extract_features --downstream "
                        "--start-date %s --end-date %s --yes`", config.raw, absent, config.lookback_days, absent,
                        (date.fromisoformat(absent) + timedelta(days=config.lookback_days)).isoformat())
    interval = committed_days(config.raw, "raw", [day], required=True, late_ok=True)[0]
    raw_key = StageKey("raw", config.raw, day_partition(day))
    inputs = earlier + interval
    for m in inputs:  # a damaged raw day is named with its fix before any footer is read
        commit.check_unchanged(m)
    interval_rows = check_interval_partition(interval[0], raw_key)
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
            "interval_files": [str(p) for p in commit.files(interval[0], ".parquet")],
            "stats_path": str(attempt / "input_stats.json"),
            **fp_config,
        }
        spec_path = write_spec(attempt / "spec.json", spec)
        submit(eta_features.__file__, ["--spec", str(spec_path)])
        parts = name_parts_by_order(out)
        rows = parquet_rows(parts)
        stats = json.loads((attempt / "input_stats.json").read_text())
        stats["duplicate_rows"] = stats["rows_in_interval"] - rows  # copies of a trip the job dropped
        _warn_about_left_out(stats, raw_key)
        if rows == 0:  # rows in the file, none of them this day's: an empty partition would commit
            lost = (stats.get("without_order_ts", 0) or stats["before_interval_not_in_lookback"]
                    or stats["after_lookback_reach"])
            raise ConfigError(
                f"raw partition {raw_key.relpath}", f"{interval_rows} rows, none ordered on {day.isoformat()}",
                f"{stats.get('without_order_ts', 0)} have no order_ts, {stats['ordered_before_interval']} were "
                f"ordered before the day and {stats['ordered_after_interval']} after it, so the feature partition "
                f"would be empty; " + (
                    "some of them are in no feature partition (warned above): fix them, commit the day's data "
                    "again through ingestion, then clear the task" if lost else
                    "each is in another day's features, so nothing is lost: if the day truly had no trips, "
                    "mark this run's tasks skipped (later windows then list the day in missing_feature_days)"))
        return {"rows": rows, "day": day.isoformat(),
                "content_sha256": content_hash(parts, out),
                "history_days": len(inputs) - 1, "missing_history_days": sorted(missing),
                "interval_raw_rows": interval_rows, **stats}

    return commit.run_stage(key, inputs=inputs, config=fp_config, code=code,
                            run=run, produce=produce)


