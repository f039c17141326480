"""External tools: output streamed, failures carry the tail, timeouts kill the process group."""

from __future__ import annotations

import sys
import time

import pytest

from dlpipe.errors import SubprocessFailed
from dlpipe.proc import run_streaming


def test_output_is_streamed_and_returned():
    seen = []
    tail = run_streaming([sys.executable, "-c", "print('a'); print('b')"], emit=seen.append)
    assert seen == ["a", "b"] and tail == ["a", "b"]


def test_failure_carries_the_tail():
    code = "import sys\nfor i in range(100): print(i)\nsys.exit(3)"
    with pytest.raises(SubprocessFailed) as e:
        run_streaming([sys.executable, "-c", code], emit=lambda _: None, tail_lines=5)
    msg = str(e.value)
    assert "exited with code 3" in msg and "    99" in msg and "    94" not in msg


def test_timeout_kills_children_too(tmp_path):
    pidfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n")
    t0 = time.monotonic()
    with pytest.raises(SubprocessFailed, match="timeout of 2s"):
        run_streaming([sys.executable, "-c", code], timeout_s=2, emit=lambda _: None)
    assert time.monotonic() - t0 < 15
    child = int(pidfile.read_text())
    time.sleep(0.5)
    assert not _alive(child), "the grandchild outlived the timeout"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_horovod_ranks_get_no_credentials(monkeypatch):
    from training.launcher import training_env

    secrets = {"AIRFLOW_CONN_DLPIPE_S3": "aws://AKIA:hunter2@", "AIRFLOW_VAR_TOKEN": "t",
               "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t", "AIRFLOW__CORE__FERNET_KEY": "f",
               "AIRFLOW__API_AUTH__JWT_SECRET": "j", "PGPASSWORD": "p",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw@db/airflow",
               "AIRFLOW__CELERY__BROKER_URL": "redis://:pw@redis:6379/0", "DB_PASSWD": "p",
               "DATABASE_URL": "postgres://u:p@h/d", "HTTPS_PROXY": "http://user:pw@proxy:3128"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DLPIPE_HOME", "/data/dlpipe")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")  # a URL without a password stays
    env = training_env({"NCCL_DEBUG": "WARN"})
    assert not set(secrets) & set(env), sorted(set(secrets) & set(env))
    assert env["DLPIPE_HOME"] == "/data/dlpipe" and env["NCCL_DEBUG"] == "WARN"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] == "30"


def test_the_frozen_rank_bound_is_pinned_and_the_job_or_the_worker_may_change_it(monkeypatch):
    """The Gloo timeout is what ends a job with a frozen rank: dlpipe pins Horovod's 30 s
    default, the worker's environment may change it, and a job's env= wins over both."""
    from training.launcher import training_env

    monkeypatch.delenv("HOROVOD_GLOO_TIMEOUT_SECONDS", raising=False)
    assert training_env()["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "30"
    monkeypatch.setenv("HOROVOD_GLOO_TIMEOUT_SECONDS", "120")
    assert training_env()["HOROVOD_GLOO_TIMEOUT_SECONDS"] == "120"
    env = training_env({"HOROVOD_GLOO_TIMEOUT_SECONDS": "45", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "90"})
    assert (env["HOROVOD_GLOO_TIMEOUT_SECONDS"], env["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"]) == ("45", "90")


MORE_SECRETS = ["AZURE_STORAGE_CONNECTION_STRING", "DB_PASS", "GITHUB_PAT", "KAFKA_SASL_JAAS_CONFIG",
                "DOCKER_AUTH_CONFIG", "SLACK_WEBHOOK_URL", "OPENAI_APIKEY", "NPM_CONFIG__AUTH", "REDIS_PW",
                "SSH_PRIVATE_KEY", "AZURE_SAS_TOKEN"]


@pytest.mark.parametrize("name", MORE_SECRETS)
def test_credential_names_of_other_tools_stay_out_of_the_ranks_too(monkeypatch, name):
    from training.launcher import training_env

    monkeypatch.setenv(name, "value-of-a-credential")
    assert name not in training_env()


@pytest.mark.parametrize("name, value", [
    ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1"), ("AWS_SHARED_CREDENTIALS_FILE", "/home/u/.aws/credentials"),
    ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcp/sa.json"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/x"), ("NCCL_SOCKET_IFNAME", "eth0"),
    ("HOROVOD_GLOO_TIMEOUT_SECONDS", "60"), ("LD_LIBRARY_PATH", "/usr/local/cuda/lib64"), ("OMP_NUM_THREADS", "4"),
    ("GIT_REMOTE", "ssh://git@github.com/team/repo.git"), ("MODEL_URL", "s3://bucket/eta@3/model.pt"),
])
def test_where_credentials_are_and_what_ranks_need_still_reach_them(monkeypatch, name, value):
    """Credentials travel as files, ssh-agent and roles: the names that point at them pass, as
    variables in the operator's env= too."""
    from training.launcher import training_env

    monkeypatch.setenv(name, value)
    assert training_env()[name] == value
    assert training_env({name: value})[name] == value  # not refused as a credential


