"""Which feature partitions a dataset window reads: only those that the spec's feature settings
and today's code made. Feature manifests are committed for real; the Spark application is
replaced by a submit that records the job's spec and stops (only the choice of inputs is tested
here; tests/integration runs the real job)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dlpipe import commit
from dlpipe.errors import NotCommittedError
from dlpipe.runctx import RunContext
from feature_jobs.dataset_stage import DatasetConfig, materialize_dataset
from feature_jobs.feature_stage import FeatureJobConfig, feature_version

SPEC = FeatureJobConfig(lookback_days=2)


def _features(day: str, config: dict, code: dict) -> dict:
    def produce(attempt: Path) -> dict:
        (attempt / "data").mkdir()
        (attempt / "data" / "part-00000.parquet").write_bytes(day.encode())
        return {"rows": 1}

    return commit.run_stage(commit.StageKey("features", config["name"], f"dt={day}"), inputs=[], config=config,
                            code=code, run=RunContext(), produce=produce).manifest


def _input_files(window_days: int, features: FeatureJobConfig = SPEC, name: str = "eta") -> list[str]:
    """The feature files that the dataset job of 2026-01-03 would be given."""
    seen = {}

    def submit(application: str, args: list[str]) -> None:
        seen.update(json.loads(Path(args[1]).read_text()))
        raise RuntimeError("stop before Spark")

    with pytest.raises(RuntimeError, match="stop before Spark"):
        materialize_dataset("2026-01-03", "2026-01-04", config=DatasetConfig(features=name, window_days=window_days),
                            features=features, run=RunContext(), submit=submit)
    return seen["input_files"]


def _read_by_dataset(window_days: int, features: FeatureJobConfig = SPEC, name: str = "eta") -> list[str]:
    """The days whose feature partitions the dataset job of 2026-01-03 would read."""
    return sorted(Path(f).read_text() for f in _input_files(window_days, features, name))  # each file holds its day


def test_a_window_never_mixes_feature_versions_across_a_release(caplog):
    config, code = feature_version(SPEC)
    for day in ("2026-01-01", "2026-01-02"):  # made before a release changed the feature code
        _features(day, config, {"sources_hash": "code before the release"})
    _features("2026-01-03", config, code)
    with caplog.at_level(logging.WARNING):
        assert _read_by_dataset(window_days=3) == ["2026-01-03"]
    assert "['2026-01-01', '2026-01-02'] are missing or were made by other feature settings" in caplog.text
    _features("2026-01-02", config, code)  # backfilled with today's code: read again
    assert _read_by_dataset(window_days=3) == ["2026-01-02", "2026-01-03"]


def test_a_setting_reverted_reads_the_version_it_makes_not_the_newest():
    config, code = feature_version(SPEC)
    wanted = _features("2026-01-03", config, code)
    tried, _ = feature_version(SPEC.model_copy(update={"lookback_days": 3}))
    newer = _features("2026-01-03", tried, code)  # committed later, with a setting since reverted
    assert newer["committed_at"] >= wanted["committed_at"]
    assert _input_files(window_days=1) == [str(p) for p in commit.files(wanted, ".parquet")]


def test_the_last_day_must_have_the_specs_version():
    config, _ = feature_version(SPEC)
    _features("2026-01-03", config, {"sources_hash": "other code"})
    with pytest.raises(NotCommittedError, match=r"no feature partition features/eta/dt=2026-01-03 made by the "
                                                r"current feature settings and code \(other versions exist\)"):
        _read_by_dataset(window_days=1)


def test_another_specs_feature_set_is_read_at_the_version_of_its_newest_last_day():
    other = SPEC.model_copy(update={"name": "shared"})
    config, code = feature_version(other)
    _features("2026-01-01", config, code)
    _features("2026-01-02", {**config, "lookback_days": 9}, code)  # another version: left out
    _features("2026-01-03", config, code)
    assert _read_by_dataset(window_days=3, name="shared") == ["2026-01-01", "2026-01-03"]


def test_the_city_vocabulary_is_part_of_the_feature_version(monkeypatch):
    """Adding a city renumbers city_code: partitions made with the old list must not be reused."""
    import feature_jobs.feature_stage as stage

    before, _ = feature_version(SPEC)
    monkeypatch.setattr(stage, "CITIES", [*stage.CITIES, "lisbon"])
    after, _ = feature_version(SPEC)
    assert before["cities"] != after["cities"] and "lisbon" in after["cities"]


def test_each_stage_hashes_its_own_sources_and_the_shared_ones_only():
    """A fingerprint covers its stage's own sources (design.md): an edit to the dataset stage
    must not recompute every feature partition, nor a digits edit any ETA one. The feature
    stage hashes exactly its job, its stage module and the shared helpers (the dataset stage's
    files: the next test); neither ETA module holds another stage's code."""
    from dlpipe.hashing import sources_hash
    from feature_jobs import dataset_stage, eta_features, feature_stage
    from feature_jobs.stage_files import SHARED_SOURCES

    assert feature_version(SPEC)[1]["sources_hash"] == sources_hash(
        [eta_features.__file__, feature_stage.__file__, *SHARED_SOURCES])
    assert "def materialize_dataset" not in Path(feature_stage.__file__).read_text()
    for module in (feature_stage, dataset_stage):
        assert "digits" not in Path(module.__file__).read_text().lower()


