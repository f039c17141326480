"""Deterministic raw trip events for the delivery-time (ETA) example, one Parquet file per day.

The data has the structure a real ETA model learns: delivery time grows with distance, slows
down at lunch and dinner peaks and in some cities, and each restaurant has its own preparation
time. Every day is generated from ``(seed, date)`` alone, so any day can be regenerated
identically and a rerun commits nothing new.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from dlpipe.commit import StageKey, StageResult, committed, run_newest_version
from dlpipe.errors import ConfigError
from dlpipe.hashing import sources_hash
from dlpipe.interval import day_partition
from dlpipe.runctx import RunContext

RAW_DATASET = "trips"
# name: (lat, lon, average courier speed km/h)
CITIES = {
    "berlin": (52.52, 13.40, 18.0),
    "madrid": (40.42, -3.70, 16.0),
    "paris": (48.86, 2.35, 14.0),
    "rome": (41.90, 12.50, 15.0),
}
# Each city's time zone: hour-of-day and weekend features are local (a lunch order is 12:30 in
# Paris in summer and in winter, while UTC shifts by an hour at each DST change).
CITY_TIME_ZONES = {"berlin": "Europe/Berlin", "madrid": "Europe/Madrid", "paris": "Europe/Paris", "rome": "Europe/Rome"}


MAX_ROWS_PER_DAY = 10_000_000  # a day is generated in memory


@dataclass(frozen=True)
class DemoDataConfig:
    """How much demo data to generate."""

    start: date = date(2026, 1, 1)  # first day generated
    days: int = 4  # number of daily partitions
    rows_per_day: int = 20_000  # trips per day
    restaurants: int = 200  # restaurants across all cities
    seed: int = 7  # same seed, same bytes

    def validate(self) -> None:
        if self.days < 1:
            raise ConfigError("days", self.days, "generate at least one day (--days 1 or more)")
        if not 1 <= self.rows_per_day <= MAX_ROWS_PER_DAY:  # an empty day is one the feature stage refuses
            raise ConfigError("rows_per_day", self.rows_per_day, f"use 1 to {MAX_ROWS_PER_DAY:,} rows; for more "
                                                                 f"data, generate more days")
        room = (date.max - self.start).days + 1
        if self.days > room:  # else it commits some days, then overflows
            raise ConfigError("days", self.days, f"the last day would be after {date.max}; use --days "
                                                 f"{room} or fewer, or an earlier --start")
        if self.restaurants < 1:
            raise ConfigError("restaurants", self.restaurants, "use at least one restaurant")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ConfigError("seed", self.seed, "use 0 or a positive integer (--seed 7)")


def _restaurants(cfg: DemoDataConfig) -> dict[str, np.ndarray]:
    """The fixed restaurant population: location, city and mean preparation time."""
    rng = np.random.default_rng(cfg.seed)
    names = sorted(CITIES)
    city_idx = rng.integers(0, len(names), cfg.restaurants)
    centers = np.array([CITIES[n][:2] for n in names])[city_idx]
    return {
        "city_idx": city_idx,
        "lat": centers[:, 0] + rng.normal(0, 0.03, cfg.restaurants),
        "lon": centers[:, 1] + rng.normal(0, 0.04, cfg.restaurants),
        "prep_mean": rng.uniform(8.0, 25.0, cfg.restaurants),
    }


def _day_seed(seed: int, day: date) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{day.isoformat()}".encode()).digest()[:8], "little")


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km (numpy arrays or scalars)."""
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 6371.0 * 2 * np.arcsin(np.sqrt(a))