@pytest.mark.parametrize("name, value", [
    ("DB_PASSWORD_FILE", "hunter2"),  # a locator's name, a secret's value
    ("GOOGLE_APPLICATION_CREDENTIALS", '{"type": "service_account", "private_key": "x"}'),
    ("SSH_KEY_PATH", "-----BEGIN OPENSSH PRIVATE KEY-----"), ("GPG_PASSPHRASE", "p"), ("OPENAI_API_KEYS", "k1,k2"),
    # URL logins by value, whatever the name: a password holding '/' (passed before), a token as the user
    ("MLFLOW_TRACKING_URI", "https://alice:s3cr/et@mlflow.example.com"),
    ("HF_ENDPOINT", "https://hf_TOKEN0123456789abcd@hub.example"),
    ("KUBE_API", "k8s://https://admin:Kube/Pass@api:6443"),
])
def test_a_secret_in_a_locators_name_or_a_new_kind_of_name_stays_out(monkeypatch, name, value):
    from dlpipe.errors import ConfigError
    from training.launcher import training_env

    monkeypatch.setenv(name, value)
    assert name not in training_env()
    with pytest.raises(ConfigError, match=name):
        training_env({name: value})



def test_undecodable_output_is_escaped_not_fatal():
    """A tool writing bytes that are not UTF-8 (a native library, a Latin-1 file name) kept
    running; reading its output raised UnicodeDecodeError, killed it and lost every line."""
    seen = []
    tail = run_streaming(["sh", "-c", r"echo working; printf 'caf\351\n'; echo done"], emit=seen.append)
    assert seen == ["working", "caf\\xe9", "done"] and tail == seen


def test_a_line_without_end_comes_in_pieces_of_bounded_size():
    from dlpipe.proc import MAX_LINE

    code = "import sys\nsys.stdout.write('x' * 30000)\nsys.exit(2)"
    with pytest.raises(SubprocessFailed) as e:
        run_streaming([sys.executable, "-c", code], emit=lambda _: None)
    assert e.value.tail and all(len(line) <= MAX_LINE for line in e.value.tail)
    assert sum(len(line) for line in e.value.tail) == 30000


START_TOOL = {
    # run_streaming: the command line is ours (setpriv --pdeathsig)
    "run_streaming": "from dlpipe.proc import run_streaming\n"
                     "run_streaming(['sleep', '60'], on_start=lambda p: open(PIDFILE, 'w').write(str(p.pid)))\n",
    # the Spark provider's Popen: its command line is not ours (preexec_fn)
    "preexec_fn": "import subprocess, time\nfrom dlpipe.proc import set_parent_death_signal\n"
                  "p = subprocess.Popen(['sleep', '60'], start_new_session=True, preexec_fn=set_parent_death_signal)\n"
                  "open(PIDFILE, 'w').write(str(p.pid))\ntime.sleep(60)\n",
}


@pytest.mark.parametrize("how", sorted(START_TOOL))
def test_a_tool_ends_when_the_process_that_started_it_is_killed(tmp_path, how):
    """The tool runs in a session of its own, beyond a kill of its parent's group; SIGKILL of
    the parent (Airflow escalating a task kill) must not leave it running, nor what it started
    (horovodrun's middlemen end the ranks when horovodrun dies)."""
    import os
    import signal
    import subprocess

    pidfile = tmp_path / "tool.pid"
    parent = subprocess.Popen([sys.executable, "-c", f"PIDFILE = {str(pidfile)!r}\n" + START_TOOL[how]])
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    tool = int(pidfile.read_text())
    assert _alive(tool)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(tool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(tool), "the tool outlived the process that started it"


def test_a_training_task_killed_before_horovodrun_starts_ends_it_at_once():
    """Airflow 3's SIGTERM handler calls on_kill and returns: a kill during the task's set-up
    found no horovodrun to stop, and the task went on to start it."""
    import subprocess

    from operators.train import HorovodTrainOperator

    op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml")
    op.on_kill()
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    op._started(proc)
    assert proc.wait(timeout=15) != 0


def test_a_spark_task_killed_before_spark_submit_starts_submits_nothing():
    from operators import SparkFeatureOperator

    op = SparkFeatureOperator(task_id="f", pipeline_config="x.yaml")
    op.on_kill()
    from dlpipe.runctx import RunContext

    submit = op._submitter(RunContext())
    with pytest.raises(SubprocessFailed, match="killed before spark-submit started"):
        submit("app.py", [])
