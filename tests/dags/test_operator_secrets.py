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
