"""The feature stage reads every raw input's Parquet footer before Spark does: a type Spark cannot
read as the job's kind, or one file's type differing from another's, fails there naming the file,
the column, the type and the fix (Spark fails mid-job naming neither). The interval's own raw
partition must have rows: an empty one would commit an empty feature partition, and a dataset
over it."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlpipe import commit
from dlpipe.commit import StageKey
from dlpipe.demo_data import DemoDataConfig, generate_day
from dlpipe.errors import ConfigError
from dlpipe.runctx import RunContext
from feature_jobs.feature_stage import FeatureJobConfig, check_raw_files, extract_features

DAY = date(2026, 1, 3)


def _day(day: date = DAY) -> pa.Table:
    """A small day of demo trips: us UTC timestamps, int32 restaurant_id, string city."""
    return generate_day(DemoDataConfig(start=day, days=1, rows_per_day=30, restaurants=5), day)


def _with(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


def _write(path: Path, table: pa.Table, **kwargs) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def _commit_raw(day: date, table: pa.Table | None) -> None:
    """Commit raw/trips/dt=<day> holding ``table``, or only a _SUCCESS marker when None."""
    def produce(attempt: Path) -> dict:
        if table is None:
            (attempt / "_SUCCESS").write_bytes(b"")
        else:
            pq.write_table(table, attempt / "part-00000.parquet")
        return {"rows": 0 if table is None else table.num_rows}

    commit.run_stage(StageKey("raw", "trips", f"dt={day.isoformat()}"), inputs=[], config={"day": day.isoformat()},
                     code={"sources_hash": "test"}, run=RunContext(), produce=produce)


NOTHING_LEFT_OUT = {"input_rows": 30, "rows_in_interval": 1, "ordered_before_interval": 0, "before_interval_not_in_lookback": 0,
                    "ordered_after_interval": 0, "after_lookback_reach": 0}


def _extract(lookback_days: int = 1, stats: dict = NOTHING_LEFT_OUT, rows: int = 1) -> tuple[dict | None, list[str]]:
    """extract_features for DAY with a stand-in for Spark that reports ``stats`` as the job's
    input_stats; (its manifest, the apps submitted)."""
    submitted: list[str] = []

    def fake_spark_job(app: str, args: list[str]) -> None:
        submitted.append(app)
        spec = json.loads(Path(args[args.index("--spec") + 1]).read_text())
        out = Path(spec["output_dir"])
        out.mkdir(parents=True)
        pq.write_table(pa.table({"trip_id": pa.array(["a"] * rows, pa.string())}), out / "part-00000-0c9e.snappy.parquet")
        Path(spec["stats_path"]).write_text(json.dumps(stats))

    end = date(DAY.year, DAY.month, DAY.day + 1)
    result = extract_features(DAY.isoformat(), end.isoformat(), config=FeatureJobConfig(lookback_days=lookback_days),
                              run=RunContext(), submit=fake_spark_job)
    return result.manifest, submitted


def test_ns_timestamps_are_refused_with_the_writer_setting_that_fixes_them(tmp_path):
    """pyarrow writes pandas' ns data as ns by default; Spark then fails with 'Expected Spark
    type timestamp, actual Parquet type INT64'."""
    df = _day().to_pandas()
    df["order_ts"] = df["order_ts"].astype("datetime64[ns, UTC]")
    path = _write(tmp_path / "ns.parquet", pa.Table.from_pandas(df, preserve_index=False))
    with pytest.raises(ConfigError) as e:
        check_raw_files([path])
    assert str(e.value).startswith(f"invalid raw file {path}: column order_ts='timestamp[ns, tz=UTC]': ")
    assert "write it with coerce_timestamps='us' (pyarrow) or as microseconds, then commit the partition again" \
        in str(e.value)
    # the writer setting the message names is one the check accepts
    check_raw_files([_write(tmp_path / "us.parquet", pa.Table.from_pandas(df, preserve_index=False),
                            coerce_timestamps="us")])


