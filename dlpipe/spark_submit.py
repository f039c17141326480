"""How the core asks for a Spark application to run, without depending on Airflow.

A ``SparkSubmit`` is any callable taking the application file and its argument list. Operators
pass one built on the Apache Spark provider's SparkSubmitHook (master from an Airflow
connection); tests and the CLI use :func:`local_spark_submit`, which runs the real
``spark-submit`` of the installed pyspark.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from typing import Callable, Sequence

from dlpipe.proc import run_streaming

SparkSubmit = Callable[[str, Sequence[str]], None]


def spark_session(app_name: str, *, master: str | None = None, conf: dict[str, str] | None = None):
    """A SparkSession with the settings every dlpipe job shares: UTC timestamps, 8 shuffle
    partitions, WARN logs. Under spark-submit leave ``master`` unset: spark-submit sets it."""
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
    """Environment for spark-submit: pyspark's own SPARK_HOME and this interpreter first on PATH.

    pip's spark-submit script locates SPARK_HOME with whatever ``python3`` is on PATH; outside an
    activated venv that is the system Python, which has no pyspark.
    """
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pyspark is not installed in this environment; run `make setup`")
    bindir = os.path.dirname(sys.executable)
    return {
        **os.environ,
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

    def submit(application: str, args: Sequence[str]) -> None:
        argv = [binary, "--master", master]
        for k, v in {**default_conf(), **(conf or {})}.items():
            argv += ["--conf", f"{k}={v}"]
        run_streaming([*argv, application, *args], env=spark_env(), timeout_s=timeout_s,
                      emit=emit, on_start=on_start)

    return submit
