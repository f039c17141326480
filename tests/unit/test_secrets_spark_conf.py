"""Which Spark settings are credentials: those go in a private properties file, never on
spark-submit's command line (which `ps` shows every local user, and SparkSubmitHook's error text
repeats into task logs and the audit log). Settings that set an environment variable of the
driver, the executors or YARN's application master are judged by the variable's name and value,
with the rules that keep credentials out of Horovod's ranks: one policy for a credential in an
environment, wherever the environment is."""

from __future__ import annotations

import json

import pytest

from dlpipe import errors
from dlpipe.spark_submit import is_secret_conf, local_spark_submit, split_secret_conf

CREDENTIALS = {
    "spark.executorEnv.OPENAI_API_KEY": "sk-live-9f8e7d6c5b4a3210",
    "spark.yarn.appMasterEnv.DB_PASS": "p4ss",
    "spark.kubernetes.driverEnv.REDIS_PWD": "p4ss",
    "spark.executorEnv.GITHUB_TOKEN": "ghp_x",
    "spark.executorEnv.STRIPE_KEY": "sk_x",
    "spark.executorEnv.GITHUB_PAT": "pat",
    "spark.executorEnv.KAFKA_SASL_JAAS_CONFIG": "x required;",
    "spark.executorEnv.AIRFLOW_CONN_WAREHOUSE": "postgres://db/w",  # Airflow's own, whatever its value
    "spark.executorEnv.DB_PASSWORD_FILE": "hunter2",  # a locator's name, a secret's value
    "spark.openlineage.transport.auth.apiKey": "ol-key",  # a Spark setting named like an API key
    "spark.hadoop.javax.jdo.option.ConnectionURL": "jdbc:postgresql://hive:pw@db:5432/metastore",  # a login
    "spark.hadoop.fs.s3a.secret.key": "s3secret",  # caught before, still caught
    # credentials inside a value: JVM options and a JDBC URL's query
    "spark.driver.extraJavaOptions": "-XX:+UseG1GC -Djavax.net.ssl.keyStorePassword=KsPw1234",
    "spark.sql.catalog.hive.uri": "jdbc:mysql://db/hive?user=hive&password=HivePw99",
    "spark.executorEnv.DB_CREDS": "user:pw",
    "spark.executorEnv.CI_JOB_JWT": "eyJhbGciOi",
    # connectors' own names: elasticsearch-hadoop, spark-redis, an HTTP Authorization header
    "spark.es.net.http.auth.pass": "EsPass-1",
    "spark.redis.auth": "RedisAuth-2",
    "spark.openlineage.transport.headers.X-Token": "Bearer OLTok-3",  # a bearer token in a value
    "spark.openlineage.transport.headers.Authorization": "Basic dXNlcjpwdw==",
    # a URL login whose password holds a '/' (as AWS secret keys do), a token as a URL's user,
    # Oracle's user/password@host
    "spark.executorEnv.MLFLOW_TRACKING_URI": "https://alice:s3cr/et@mlflow.example.com",
    "spark.executorEnv.HF_ENDPOINT": "https://hf_TOKEN0123456789abcd@hub.example",
    "spark.sql.catalog.ora.url": "jdbc:oracle:thin:scott/tiger@db:1521:orcl",
    # a login in the second URL of a list
    "spark.jars.repositories": "https://repo1.maven.org/maven2,https://user:s3cret@nexus.corp/repo",
}

