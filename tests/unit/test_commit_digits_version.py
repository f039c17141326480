"""The digits dataset is scikit-learn's bundled images: another scikit-learn version is another
input, so the dataset's fingerprint changes with it (feature_jobs/digits_stage.py records the
version in the stage's ``code``; commit.code_identity hashes it).

The Spark application is replaced by a submit that stops before Spark: the fingerprint is
computed, and audited in the ``started`` event, before the job runs (tests/integration runs the
real job). A different installed scikit-learn is injected by setting ``sklearn.__version__``."""

from __future__ import annotations

import pytest

from dlpipe import audit
from dlpipe.runctx import RunContext
from feature_jobs.digits_stage import DigitsConfig, materialize_digits


def _fingerprint_of_a_digits_run() -> str:
    def submit(application: str, args: list[str]) -> None:
        raise RuntimeError("stop before Spark")

    with pytest.raises(RuntimeError, match="stop before Spark"):
        materialize_digits(config=DigitsConfig(), run=RunContext(), submit=submit)
    return [e for e in audit.read() if e["event"] == "started"][-1]["fingerprint"]


def test_a_new_scikit_learn_version_is_a_new_digits_dataset(monkeypatch):
    import sklearn

    installed = _fingerprint_of_a_digits_run()
    assert _fingerprint_of_a_digits_run() == installed  # deterministic
    monkeypatch.setattr(sklearn, "__version__", "99.0.0")
    assert _fingerprint_of_a_digits_run() != installed
