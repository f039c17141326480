"""Credentials given to an operator do not reach its task log."""

from __future__ import annotations

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.sdk._shared.secrets_masker import redact

from operators.features import hook_submitter


def test_credential_spark_settings_are_masked_in_the_logged_command(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", "host": "local[1]"}')
    secrets = {"spark.hadoop.fs.s3a.session.token": "FQoGZXIvYXdzEXAMPLEsessiontoken",
               "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "azureKEYexample0123==",
               "spark.kubernetes.authenticate.oauthToken": "oauth-example-0123456"}
    plain = {"spark.executor.memory": "8g", "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000"}
    conf = {**secrets, **plain}
    # The command line SparkSubmitHook logs ("Spark-Submit cmd: ..."), after its own masking,
    # which covers only "secret" and "password" keys: these three pass it in the clear.
    hook = SparkSubmitHook(conn_id="dlpipe_spark", conf=conf)
    logged = hook._mask_cmd(hook._build_spark_submit_command("app.py"))
    assert all(v in logged for v in secrets.values())
    hook_submitter("dlpipe_spark", conf, "t", [])  # what the operator does before submitting
    shown = redact(logged)
    assert not [k for k, v in secrets.items() if v in shown], shown
    assert all(v in shown for v in plain.values())  # only credentials are hidden


def test_a_failed_spark_attempt_records_its_error_without_the_credentials(monkeypatch, tmp_path):
    """spark-submit's error repeats its command line; the audit log, which outlives every task
    log, records that error with the credential values replaced (real spark-submit, failing on
    an application that is not there)."""
    import json

    import pytest

    from dlpipe import commit, settings
    from dlpipe.runctx import RunContext

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", "host": "local[1]"}')
    conf = {"spark.hadoop.fs.s3a.session.token": "TOKEN-never-in-the-audit-log",
            "spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net": "AZKEY-never-in-the-audit-log"}
    submit = hook_submitter("dlpipe_spark", conf, "t.t", [])
    with pytest.raises(Exception, match="Cannot execute"):
        commit.run_stage(commit.StageKey("features", "eta", "dt=2026-01-03"), inputs=[], config={},
                         code={"sources_hash": "x"}, run=RunContext(),
                         produce=lambda attempt: submit(str(tmp_path / "no_such_app.py"), []))
    text = settings.audit_log_path().read_text()
    (failed,) = [json.loads(line) for line in text.splitlines() if json.loads(line)["event"] == "failed"]
    assert "Cannot execute" in failed["error"] and "spark.hadoop.fs.s3a.session.token=***" in failed["error"]
    assert "never-in-the-audit-log" not in text