ORDINARY = {
    "spark.sql.shuffle.partitions": "8",
    "spark.executor.memory": "8g",
    "spark.executorEnv.PYTHONPATH": "/opt/dlpipe",
    "spark.yarn.appMasterEnv.JAVA_HOME": "/usr/lib/jvm/java-17",
    "spark.executorEnv.HADOOP_CONF_DIR": "/etc/hadoop/conf",
    "spark.executorEnv.SSH_AUTH_SOCK": "/tmp/ssh-x/agent.1",
    "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
    "spark.kerberos.keytab": "/etc/security/keytabs/dlpipe.keytab",  # where a key is, not a key
    "spark.kerberos.principal": "dlpipe@EXAMPLE.COM",
    "spark.io.encryption.keySizeBits": "256",
    "spark.jars.packages": "org.apache.hadoop:hadoop-aws:3.4.1",
    "spark.executor.extraJavaOptions": "-XX:+UseG1GC -Dlog4j.configuration=file:/opt/log4j.properties",
    "spark.executorEnv.GIT_REMOTE": "ssh://git@github.com/team/repo.git",  # a user's name, no password
    "spark.executorEnv.MODELS": "s3://bucket/eta@3/model.pt",  # an '@' in a path
    "spark.executorEnv.MODEL_URL": "http://host:8080/models/eta@3",  # a port, then an '@' in the path
}


@pytest.mark.parametrize("key", sorted(CREDENTIALS))
def test_credential_settings_go_to_the_properties_file(key):
    plain, secret = split_secret_conf({key: CREDENTIALS[key], **ORDINARY})
    assert secret == {key: CREDENTIALS[key]} and plain == ORDINARY


@pytest.mark.parametrize("key", sorted(ORDINARY))
def test_ordinary_settings_stay_on_the_command_line(key):
    assert not is_secret_conf(key, ORDINARY[key])


def test_the_environment_rules_are_the_horovod_ranks_rules():
    """Every variable a rank is denied is denied to each of Spark's environments too (one
    policy, dlpipe.proc.secret_env), and a variable a rank may have stays on the command line."""
    from dlpipe import proc
    from training import config, launcher
    from tests.unit.test_proc import MORE_SECRETS

    assert config._secret is proc.secret_env and launcher.secret_env is proc.secret_env
    prefixes = ("spark.executorEnv.", "spark.yarn.appMasterEnv.", "spark.kubernetes.driverEnv.",
                "spark.mesos.driverEnv.")
    for name in MORE_SECRETS:
        assert all(is_secret_conf(prefix + name, "value-of-a-credential") for prefix in prefixes), name
    for name, value in (("NCCL_SOCKET_IFNAME", "eth0"), ("PYTHONPATH", "/opt/x"), ("HADOOP_CONF_DIR", "/etc/h")):
        assert not any(is_secret_conf(prefix + name, value) for prefix in prefixes), name


APP_THAT_FAILS = "import sys; sys.exit(3)\n"

APP_READS_ITS_UI = """
import json, sys, urllib.request
from pyspark.sql import SparkSession
sc = SparkSession.builder.getOrCreate().sparkContext
url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/environment"
print("UI_PROPERTIES", json.dumps(dict(json.load(urllib.request.urlopen(url))["sparkProperties"])))
"""


def test_a_clusters_own_redaction_regex_is_kept(tmp_path, monkeypatch):
    """The properties file replaces spark-defaults.conf (holding a copy of it): the regex written
    there must extend the cluster's, not Spark's default."""
    from dlpipe.spark_submit import submission_conf

    (tmp_path / "spark-defaults.conf").write_text("spark.executor.memory 2g\n"
                                                   "spark.redaction.regex   (?i)secret|mycorp\\.vault\\.\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    _, secret = submission_conf({"spark.executorEnv.X_TOKEN": "t0k3n"})
    assert secret["spark.redaction.regex"].startswith("(?i:secret|mycorp\\.vault\\.)|")
    assert secret["spark.redaction.regex"].endswith("|(?:spark\\.executorEnv\\.X_TOKEN)")


def test_spark_ui_masks_every_credential_setting(tmp_path):
    """Real spark-submit; the application reads its own UI's REST API. Spark's default
    spark.redaction.regex showed an Azure account key, an SSE-C key and an executor's API key."""
    app = tmp_path / "app.py"
    app.write_text(APP_READS_ITS_UI)
    conf = {"spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "AZURE-KEY-1==",
            "spark.hadoop.fs.s3a.encryption.key": "SSE-C-KEY-2",
            "spark.executorEnv.OPENAI_API_KEY": "sk-live-3",
            "spark.executorEnv.HF_ENDPOINT": "https://hf_TOKEN0123456789abcd@hub.example",
            "spark.executor.memory": "1g"}
    lines: list[str] = []
    local_spark_submit("local[1]", conf=conf, emit=lines.append)(str(app), [])
    (shown,) = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("UI_PROPERTIES ")]
    assert {k: shown[k] for k in conf} == {**{k: "*********(redacted)" for k in conf}, "spark.executor.memory": "1g"}