def generate_day(cfg: DemoDataConfig, day: date):
    """One day of trips as a pyarrow Table (deterministic in ``(cfg, day)``)."""
    import pyarrow as pa

    rest = _restaurants(cfg)
    rng = np.random.default_rng(_day_seed(cfg.seed, day))
    n = cfg.rows_per_day
    names = sorted(CITIES)
    r = rng.integers(0, cfg.restaurants, n)
    city = rest["city_idx"][r]
    speed = np.array([CITIES[c][2] for c in names])[city]

    # Orders cluster around lunch (12:30) and dinner (19:30), with some all day long.
    kind = rng.random(n)
    hour = np.where(kind < 0.35, rng.normal(12.5, 1.0, n),
                    np.where(kind < 0.8, rng.normal(19.5, 1.3, n), rng.uniform(8, 23, n)))
    order_sec = np.clip(hour * 3600, 0, 86399).astype(np.int64)
    peak = np.exp(-((hour - 12.5) ** 2) / 2) + np.exp(-((hour - 19.5) ** 2) / 2)

    drop_lat = rest["lat"][r] + rng.normal(0, 0.02, n)
    drop_lon = rest["lon"][r] + rng.normal(0, 0.03, n)
    dist = haversine_km(rest["lat"][r], rest["lon"][r], drop_lat, drop_lon)
    prep = np.maximum(2.0, rest["prep_mean"][r] * (1 + 0.25 * peak) + rng.normal(0, 3.0, n))
    travel = dist / (speed * (1 - 0.3 * peak)) * 60.0
    wait = rng.exponential(3.0, n)
    delivery = prep + wait + travel + rng.normal(0, 2.0, n)
    delivery = np.maximum(delivery, prep + wait + 1.0)  # drop-off always after pickup

    midnight = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    base_us = int(midnight.timestamp() * 1_000_000)
    order_us = base_us + order_sec * 1_000_000
    pickup_us = order_us + ((prep + wait) * 60e6).astype(np.int64)
    drop_us = order_us + (delivery * 60e6).astype(np.int64)
    ts = pa.timestamp("us", tz="UTC")
    return pa.table({
        "trip_id": pa.array([f"{day:%Y%m%d}-{i:07d}" for i in range(n)], pa.string()),
        "order_ts": pa.array(order_us, ts),
        "pickup_ts": pa.array(pickup_us, ts),
        "dropoff_ts": pa.array(drop_us, ts),
        "restaurant_id": pa.array(r, pa.int32()),
        "city": pa.array([names[c] for c in city], pa.string()),
        "pickup_lat": pa.array(rest["lat"][r]), "pickup_lon": pa.array(rest["lon"][r]),
        "dropoff_lat": pa.array(drop_lat), "dropoff_lon": pa.array(drop_lon),
        "prep_minutes": pa.array(prep), "delivery_minutes": pa.array(delivery),
    })


def write_raw(cfg: DemoDataConfig, run: RunContext, home: Path | None = None) -> list[StageResult]:
    """Generate and commit one raw partition per day. A day whose newest version has the same
    settings and code is skipped; otherwise a new version of the day is committed, which readers
    take from then on (as when a day's raw data is landed again). Going back to earlier settings
    commits them again as the newest version."""
    import pyarrow.parquet as pq

    cfg.validate()
    days = [cfg.start + timedelta(days=i) for i in range(cfg.days)]
    for day in days:  # a team's own data under the demo's name is never replaced by synthetic trips
        versions = committed(StageKey("raw", RAW_DATASET, day_partition(day)), home)
        if versions and "seed" not in versions[-1]["config"]:
            raise ConfigError("--start/--days", day.isoformat(), f"raw/{RAW_DATASET}/dt={day.isoformat()} holds data "
                              f"that demo-data did not write ({versions[-1]['id']}), which it never replaces: "
                              f"generate other days, or use another DLPIPE_HOME")
    code = {"sources_hash": sources_hash([__file__])}
    results = []
    for day in days:
        key = StageKey("raw", RAW_DATASET, day_partition(day))
        # Only what determines this day's bytes: adding days later must not re-commit old ones.
        config = {"seed": cfg.seed, "rows_per_day": cfg.rows_per_day,
                  "restaurants": cfg.restaurants, "day": day.isoformat()}

        def produce(attempt: Path, day: date = day) -> dict:
            table = generate_day(cfg, day)
            pq.write_table(table, attempt / "part-00000.parquet", compression="zstd")
            return {"rows": table.num_rows, "day": day.isoformat()}

        results.append(run_newest_version(key, config=config, code=code, run=run, produce=produce, home=home))
    return results
