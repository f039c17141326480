"""SparkFeatureOperator: the feature job through the Apache Spark provider's SparkSubmitHook."""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Sequence

from dlpipe import audit
from dlpipe.commit import StageResult
from dlpipe.errors import ConfigError, SubprocessFailed
from dlpipe.pipeline_config import section
from dlpipe.proc import kill_process_group, set_parent_death_signal
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import SparkSubmit, secret_properties, secret_values, spark_env, submission_conf
from operators.base import DlpipeOperator

log = logging.getLogger(__name__)


def mask_conf_secrets(secret: dict[str, str]) -> None:
    """Register the values of credential settings (``split_secret_conf``) with Airflow's secrets
    masker and with the audit log. They are not on spark-submit's command line
    (``secret_properties``), but a Spark error message or a driver's log can still repeat one."""
    from airflow.sdk.log import mask_secret

    for value in secret_values(secret):
        mask_secret(value)
        audit.hide(value)


# The Spark provider takes any master with 'k8s' in it for Kubernetes (a substring test), and
# then needs the Kubernetes provider, which dlpipe's environment does not install.
KUBERNETES_FIX = ("the Spark provider takes a master containing 'k8s' for Kubernetes, which needs "
                  "apache-airflow-providers-cncf-kubernetes installed on the Airflow workers (dlpipe's "
                  "environment does not install it): install it under Airflow's constraints, or, for a "
                  "standalone master whose host name contains 'k8s', name that host by its IP address")


