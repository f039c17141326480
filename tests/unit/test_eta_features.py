"""The ETA feature job's logic on real Spark (build_features on a few hand-written trips): what
counts as a restaurant's history, and what a NaN does; and what a content hash covers."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from feature_jobs import eta_features

DAY = datetime(2026, 1, 4, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def spark():
    from dlpipe.spark_submit import spark_session

    session = spark_session("test_eta_features", master="local[1]")
    yield session
    session.stop()


def _trip(trip_id: str, restaurant: int, order: datetime, pickup_after_min: float, prep: float,
          city: str = "berlin") -> dict:
    return {"trip_id": trip_id, "order_ts": order, "pickup_ts": order + timedelta(minutes=pickup_after_min),
            "dropoff_ts": order + timedelta(minutes=40), "restaurant_id": restaurant, "city": city,
            "pickup_lat": 52.5, "pickup_lon": 13.4, "dropoff_lat": 52.51, "dropoff_lon": 13.41,
            "prep_minutes": prep, "delivery_minutes": 30.0}


def _features(spark, tmp_path: Path, trips: list[dict], history_days: int, day: datetime = DAY) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "raw.parquet"
    table = pa.Table.from_pylist(trips)
    table = table.cast(table.schema.set(table.schema.get_field_index("restaurant_id"),
                                        pa.field("restaurant_id", pa.int32())))
    pq.write_table(table, path)
    from dlpipe.demo_data import CITY_TIME_ZONES

    spec = {"input_files": [str(path)], "interval_start": day.isoformat(),
            "interval_end": (day + timedelta(days=1)).isoformat(),
            "history_start": (day - timedelta(days=7)).isoformat(), "history_days": history_days,
            "cities": sorted(CITY_TIME_ZONES), "city_time_zones": CITY_TIME_ZONES, "default_prep_minutes": 15.0}
    rows = eta_features.build_features(spark, spec).collect()
    return {r["trip_id"]: r.asDict() for r in rows}


def _features_rows(spark, tmp_path: Path, trips: list[dict]) -> list[dict]:
    """The rows themselves: trips without an id would collapse into one key of a dict."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dlpipe.demo_data import CITY_TIME_ZONES

    path = tmp_path / "raw_rows.parquet"
    pq.write_table(pa.Table.from_pylist(trips), path)
    spec = {"input_files": [str(path)], "interval_start": DAY.isoformat(),
            "interval_end": (DAY + timedelta(days=1)).isoformat(), "history_start": DAY.isoformat(),
            "history_days": 0, "cities": sorted(CITY_TIME_ZONES), "city_time_zones": CITY_TIME_ZONES,
            "default_prep_minutes": 15.0}
    return [r.asDict() for r in eta_features.build_features(spark, spec, partitions=2).collect()]


def test_history_is_what_was_known_before_the_interval(spark, tmp_path):
    """An order of D-1 23:50 picked up at D 00:20 is not history: its prep time was not known
    at midnight. A NaN prep time counts as unknown, like a null (it made the mean NaN for a
    week of partitions)."""
    trips = [
        _trip("h1", 1, DAY - timedelta(days=1, hours=-12), 10, 10.0),   # D-1 12:00: history
        _trip("h2", 1, DAY - timedelta(minutes=10), 30, 50.0),          # D-1 23:50, picked up after midnight
        _trip("h3", 1, DAY - timedelta(days=2), 10, float("nan")),      # NaN prep: unknown
        _trip("d1", 1, DAY + timedelta(minutes=5), 10, 12.0),           # the interval's trip
    ]
    got = _features(spark, tmp_path, trips, history_days=2)
    assert list(got) == ["d1"]
    assert got["d1"]["restaurant_prep_mean"] == pytest.approx(10.0)  # h1 only
    assert not math.isnan(got["d1"]["restaurant_prep_mean"])


def test_restaurant_trips_are_per_day_of_history_present(spark, tmp_path):
    """A day computed with 3 days of history and one with 7 must score a restaurant alike."""
    trips = [_trip(f"h{i}", 1, DAY - timedelta(days=1 + i % 3, hours=-12), 10, 10.0) for i in range(6)]
    trips.append(_trip("d1", 1, DAY + timedelta(hours=12), 10, 12.0))
    assert _features(spark, tmp_path, trips, history_days=3)["d1"]["restaurant_trips"] == pytest.approx(2.0)


def test_hour_and_weekend_are_on_the_citys_clock(spark, tmp_path):
    """Paris, summer: Friday 22:30 UTC is Saturday 00:30 in Paris (a weekend order at half past
    midnight); in winter a 11:30 UTC order is 12:30 local, the same lunch hour as in summer."""
    summer = datetime(2026, 7, 10, tzinfo=timezone.utc)  # a Friday
    trips = [_trip("sat", 1, summer + timedelta(hours=22, minutes=30), 10, 10.0, city="paris"),
             _trip("fri", 1, summer + timedelta(hours=12), 10, 10.0, city="paris")]
    got = _features(spark, tmp_path, trips, history_days=0, day=summer)
    assert got["sat"]["is_weekend"] == 1.0 and got["fri"]["is_weekend"] == 0.0
    from training.evaluate import hour_of_day

    assert hour_of_day(got["sat"]["hour_sin"], got["sat"]["hour_cos"]) == pytest.approx(0.5, abs=1e-3)
    assert hour_of_day(got["fri"]["hour_sin"], got["fri"]["hour_cos"]) == pytest.approx(14.0, abs=1e-3)