def test_the_eta_fingerprints_hash_the_sources_hash_as_they_always_did():
    """Extra keys of a stage's ``code`` (the digits stage's scikit-learn version) now enter its
    fingerprint. The ETA stages record none, so their fingerprints keep the values that the rule
    of before gives (recomputed here by that rule): no committed partition is recomputed."""
    from dlpipe import audit
    from dlpipe.hashing import fingerprint, sources_hash
    from feature_jobs import dataset_stage, materialize
    from feature_jobs.stage_files import SHARED_SOURCES

    config, code = feature_version(SPEC)
    assert list(code) == ["sources_hash"]
    feature = _features("2026-01-03", config, code)
    assert feature["fingerprint"] == fingerprint({"stage": "features/eta/dt=2026-01-03", "inputs": [],
                                                  "config": config, "code": code["sources_hash"]})
    _input_files(window_days=1)  # the dataset stage, stopped before Spark: its fingerprint is audited
    started = [e for e in audit.read() if e["event"] == "started"][-1]
    assert started["fingerprint"] == fingerprint({
        "stage": "datasets/eta/window_end=2026-01-03",
        "inputs": [(feature["id"], feature["fingerprint"])],
        "config": DatasetConfig(features="eta", window_days=1).model_dump(),
        "code": sources_hash([materialize.__file__, dataset_stage.__file__, *SHARED_SOURCES]),
    })


def test_another_specs_missing_feature_partition_fails_at_once_not_retried():
    """A dataset over another spec's feature set that has no partition at all (a wrong name)
    fails without retry."""
    from dlpipe.errors import InputNotReady

    with pytest.raises(NotCommittedError, match=r"no committed features partition features/shared/dt=2026-01-03") as err:
        _input_files(window_days=1, name="shared")
    assert not isinstance(err.value, InputNotReady)


def test_another_specs_feature_set_that_has_not_reached_the_day_is_retried():
    """The other spec's DAG runs on its own schedule: a feature set with earlier partitions but
    none for the dataset's last day may be late (InputNotReady, retried), not wrong."""
    from dlpipe.errors import InputNotReady

    config, code = feature_version(FeatureJobConfig(name="shared", lookback_days=2))
    _features("2026-01-02", config, code)
    with pytest.raises(InputNotReady, match=r"feature set 'shared' \(another spec's\) for 2026-01-03 yet.*"
                                            r"ExternalTaskSensor"):
        _input_files(window_days=1, name="shared")
    _features("2026-01-03", config, code)
    assert _read_by_dataset(window_days=2, name="shared") == ["2026-01-02", "2026-01-03"]


def test_another_specs_day_that_waiting_cannot_bring_fails_at_once():
    """A day before the other set's first partition will not come by retrying; a day after it
    may, even one older than its newest (days commit out of order in a parallel backfill)."""
    from dlpipe.errors import InputNotReady

    config, code = feature_version(FeatureJobConfig(name="shared", lookback_days=2))
    _features("2026-01-10", config, code)
    with pytest.raises(NotCommittedError, match=r"features/shared/dt=2026-01-03") as err:
        _input_files(window_days=1, name="shared")
    assert not isinstance(err.value, InputNotReady)
    _features("2026-01-02", config, code)
    _features("2026-01-04", config, code)  # 01-03 not yet: out of order
    with pytest.raises(InputNotReady, match=r"partitions from dt=2026-01-02"):
        _input_files(window_days=1, name="shared")
