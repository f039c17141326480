"""Credentials given to an operator reach neither its task log nor any command line."""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert "Cannot execute" in failed["error"] and "--properties-file" in failed["error"]
    assert "never-in-the-audit-log" not in text


APP = """
import glob, json, os, sys
from pyspark.sql import SparkSession
conf = SparkSession.builder.getOrCreate().sparkContext.getConf()
keys = ["spark.hadoop.fs.s3a.session.token", "spark.hadoop.fs.s3a.encryption.key", "spark.dlpipe.from_defaults"]
seen = []  # processes whose command line shows the token: what any local user could read with ps
for path in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        if sys.argv[2][::-1].encode() in open(path, "rb").read():  # given reversed: argv is a command line
            seen.append(path)
    except OSError:
        pass
json.dump({"conf": {k: conf.get(k, None) for k in keys}, "seen": seen}, open(sys.argv[1], "w"))
"""


def test_spark_credentials_reach_the_job_but_no_command_line(monkeypatch, tmp_path):
    """Real spark-submit: credential settings arrive in the application's SparkConf through a
    properties file only this user can read, no process's command line carries them, the
    cluster's spark-defaults.conf still applies, and the file is gone afterwards."""
    import json

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", "host": "local[1]"}')
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.dlpipe.from_defaults   yes\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf_dir))
    token, key = "TOKEN-only-in-a-private-file", "ENCKEY-with=an equals\\and a backslash"
    conf = {"spark.hadoop.fs.s3a.session.token": token, "spark.hadoop.fs.s3a.encryption.key": key}
    app, out = tmp_path / "app.py", tmp_path / "out.json"
    app.write_text(APP)
    from dlpipe.spark_submit import _private_dir

    before = set(Path(_private_dir()).glob("dlpipe-spark-*"))
    hooks: list = []
    hook_submitter("dlpipe_spark", conf, "t.secrets", hooks)(str(app), [str(out), token[::-1]])
    got = json.loads(out.read_text())
    assert got["conf"] == {"spark.hadoop.fs.s3a.session.token": token,
                           "spark.hadoop.fs.s3a.encryption.key": key, "spark.dlpipe.from_defaults": "yes"}
    assert got["seen"] == [], "the token is on a command line"
    command = hooks[0]._build_spark_submit_command(str(app))
    assert not [a for a in command if token in a or key in a]
    assert set(Path(_private_dir()).glob("dlpipe-spark-*")) == before  # the file was removed


def test_the_properties_file_is_private_and_parses_back(tmp_path, monkeypatch):
    import os
    import stat

    from dlpipe.spark_submit import secret_properties, split_secret_conf

    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # no spark-defaults.conf there
    plain, secret = split_secret_conf({"spark.executor.memory": "8g",
                                       "spark.hadoop.fs.azure.sas.c.acct.blob.core.windows.net": " sv=1&sig=a\\b",
                                       "spark.kafka.sasl.jaas.config": "x required;\nnext"})
    assert list(plain) == ["spark.executor.memory"] and len(secret) == 2
    with secret_properties(secret) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        text = Path(path).read_text()
    assert not os.path.exists(path)
    # java.util.Properties reading, for these escapes: a leading backslash keeps a leading space
    lines = text.splitlines()
    assert lines[0] == "spark.hadoop.fs.azure.sas.c.acct.blob.core.windows.net=\\ sv=1&sig=a\\\\b"
    assert lines[1] == "spark.kafka.sasl.jaas.config=x required;\\nnext"
    with secret_properties({}) as none:
        assert none is None