def test_unsigned_integers_are_accepted_and_must_agree_across_files(tmp_path):
    """Spark 4.3 reads an unsigned column alone as it reads a signed one; mixed with the
    int32 files of other days it fails, as any two integer widths do."""
    table = _day()
    unsigned = _write(tmp_path / "u.parquet", _with(table, "restaurant_id", table["restaurant_id"].cast(pa.uint32())))
    check_raw_files([unsigned])
    with pytest.raises(ConfigError, match=re.escape(f"column restaurant_id='int32': {unsigned} has it as uint32")):
        check_raw_files([unsigned, _write(tmp_path / "s.parquet", table)])


@pytest.mark.parametrize("order", ["int64 first", "int32 first"])
def test_files_that_disagree_on_a_column_type_are_refused_naming_both(tmp_path, order):
    """Spark takes the schema from one file and fails on the other ('Expected Spark type int,
    actual Parquet type INT64'), whichever is read first."""
    table = _day()
    wide = _write(tmp_path / "dt=2026-01-02.parquet",
                  _with(table, "restaurant_id", table["restaurant_id"].cast(pa.int64())))
    narrow = _write(tmp_path / "dt=2026-01-03.parquet", table)
    paths = [wide, narrow] if order == "int64 first" else [narrow, wide]
    types = {wide: "int64", narrow: "int32"}
    with pytest.raises(ConfigError) as e:
        check_raw_files(paths)
    assert str(e.value).startswith(
        f"invalid raw file {paths[1]}: column restaurant_id='{types[paths[1]]}': "
        f"{paths[0]} has it as {types[paths[0]]}; Spark reads every input file as one file's type")


def test_timestamps_spark_reads_alike_may_mix_and_naive_ones_may_not(tmp_path):
    """ms, us and INT96 (Spark's own default) with a time zone are one timestamp type to Spark;
    a naive timestamp may be read as TIMESTAMP_NTZ, so it must not mix with them."""
    table = _day()
    ms = _write(tmp_path / "ms.parquet", table, coerce_timestamps="ms", allow_truncated_timestamps=True)
    us = _write(tmp_path / "us.parquet", table)
    int96 = _write(tmp_path / "int96.parquet", table, use_deprecated_int96_timestamps=True, store_schema=False)
    check_raw_files([ms, us, int96])
    naive = table
    for column in ("order_ts", "pickup_ts"):
        naive = _with(naive, column, table[column].cast(pa.timestamp("us")))
    naive_path = _write(tmp_path / "naive.parquet", naive)
    with pytest.raises(ConfigError, match=re.escape(
            f"column order_ts='timestamp[us]': {us} has it as timestamp[us, tz=UTC]")):
        check_raw_files([us, naive_path])


def test_a_pandas_category_city_is_a_string(tmp_path):
    """pandas writes a category as dictionary<values=string, indices=int32>; Parquet stores the
    strings, which Spark reads as a string column, like a plain string file's."""
    df = _day().to_pandas()
    df["city"] = df["city"].astype("category")
    category = _write(tmp_path / "category.parquet", pa.Table.from_pandas(df, preserve_index=False))
    assert str(pq.read_schema(category).field("city").type).startswith("dictionary<values=string, indices=int32")
    check_raw_files([category, _write(tmp_path / "plain.parquet", _day())])
    numbers = _day()  # a dictionary of numbers is stored, and read, as its numbers: not a string
    numbers = _with(numbers, "city", pa.array([1] * numbers.num_rows, pa.int32()).dictionary_encode())
    with pytest.raises(ConfigError, match=r"column city='int32': the ETA feature job reads it as string"):
        check_raw_files([_write(tmp_path / "numbers.parquet", numbers)])


def test_timestamps_spark_reads_are_accepted(tmp_path):
    """Naive timestamps as before, and Spark's and Hive's legacy INT96 (which pyarrow shows as ns)."""
    table = _day()
    naive = table
    for column in ("order_ts", "pickup_ts"):
        naive = _with(naive, column, table[column].cast(pa.timestamp("us")))
    check_raw_files([_write(tmp_path / "naive.parquet", naive)])
    int96 = _write(tmp_path / "int96.parquet", table, use_deprecated_int96_timestamps=True, store_schema=False)
    assert pq.read_schema(int96).field("order_ts").type == pa.timestamp("ns")
    check_raw_files([int96])