def hook_submitter(conn_id: str, conf: dict[str, str] | None, name: str, holder: list,
                   resources: dict[str, Any] | None = None,
                   killed: Callable[[], bool] = lambda: False) -> SparkSubmit:
    """A SparkSubmit backed by SparkSubmitHook: master and deploy mode come from ``conn_id``;
    ``resources`` are SparkSubmitHook's own arguments (executor_memory, total_executor_cores...).
    Nothing is submitted once ``killed()``: Airflow's SIGTERM handler calls on_kill and returns,
    and a kill during the task's set-up would otherwise be followed by a submission."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    plain, secret = submission_conf(conf)
    mask_conf_secrets(secret)

    def submit(application: str, args: Sequence[str]) -> None:
        with secret_properties(secret) as properties:
            try:
                hook = SparkSubmitHook(conn_id=conn_id, conf=plain, properties_file=properties,
                                       application_args=list(args), name=name, **(resources or {}))
            except NameError as exc:  # the provider's kube_client, imported only where cncf-kubernetes is
                if "kube_client" not in str(exc):
                    raise
                raise ConfigError(f"Airflow connection {conn_id!r}: its Spark master", "k8s", KUBERNETES_FIX) from None
            holder[:] = [hook]  # for on_kill
            if killed():
                raise SubprocessFailed("the task was killed before spark-submit started; nothing was submitted")
            # Its own session, so that on_kill can reach spark-submit's children as one group;
            # SIGTERM when the task process dies, SIGKILL included, so that none outlives it.
            hook.submit(application=application, env=spark_env(), start_new_session=True,
                        preexec_fn=set_parent_death_signal)

    return submit


def kill_submissions(hooks: Sequence[Any], grace_s: float = 5.0) -> None:
    """What a task kill or timeout does to its spark-submit: the provider's own ``on_kill``
    (the driver on a cluster, the YARN or Kubernetes application, spark-submit itself), then
    the rest of spark-submit's process group. The provider kills spark-submit alone, which
    leaves a client-mode Python driver and whatever it started running."""
    for hook in hooks:
        proc = getattr(hook, "_submit_sp", None)
        hook.on_kill()
        if proc is not None:
            left = kill_process_group(proc.pid, grace_s)
            if left:
                log.warning("spark-submit's processes %s outlived SIGKILL (uninterruptible I/O?)", left)


# Sizes as they are read. executor_memory: Spark's JavaUtils.byteStringAs, digits and an optional
# unit, any case, no space (no 'gib'). driver_memory: in client mode (local[*] included) spark-submit
# hands it to the driver's JVM as -Xmx, which takes only k, m, g or t ('1gb' and '1 g' fail there).
MEMORY = {
    "executor_memory": (re.compile(r"([0-9]+)(b|k|kb|m|mb|g|gb|t|tb|p|pb)?", re.I),
                        "a size as Spark reads one: digits and an optional unit (k, m, g, t, or kb, mb, gb, "
                        "tb), no space, such as '8g' or '512m'"),
    "driver_memory": (re.compile(r"([0-9]+)([kmgt])", re.I),  # without a unit, -Xmx1024 means 1024 bytes
                      "a size the driver's JVM takes as -Xmx: digits and one of k, m, g or t, no space, "
                      "such as '8g' or '512m' (not '1024', '8gb', '8 g' or '8gib')"),
}
RESOURCE_ARGS = ("driver_memory", "executor_memory", "executor_cores", "num_executors",
                 "total_executor_cores")


class SparkStageOperator(DlpipeOperator):
    """Base of the operators that run a Spark application for the run's data interval.

    :param conn_id: Spark connection; its host is the master (``local[*]``, ``spark://h:7077``...)
    :param spark_conf: extra ``--conf`` settings
    :param spark_resources: SparkSubmitHook resources, e.g. ``{"executor_memory": "8g",
        "total_executor_cores": 64}`` (driver_memory, executor_memory, executor_cores,
        num_executors, total_executor_cores)
    :param data_interval_start/end: templated; default to the run's data interval (a manual
        run triggered without a logical date has none, and fails saying so)
    """

    template_fields: Sequence[str] = ("pipeline_config", "data_interval_start", "data_interval_end")

    def __init__(self, *, conn_id: str = "dlpipe_spark", spark_conf: dict[str, str] | None = None,
                 spark_resources: dict[str, Any] | None = None,
                 data_interval_start: str | None = None, data_interval_end: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # not "resources": BaseOperator already has an attribute of that name
        self.conn_id, self.spark_conf = conn_id, spark_conf or {}
        self.spark_resources = spark_resources or {}
        argument = f"{type(self).__name__}(task_id={self.task_id!r}) argument"
        unknown = sorted(set(self.spark_resources) - set(RESOURCE_ARGS))
        if unknown:  # at parse time, like the Horovod operator's arguments
            raise ConfigError(f"{argument} spark_resources", unknown, f"use only {', '.join(RESOURCE_ARGS)}")
        from feature_jobs.session import OUTPUT_CONF

        pinned = sorted(k for k in set(self.spark_conf) & set(OUTPUT_CONF) if str(self.spark_conf[k]) != OUTPUT_CONF[k])
        if pinned:  # the applications set these in their session, over spark-submit's --conf
            raise ConfigError(f"{argument} spark_conf", pinned,
                              f"remove them: dlpipe's Spark applications fix {OUTPUT_CONF} themselves (timestamps are "
                              f"UTC days; the settings are part of each output's fingerprint), so a value here "
                              f"would be ignored")
        for key, value in self.spark_resources.items():  # spark-submit would refuse it, and be retried
            if value is None:  # the provider leaves it out
                continue
            pattern, size_fix = MEMORY.get(key, (None, ""))
            size = pattern.fullmatch(value) if pattern and isinstance(value, str) else None
            fine = (size is not None and int(size[1]) > 0 if pattern
                    else not isinstance(value, bool) and str(value).isdigit())
            if not fine:
                raise ConfigError(f"{argument} spark_resources.{key}", value, size_fix or "a whole number")
        self.data_interval_start, self.data_interval_end = data_interval_start, data_interval_end
        self._hooks: list = []

    def _submitter(self, run: RunContext) -> SparkSubmit:
        return hook_submitter(self.conn_id, self.spark_conf, f"{run.dag_id}.{run.task_id}", self._hooks,
                              self.spark_resources, killed=lambda: self._killed)

    def interval(self, context: Any) -> tuple[Any, Any]:
        """The data interval to process: the arguments when given, else the run's."""
        start = self.data_interval_start or context.get("data_interval_start")
        end = self.data_interval_end or context.get("data_interval_end")
        if start is None or end is None:
            raise ConfigError("data interval", None,
                              "this run has none: Airflow 3 gives no data interval to a run triggered without a "
                              "logical date. Trigger with --logical-date (the run then processes the last "
                              "complete interval before the trigger), or process chosen days with "
                              "`airflow backfill create --dag-id DAG --from-date DAY --to-date DAY`")
        if self.data_interval_start or self.data_interval_end:  # given as arguments: the user's choice
            return start, end
        if start == end:
            raise ConfigError("data interval", f"{start} .. {end}",
                              "this DAG's timetable gives runs an empty interval (Airflow 3 reads "
                              "schedule='@daily' as CronTriggerTimetable): build the DAG with "
                              "schedule=CronDataIntervalTimetable('@daily', timezone='UTC')")
        logical = context.get("logical_date")
        if logical is not None and not start <= logical < end + (end - start):
            # `airflow dags trigger --logical-date D` takes the interval from the trigger time, not
            # from D: the run would show D in the Grid while it processes another day, and a later
            # backfill of D would find a successful run there and skip it
            raise ConfigError("logical date", f"{logical} with data interval {start} .. {end}",
                              "this run's data interval does not belong to its logical date (`airflow dags "
                              "trigger --logical-date` takes the interval from the time of the trigger; the UI's "
                              "trigger form keeps a data interval chosen by hand apart from the logical date): "
                              "to process a chosen day use `airflow backfill create --dag-id DAG --from-date DAY "
                              "--to-date DAY`, or trigger from the UI or REST API with the data interval left to "
                              "Airflow (a logical date then gets its own interval), or with the logical date set "
                              "to the start of the interval you choose; to process the last complete day, "
                              "trigger with the current time as the logical date")
        if logical is not None and logical == end:
            # a UI/REST trigger or `airflow dags test DAG D` at midnight D: Airflow keeps one run
            # per logical date, and D is the scheduled run of [D, D+1)'s, so that day would never run
            dag_run = context.get("dag_run")
            dag_id, run_id = getattr(dag_run, "dag_id", "DAG"), getattr(dag_run, "run_id", "RUN_ID")
            raise ConfigError("logical date", f"{logical} with data interval {start} .. {end}",
                              f"this run's logical date is the first instant of the next day, which is that "
                              f"day's own run in Airflow (one run per logical date): while this run exists the "
                              f"scheduler never runs the day starting at {end}, a backfill of it skips it, and "
                              f"(depends_on_past) the runs after it wait on this one. Delete this run (the UI's "
                              f"Delete on the run, or DELETE /api/v2/dags/{dag_id}/dagRuns/{run_id}; in a scratch "
                              f"database `airflow dags delete {dag_id}`), then process [{start}, {end}) with "
                              f"`airflow backfill create --dag-id {dag_id} --from-date {start:%Y-%m-%d} --to-date "
                              f"{start:%Y-%m-%d}`, or with a logical date inside the next day, e.g. `airflow dags "
                              f"test {dag_id} {end:%Y-%m-%d}T06:00:00+00:00` or the current time; and backfill "
                              f"{end:%Y-%m-%d} itself once it is over if the scheduler passed it by")
        return start, end

    def stop_tools(self) -> None:
        kill_submissions(self._hooks)


class SparkFeatureOperator(SparkStageOperator):
    """Commit the feature partition of the run's data interval (section ``features`` of the
    pipeline YAML); skips if the same inputs, config and code were committed before."""

    pipeline_stage = "extract_features"

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from operators.kinds import kind_of

        kind = kind_of(pipeline)
        if kind.features is None:
            raise ConfigError(f"{pipeline['_source']}: kind", kind.name,
                              "this kind has no feature stage: its DAG starts at the dataset "
                              "(remove this task, or use a kind with features)")
        cfg = section(pipeline, "features", kind.sections()["features"])
        return kind.features(*self.interval(context), config=cfg,
                             run=run, submit=self._submitter(run))
