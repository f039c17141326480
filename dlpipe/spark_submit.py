"""How the core asks for a Spark application to run, without depending on Airflow.

A ``SparkSubmit`` is any callable taking the application file and its argument list. Operators
pass one built on the Apache Spark provider's SparkSubmitHook (master from an Airflow
connection); tests and the CLI use :func:`local_spark_submit`, which runs the real
``spark-submit`` of the installed pyspark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from dlpipe.errors import CREDENTIAL_WORDS, credential_value
from dlpipe.proc import AIRFLOW_SECRET_ENV, run_streaming, secret_env

SparkSubmit = Callable[[str, Sequence[str]], None]

# Spark settings whose values are credentials: S3A keys, session tokens and encryption keys, Azure
# account keys and SAS tokens, SSL, SASL and authentication secrets, OAuth tokens, API keys. They
# never go on spark-submit's command line, which every local user can read (`ps`): they go in a
# properties file only this user can read (``secret_properties``), and their values are masked in
# logs. A key (access, account, encryption) counts as a whole name part: spark.io.encryption.keySizeBits
# is a number, not a key.
# Connectors' own names count too: elasticsearch-hadoop's es.net.http.auth.pass, spark-redis's
# spark.redis.auth, an HTTP Authorization header (spark.openlineage.transport.headers.Authorization).
SECRET_CONF = re.compile(rf"{CREDENTIAL_WORDS}|(account|access|encryption)\.key(\.|$)"
                         r"|api[._-]?key|private|\.sas\.|jaas|auth\.pass(\.|$)|\.auth$|authorization",
                         re.IGNORECASE)
# Spark masks settings matching spark.redaction.regex in its UI, REST API and event logs; its
# default knows few names (no Azure account key, no SSE-C key, no executorEnv.*_API_KEY).
SPARK_REDACTION_DEFAULT = r"(?i)secret|password|token|access[.]?key|credential"
REDACTION = "spark.redaction.regex"
# Settings that set an environment variable of Spark's driver, executors or YARN application
# master: the variable is judged as an environment variable (``is_secret_conf``).
ENV_CONF = re.compile(r"^spark\.(executorEnv|yarn\.appMasterEnv|kubernetes\.driverEnv|mesos\.driverEnv)\.(?P<name>.+)$")


def is_secret_conf(key: str, value: str) -> bool:
    """Whether the Spark setting ``key=value`` holds a credential: named like one, a value that
    is one (a URL with a login, a PEM key), or an environment variable that Horovod's ranks would
    be denied (``proc.secret_env``: *_KEY, *_PASS, *_PWD, *_TOKEN, Airflow's own...), so that
    one policy decides what a credential in an environment is. A setting caught wrongly still
    reaches Spark, through the properties file; only its value is masked in logs."""
    if SECRET_CONF.search(key) or credential_value(value):
        return True
    env = ENV_CONF.match(key)
    if env is None:
        return False
    return secret_env(env["name"], value)


def split_secret_conf(conf: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(plain settings, credential settings) of ``conf``."""
    secret = {k: str(v) for k, v in conf.items() if is_secret_conf(k, str(v))}
    return {k: v for k, v in conf.items() if k not in secret}, secret


def submission_conf(conf: dict[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(command-line settings, properties-file settings) for one submission: dlpipe's defaults
    under ``conf``, split by ``split_secret_conf``. With credentials, the file also widens
    ``spark.redaction.regex`` (a user's own included) to their exact names and to every name
    dlpipe takes for a credential, so that Spark's UI, REST API and event logs mask them all."""
    plain, secret = split_secret_conf({**default_conf(), **(conf or {})})
    if secret:
        # the properties file replaces spark-defaults.conf (it holds a copy): a cluster's own regex stays in
        parts = [plain.pop(REDACTION, None) or _defaults_setting(REDACTION) or SPARK_REDACTION_DEFAULT,
                 "(?i)" + SECRET_CONF.pattern,
                 *(re.escape(k) for k in sorted(secret))]
        secret[REDACTION] = "|".join(f"(?i:{p[4:]})" if p.startswith("(?i)") else f"(?:{p})" for p in parts)
    return plain, secret


def secret_values(secret: dict[str, str]) -> list[str]:
    """The values of credential settings worth masking in logs: a switch such as
    ``spark.security.credentials.hive.enabled=false`` is no secret, and masking "false" would
    hide every false in every log line."""
    return [v for k, v in secret.items() if v and v.strip().lower() not in ("true", "false") and k != REDACTION]


def _properties_escape(text: str, key: bool = False) -> str:
    """``text`` as a java.util.Properties key or value (what spark-submit's file reader parses).
    In a key, '=', ':' and whitespace would end it, so they are escaped too."""
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    if key:
        for c in ("=", ":", " ", "\t", "\f"):
            out = out.replace(c, "\\" + c)
    return "\\" + out if out[:1] in (" ", "\t", "\f", "#", "!") else out


def _defaults_setting(key: str) -> str | None:
    """``key``'s value in spark-defaults.conf (the last one given), if any."""
    path = _defaults_file()
    found = None
    for line in path.read_text(encoding="utf-8").splitlines() if path else []:
        setting = re.match(r"\s*([^\s=:#!]+)\s*[=:\s]\s*(.*?)\s*$", line)  # KEY VALUE, KEY=VALUE, KEY: VALUE
        if setting and setting[1] == key:
            found = setting[2]
    return found


def _defaults_file() -> Path | None:
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(spark_env()["SPARK_HOME"], "conf")
    path = Path(conf_dir) / "spark-defaults.conf"
    return path if path.is_file() else None


_FOLDER_PREFIX = "dlpipe-spark-"


def _private_dir() -> str:
    """Where the credentials file goes: memory (/dev/shm) where there is one, so that a task
    killed with SIGKILL leaves its file in RAM only, until the next submission removes it."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _pid_namespace() -> str:
    """This process's PID namespace: a pid means something only there, and containers can
    share /dev/shm."""
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "0"


def _owner_tag() -> str:
    """This process as folder names give it: its PID namespace and pid."""
    return f"{_pid_namespace()}-{os.getpid()}"


def _remove_orphans(parent: str) -> None:
    """Remove the credential folders of this user's submissions, in this PID namespace, whose
    process is gone (killed before its cleanup ran)."""
    for folder in Path(parent).glob(f"{_FOLDER_PREFIX}{_pid_namespace()}-*-*"):
        try:
            pid = int(folder.name[len(_FOLDER_PREFIX):].split("-")[1])
            if folder.stat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)  # raises when no such process
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, IndexError, OSError):  # not ours to judge: another user's process, a stray name
            continue


@contextlib.contextmanager
def secret_properties(secret: dict[str, str]) -> Iterator[str | None]:
    """A properties file holding ``secret`` for ``spark-submit --properties-file``, readable by
    this user alone and removed afterwards; None when there is nothing secret.

    spark-submit reads spark-defaults.conf only when no properties file is given, so the
    file starts with its contents: a cluster's defaults still apply, and settings given here win."""
    if not secret:
        yield None
        return
    parent = _private_dir()
    _remove_orphans(parent)
    folder = tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{_owner_tag()}-", dir=parent)  # mode 0700
    try:
        defaults = _defaults_file()
        text = (defaults.read_text(encoding="utf-8") + "\n") if defaults else ""
        text += "".join(f"{_properties_escape(k, key=True)}={_properties_escape(v)}\n" for k, v in secret.items())
        path = os.path.join(folder, "credentials.properties")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def spark_session(app_name: str, *, master: str | None = None, conf: dict[str, str] | None = None):
    """A SparkSession with UTC timestamps, 8 shuffle partitions and WARN logs. The Spark stages
    pass their own output settings (``feature_jobs.session.OUTPUT_CONF``, which their
    fingerprints hash) over these defaults; other sessions (the data gate's) use them as they
    are. Under spark-submit leave ``master`` unset: spark-submit sets it."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {"spark.sql.session.timeZone": "UTC", "spark.sql.shuffle.partitions": "8",
                       **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def default_conf() -> dict[str, str]:
    """Spark settings every dlpipe application needs: executors use this interpreter."""
    return {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
    }


def spark_env() -> dict[str, str]:
    """Environment for spark-submit: pyspark's own SPARK_HOME and this interpreter first on PATH,
    without Airflow's connections, variables and configuration.

    pip's spark-submit script locates SPARK_HOME with whatever ``python3`` is on PATH; outside an
    activated venv that is the system Python, which has no pyspark.
    """
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pyspark is not installed in this environment; run `make setup`")
    bindir = os.path.dirname(sys.executable)
    return {
        **{k: v for k, v in os.environ.items() if not AIRFLOW_SECRET_ENV.match(k)},
        "SPARK_HOME": os.environ.get("SPARK_HOME") or list(spec.submodule_search_locations)[0],
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "PYSPARK_PYTHON": sys.executable,
        # petastorm 0.13 warns on every legacy pyarrow call it makes, in every Python worker.
        "PYTHONWARNINGS": "ignore:pyarrow.localfs is deprecated:FutureWarning",
    }


def local_spark_submit(master: str = "local[2]", conf: dict[str, str] | None = None,
                       timeout_s: float | None = 3600, emit: Callable[[str], None] | None = None,
                       on_start: Callable[[subprocess.Popen], None] | None = None) -> SparkSubmit:
    """A SparkSubmit that runs ``spark-submit --master MASTER`` from this environment.

    ``emit`` receives each output line, ``on_start`` the process (to watch or kill it).
    """
    binary = shutil.which("spark-submit", path=os.path.dirname(sys.executable) + os.pathsep
                          + os.environ.get("PATH", ""))
    if binary is None:
        raise FileNotFoundError("spark-submit not found next to this Python or on PATH; install pyspark")

    plain, secret = submission_conf(conf)

    def submit(application: str, args: Sequence[str]) -> None:
        argv = [binary, "--master", master]
        for k, v in plain.items():
            argv += ["--conf", f"{k}={v}"]
        with secret_properties(secret) as properties:
            if properties:
                argv += ["--properties-file", properties]
            run_streaming([*argv, application, *args], env=spark_env(), timeout_s=timeout_s,
                          emit=emit, on_start=on_start)

    return submit