def test_an_empty_interval_partition_is_refused_before_spark():
    _commit_raw(date(2026, 1, 2), _day(date(2026, 1, 2)))
    _commit_raw(DAY, _day().slice(0, 0))
    with pytest.raises(ConfigError) as e:
        _extract()
    assert str(e.value) == (
        "invalid raw partition raw/trips/dt=2026-01-03='0 rows in 1 file(s)': the interval's own partition is "
        "empty, so its feature partition would be too; commit the day's data again through ingestion, then "
        "clear the task. If the day truly had no trips, mark this run's tasks skipped: later windows then list "
        "the day in missing_feature_days")
    assert commit.committed(StageKey("features", "eta", "dt=2026-01-03")) == []


def test_an_interval_partition_without_a_parquet_file_is_refused_before_spark():
    """With no history either, Spark failed with [UNABLE_TO_INFER_SCHEMA], naming no partition."""
    _commit_raw(DAY, None)
    with pytest.raises(ConfigError, match=re.escape(
            "invalid raw partition raw/trips/dt=2026-01-03='0 rows in 0 file(s)'")):
        _extract(lookback_days=0)
    assert commit.committed(StageKey("features", "eta", "dt=2026-01-03")) == []


def test_an_empty_history_day_is_allowed_and_the_interval_rows_are_recorded():
    _commit_raw(date(2026, 1, 1), None)
    _commit_raw(date(2026, 1, 2), _day(date(2026, 1, 2)).slice(0, 0))
    _commit_raw(DAY, _day())
    manifest, submitted = _extract(lookback_days=2)
    assert len(submitted) == 1
    assert manifest["summary"]["interval_raw_rows"] == 30
    assert manifest["summary"]["history_days"] == 2
    # the summary is a record, not an input: the fingerprint is what the stage's inputs, config and code give
    assert commit.recomputed_fingerprints(manifest) == {manifest["fingerprint"]}


def test_what_the_job_left_out_is_in_the_summary_and_the_log(caplog):
    """Rows of dt=D ordered on an earlier day are in no feature partition: said, not silent."""
    _commit_raw(DAY, _day())
    left_out = {**NOTHING_LEFT_OUT, "rows_in_interval": 3, "ordered_before_interval": 5,  # the job wrote 1 row
                "before_interval_not_in_lookback": 3, "ordered_after_interval": 6, "after_lookback_reach": 4}
    with caplog.at_level("WARNING", logger="feature_jobs.feature_stage"):
        manifest, _ = _extract(lookback_days=0, stats=left_out)
    assert {k: manifest["summary"][k] for k in left_out} == left_out and manifest["summary"]["duplicate_rows"] == 2
    text = caplog.text
    assert "2 raw row(s) of the day's trips repeated a trip_id" in text
    assert "3 row(s) of raw/trips/dt=2026-01-03 were ordered before its day, and their trips are not in the " \
           "lookback partitions" in text
    assert "4 row(s) of raw/trips/dt=2026-01-03 were ordered later than lookback_days after its day" in text


def test_a_day_whose_rows_are_none_of_its_own_is_refused_not_committed_empty(caplog):
    """Rows without an order_ts (an ingestion bug) fall in no day: counted, said, and a day with
    nothing else is refused instead of committing an empty feature partition that no later check
    would see (it is not a missing day)."""
    _commit_raw(DAY, _day())
    stats = {**NOTHING_LEFT_OUT, "rows_in_interval": 0, "without_order_ts": 5}
    with caplog.at_level("WARNING", logger="feature_jobs.feature_stage"), \
            pytest.raises(ConfigError, match=r"raw partition raw/trips/dt=2026-01-03=.*none ordered on 2026-01-03.*"
                                             r"5 have no order_ts.*in no feature partition.*commit the day's data again"):
        _extract(lookback_days=0, stats=stats, rows=0)
    assert "5 row(s) of raw/trips/dt=2026-01-03 have no order_ts" in caplog.text
    # every row a late copy of a trip already in the lookback: nothing lost, and the advice says so
    stats = {**NOTHING_LEFT_OUT, "rows_in_interval": 0, "ordered_before_interval": 30}
    with pytest.raises(ConfigError, match=r"each is in another day's features, so nothing is lost.*mark this run's "
                                          r"tasks skipped"):
        _extract(lookback_days=0, stats=stats, rows=0)
    assert not list((commit.StageKey("features", "eta", "dt=2026-01-03").dir() / "manifests").glob("*.json"))