def test_local_spark_submit_puts_no_credential_on_its_command_line(tmp_path):
    """Real spark-submit, on an application that exits 3: the command it ran (as `ps` shows it)
    carries the properties file, not the credential."""
    app = tmp_path / "app.py"
    app.write_text(APP_THAT_FAILS)
    started = []
    conf = {"spark.executorEnv.OPENAI_API_KEY": CREDENTIALS["spark.executorEnv.OPENAI_API_KEY"],
            "spark.executorEnv.PYTHONPATH": "/opt/dlpipe", "spark.sql.shuffle.partitions": "8"}
    submit = local_spark_submit("local[1]", conf=conf, emit=lambda line: None, on_start=started.append)
    with pytest.raises(errors.SubprocessFailed, match="exited with code 3"):
        submit(str(app), [])
    argv = started[0].args
    assert not [a for a in argv if "sk-live" in a] and "--properties-file" in argv
    assert "spark.executorEnv.PYTHONPATH=/opt/dlpipe" in argv  # ordinary settings stay there


def test_a_failed_spark_attempt_keeps_an_env_credential_out_of_the_audit_log(monkeypatch, tmp_path):
    """The reviewer's case: SparkSubmitHook's error repeats its command line, and run_stage
    writes that error to the audit log (real spark-submit through the operator's submitter)."""
    from dlpipe import commit, settings
    from dlpipe.runctx import RunContext
    from operators.features import hook_submitter

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", "host": "local[1]"}')
    app = tmp_path / "app.py"
    app.write_text(APP_THAT_FAILS)
    value = "sk-live-never-in-the-audit-log"
    submit = hook_submitter("dlpipe_spark", {"spark.executorEnv.OPENAI_API_KEY": value}, "t.env", [])
    with pytest.raises(Exception, match="Cannot execute"):
        commit.run_stage(commit.StageKey("features", "eta", "dt=2026-01-03"), inputs=[], config={},
                         code={"sources_hash": "x"}, run=RunContext(),
                         produce=lambda attempt: submit(str(app), []))
    text = settings.audit_log_path().read_text()
    (failed,) = [json.loads(line) for line in text.splitlines() if json.loads(line)["event"] == "failed"]
    assert "--properties-file" in failed["error"] and "never-in-the-audit-log" not in text


@pytest.mark.parametrize("master", ['"host": "k8s://https://10.0.0.1:443"',
                                    '"host": "spark://spark-master.k8s-prod.internal", "port": 7077'])
def test_a_kubernetes_master_without_its_provider_is_a_config_error(monkeypatch, master):
    """SparkSubmitHook takes any master with 'k8s' in it for Kubernetes and then fails with a
    NameError (kube_client), retried as if transient; the Kubernetes provider is not installed."""
    pytest.importorskip("airflow.providers.apache.spark")
    try:
        import airflow.providers.cncf.kubernetes  # noqa: F401
        pytest.skip("the Kubernetes provider is installed here: the hook takes such a master")
    except ImportError:
        pass
    from operators.features import hook_submitter

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_SPARK", '{"conn_type": "spark", ' + master + '}')
    submit = hook_submitter("dlpipe_spark", {}, "t.k8s", [])
    with pytest.raises(errors.ConfigError, match=r"connection 'dlpipe_spark': its Spark master='k8s': .*"
                                          r"apache-airflow-providers-cncf-kubernetes"):
        submit("app.py", [])
