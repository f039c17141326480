"""Data intervals as whole UTC days: what a daily partition is keyed by."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from dlpipe.errors import ConfigError


def parse_instant(value: str | datetime | date, field: str) -> datetime:
    """An aware UTC datetime from an ISO string, a datetime or a date."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise ConfigError(field, value, "use an ISO-8601 date or timestamp, e.g. 2026-01-03") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def interval_days(start: str | datetime | date, end: str | datetime | date) -> list[date]:
    """The days of ``[start, end)``; both ends must fall on UTC midnight."""
    s, e = parse_instant(start, "data_interval_start"), parse_instant(end, "data_interval_end")
    for field, v in (("data_interval_start", s), ("data_interval_end", e)):
        if (v.hour, v.minute, v.second, v.microsecond) != (0, 0, 0, 0):
            raise ConfigError(field, v.isoformat(),
                              "daily partitions need intervals on UTC midnight: give the DAG schedule="
                              "CronDataIntervalTimetable('@daily', timezone='UTC') (airflow.sdk); a plain "
                              "'@daily' follows the time zone of its start_date or of the Airflow install")
    if e <= s:
        raise ConfigError("data_interval_end", e.isoformat(), f"must be after data_interval_start {s.isoformat()}")
    n = (e - s).days
    return [s.date() + timedelta(days=i) for i in range(n)]


def day_partition(day: date) -> str:
    return f"dt={day.isoformat()}"