def test_a_content_hash_covers_rows_and_splits_not_the_writers_metadata(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe.hashing import content_hash

    table = pa.table({"k": ["a", "b"], "v": [1.0, 2.0]})
    for folder in ("train", "validation"):
        (tmp_path / folder).mkdir()
    pq.write_table(table.replace_schema_metadata({"org.apache.spark.version": "4.0.0"}), tmp_path / "train/x.parquet")
    before = content_hash([tmp_path / "train/x.parquet"], tmp_path, by_name=False)
    pq.write_table(table.replace_schema_metadata({"org.apache.spark.version": "4.0.1"}), tmp_path / "train/x.parquet")
    assert content_hash([tmp_path / "train/x.parquet"], tmp_path, by_name=False) == before  # a Spark upgrade
    (tmp_path / "train/x.parquet").rename(tmp_path / "validation/x.parquet")  # the same rows, in another split
    assert content_hash([tmp_path / "validation/x.parquet"], tmp_path, by_name=False) != before


def test_a_trip_delivered_twice_counts_once(spark, tmp_path):
    """At-least-once ingestion: an exact copy in one day, and a copy filed in the next day's
    partition too. Each counted twice in restaurant_trips, and the interval's copy was a second
    training row."""
    h = _trip("h1", 1, DAY - timedelta(days=1, hours=-12), 10, 10.0)
    d = _trip("d1", 1, DAY + timedelta(hours=12), 10, 12.0)
    trips = [h, dict(h), _trip("h2", 1, DAY - timedelta(days=2, hours=-12), 10, 20.0), d, dict(d)]
    got = _features(spark, tmp_path, trips, history_days=2)
    assert list(got) == ["d1"]
    assert got["d1"]["restaurant_trips"] == pytest.approx(1.0)  # h1 and h2 over 2 days, not 3 trips
    assert got["d1"]["restaurant_prep_mean"] == pytest.approx(15.0)
    later = {**d, "pickup_ts": d["pickup_ts"] + timedelta(minutes=1)}  # a corrected copy: the kept row is fixed
    assert _features(spark, tmp_path, [later, d], 0) == _features(spark, tmp_path, [d, later], 0)


def test_a_copy_with_values_wins_over_one_with_nan_and_trips_without_an_id_are_kept(spark, tmp_path):
    d = _trip("d1", 1, DAY + timedelta(hours=12), 10, 12.0)
    got = _features(spark, tmp_path, [{**d, "delivery_minutes": float("nan")}, d], 0)
    assert got["d1"]["delivery_minutes"] == pytest.approx(30.0)  # Spark sorts NaN above every number
    nan, null = {**d, "delivery_minutes": float("nan")}, {**d, "delivery_minutes": None}
    for copies in ([nan, null], [null, nan]):  # copies tied but for NaN and null: one order still
        assert math.isnan(_features(spark, tmp_path, copies, 0)["d1"]["delivery_minutes"])
    anonymous = [{**d, "trip_id": None}, {**d, "trip_id": None, "prep_minutes": 3.0}]
    rows = _features_rows(spark, tmp_path, [*anonymous, d])
    assert sorted(r["trip_id"] or "" for r in rows) == ["", "", "d1"]


def test_an_infinite_prep_time_counts_as_unknown(spark, tmp_path):
    trips = [_trip("h1", 1, DAY - timedelta(hours=12), 10, 10.0), _trip("h2", 1, DAY - timedelta(hours=13), 10, float("inf")),
             _trip("d1", 1, DAY + timedelta(hours=1), 10, 12.0)]
    assert _features(spark, tmp_path, trips, history_days=1)["d1"]["restaurant_prep_mean"] == pytest.approx(10.0)


def test_input_stats_count_copies_and_rows_filed_under_another_day(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = _trip("d1", 1, DAY + timedelta(hours=1), 10, 12.0)
    own = [d, dict(d), _trip("late", 1, DAY - timedelta(hours=2), 10, 9.0),
           _trip("early", 1, DAY + timedelta(days=1, hours=1), 10, 9.0),  # read by D+1's run (lookback 1)
           _trip("too early", 1, DAY + timedelta(days=2, hours=1), 10, 9.0),  # read by no run
           {**_trip("no time", 1, DAY, 10, 9.0), "order_ts": None}]  # in no day
    files = []
    for name, rows in (("history", [_trip("h1", 1, DAY - timedelta(hours=5), 10, 9.0)]), ("own", own)):
        files.append(str(tmp_path / f"{name}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows), files[-1])
    stats = eta_features.input_stats(spark, {"input_files": files, "interval_files": files[1:],
                                             "interval_start": DAY.isoformat(), "lookback_days": 1,
                                             "interval_end": (DAY + timedelta(days=1)).isoformat()})
    assert stats == {"input_rows": 7, "rows_in_interval": 2, "ordered_before_interval": 1,
                     "before_interval_not_in_lookback": 1, "ordered_after_interval": 2, "after_lookback_reach": 1,
                     "without_order_ts": 1}
    # a second copy of a trip already filed under its own day is not lost
    redelivered = _trip("h1", 1, DAY - timedelta(hours=5), 10, 9.0)
    pq.write_table(pa.Table.from_pylist([*own, redelivered]), files[1])
    stats = eta_features.input_stats(spark, {"input_files": files, "interval_files": files[1:],
                                             "interval_start": DAY.isoformat(), "lookback_days": 1,
                                             "interval_end": (DAY + timedelta(days=1)).isoformat()})
    assert stats["ordered_before_interval"] == 2 and stats["before_interval_not_in_lookback"] == 1