def test_keys_with_separators_switches_and_orphaned_files(tmp_path, monkeypatch):
    """A key holding '=', ':' or a space stays one key; a credential setting that is a switch
    (true/false) is not masked, which would hide every such word in every log; the folder of a
    submission killed before its cleanup is removed by the next one."""
    import os
    import subprocess
    import sys

    from dlpipe import spark_submit
    from dlpipe.spark_submit import _properties_escape, secret_properties, secret_values

    assert _properties_escape("a=b:c d", key=True) == "a\\=b\\:c\\ d"
    assert secret_values({"spark.security.credentials.hive.enabled": "false", "x.token": "T0KEN"}) == ["T0KEN"]
    monkeypatch.setattr(spark_submit, "_private_dir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    namespace = spark_submit._pid_namespace()
    orphan = tmp_path / f"dlpipe-spark-{namespace}-{dead.pid}-abc"
    orphan.mkdir()
    (orphan / "credentials.properties").write_text("k=v\n")
    alive = tmp_path / f"dlpipe-spark-{namespace}-{os.getpid()}-def"  # a submission still running: kept
    elsewhere = tmp_path / f"dlpipe-spark-1-{dead.pid}-ghi"  # another PID namespace's: not ours to judge
    for folder in (alive, elsewhere):
        folder.mkdir()
    with secret_properties({"x.token": "v"}) as path:
        assert Path(path).parent.parent == tmp_path
    assert not orphan.exists() and alive.exists() and elsewhere.exists()


def test_a_secret_cut_by_the_audit_logs_length_limit_is_still_masked(tmp_path):
    """The audit log keeps 2,000 characters of an error: masking comes first, so a secret that
    straddles the cut leaves no prefix of itself behind."""
    from dlpipe import audit, settings
    from dlpipe.runctx import RunContext

    secret = "S3SECRETVALUE-0123456789"
    audit.hide(secret)
    error = RuntimeError("x" * 1960 + f" fs.s3a.secret.key={secret} and more")  # cut at 2000
    audit.failed(error, stage="features", run=RunContext())
    text = settings.audit_log_path().read_text()
    assert "S3SEC" not in text and "***" in text


def test_spark_submit_gets_no_airflow_connection_variable_or_setting(monkeypatch):
    from dlpipe.spark_submit import spark_env

    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", "postgres://u:pw@db/x")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://airflow:pw@db/airflow")
    monkeypatch.setenv("AIRFLOW_VAR_API", "v")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    env = spark_env()
    assert not [k for k in env if k.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_VAR_"))]
    assert env["AWS_REGION"] == "eu-west-1"  # the rest of the environment is passed on


@pytest.mark.parametrize("extra", [{"DB_PASS": "x"}, {"MY_TOKEN": "x"}, {"BROKER": "redis://u:pw@h:6379"},
                                   {"DB_URL": "postgresql://db/x?user=app&password=hunter2"},
                                   {"AUTH_HEADER": "Bearer eyJhbGciOi"},
                                   {"MODEL_URL": "https://b.s3.amazonaws.com/m.pt?X-Amz-Signature=abc123"},
                                   {"JAVA_OPTS": "-Djavax.net.ssl.keyStorePassword=hunter2"}])
def test_a_credential_given_to_the_ranks_is_refused_naming_the_variable_not_its_value(extra):
    """horovodrun shows every rank's environment on its command line (any user's ps)."""
    import pytest

    from dlpipe.errors import ConfigError
    from operators.train import HorovodTrainOperator

    with pytest.raises(ConfigError) as err:
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", env={"OMP_NUM_THREADS": "2", **extra})
    (name,) = extra
    assert "argument env" in str(err.value) and name in str(err.value) and "ps" in str(err.value)
    assert extra[name] not in str(err.value).replace(name, "")
    HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", env={"OMP_NUM_THREADS": "2", "DLPIPE_HOME": "/d"})


def test_credentials_in_the_workers_environment_do_not_reach_the_ranks(monkeypatch):
    """The values Spark's settings are judged by are judged the same in an inherited variable:
    a query password, a bearer token, a presigned URL's signature."""
    from training.launcher import training_env

    monkeypatch.setenv("DB_URL", "postgresql://db/x?user=app&password=hunter2")
    monkeypatch.setenv("AUTH_HEADER", "Bearer eyJhbGciOi")
    monkeypatch.setenv("MODEL_URL", "https://b.s3.amazonaws.com/m.pt?X-Amz-Signature=abc123")
    monkeypatch.setenv("LISTING_URL", "https://b.s3.amazonaws.com/?max-keys=3")
    env = training_env({"OMP_NUM_THREADS": "2"})
    assert not {"DB_URL", "AUTH_HEADER", "MODEL_URL"} & set(env)
    assert env["LISTING_URL"] == "https://b.s3.amazonaws.com/?max-keys=3" and env["OMP_NUM_THREADS"] == "2"
