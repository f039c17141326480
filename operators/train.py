"""HorovodTrainOperator: distributed training with horovodrun (Gloo on CPUs, NCCL on GPUs)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Sequence

from dlpipe import commit
from dlpipe.commit import StageResult
from dlpipe.errors import ConfigError, validation_message
from dlpipe.pipeline_config import section
from dlpipe.proc import kill_group
from dlpipe.runctx import RunContext
from operators.base import DlpipeOperator


# What a task needs beyond scale.run_timeout_s: reading the dataset's footers before launch, and
# ending the job (SIGTERM, then SIGKILL about 10 s later) with every rank's output in the log.
TEARDOWN_S = 60


def _argument(task_id: str, key: str) -> str:
    return f"HorovodTrainOperator(task_id={task_id!r}) argument {key}"


def _check_run_timeout(where: str, run_timeout_s: int, execution_timeout: timedelta | None) -> None:
    """The job's limit must leave TEARDOWN_S before Airflow's: checked when the DAG is parsed
    (both given as arguments) and when the task runs (the YAML's value)."""
    if execution_timeout is not None and run_timeout_s + TEARDOWN_S > execution_timeout.total_seconds():
        raise ConfigError(where, run_timeout_s,
                          f"must be at least {TEARDOWN_S} s shorter than execution_timeout ({execution_timeout}): "
                          f"Airflow would kill the training task first and retry it, instead of dlpipe ending "
                          f"the job with every rank's output; lower it or raise execution_timeout")


def _check_override(task_id: str, key: str, value: Any) -> None:
    """One scale argument checked by its own rule when the DAG is parsed (the rules that relate
    several fields, elastic ones, are checked with the YAML's values when the task runs)."""
    from pydantic import TypeAdapter, ValidationError

    from training.config import ScaleConfig

    info = ScaleConfig.model_fields[key]
    try:
        rule = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        TypeAdapter(rule).validate_python(value, strict=True)  # as the model checks the YAML
    except ValidationError as exc:
        raise ConfigError(_argument(task_id, key), value, validation_message(exc.errors()[0])[2]) from None


class HorovodTrainOperator(DlpipeOperator):
    """Train on a committed dataset with ``horovodrun`` and commit the model.

    The pipeline YAML's ``train`` and ``scale`` sections hold the defaults; any of the scale
    arguments given here override them. Rank output is streamed into the task log; a timeout
    or a task kill ends the whole process group (no orphaned ranks).

    :param dataset_id: manifest id of the dataset (templated)
    :param num_proc: total processes (``-np``)
    :param hosts: ``host:slots,...`` (``-H``)
    :param controller: ``gloo`` (dlpipe's Horovod is built without MPI)
    :param network_interface: NIC for Horovod's own traffic and NCCL's (horovodrun sets
        ``NCCL_SOCKET_IFNAME`` to it; an ``NCCL_SOCKET_IFNAME`` in ``env`` that differs is refused)
    :param env: extra environment variables for every rank, names and values as strings
        (``{'OMP_NUM_THREADS': '4'}``: anything else is refused when the DAG is parsed, not
        when the task runs); no credentials (horovodrun shows them on the ranks' command
        lines): a name that looks like one is refused
    :param start_timeout_s: horovodrun ``--start-timeout``
    :param run_timeout_s: wall-clock limit for the whole job
    :param min_np: elastic Horovod: keep training while at least this many processes live
    :param max_np: elastic Horovod: grow up to this many processes when hosts appear
    :param host_discovery_script: elastic Horovod: executable printing ``host:slots`` lines
    :param data_gate_id: the data gate's verdict on the dataset (templated; usually
        ``data_gate.output``): when given, training starts only on a committed 'passed' verdict
        about this dataset. A gate task marked success by hand renders it empty, and the compute
        is not spent on data the gate refused
    """

    pipeline_stage = "train"

    template_fields: Sequence[str] = ("pipeline_config", "dataset_id", "data_gate_id")
    ui_color = "#e3f5e1"

    def __init__(self, *, dataset_id: str, num_proc: int | None = None, hosts: str | None = None,
                 controller: str | None = None, network_interface: str | None = None,
                 env: dict[str, str] | None = None, start_timeout_s: int | None = None,
                 run_timeout_s: int | None = None, min_np: int | None = None, max_np: int | None = None,
                 host_discovery_script: str | None = None, data_gate_id: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_id, self.data_gate_id, self._gated = dataset_id, data_gate_id, data_gate_id is not None
        self.scale_overrides = {k: v for k, v in {
            "num_proc": num_proc, "hosts": hosts, "controller": controller,
            "network_interface": network_interface, "start_timeout_s": start_timeout_s,
            "run_timeout_s": run_timeout_s, "min_np": min_np, "max_np": max_np,
            "host_discovery_script": host_discovery_script}.items() if v is not None}
        for key, value in self.scale_overrides.items():
            _check_override(self.task_id, key, value)
        if run_timeout_s is not None:  # the YAML's value is checked when the task runs
            _check_run_timeout(_argument(self.task_id, "run_timeout_s"), run_timeout_s, self.execution_timeout)
        self.env = env or {}
        from training.launcher import check_rank_env

        try:  # a credential or a non-string in a rank's environment is refused when the DAG is parsed
            check_rank_env(self.env)
        except ConfigError as exc:
            raise ConfigError(_argument(self.task_id, "env"), exc.value, exc.fix) from None
        if network_interface is not None:  # else the YAML's, known when the task runs
            self._check_nccl_interface(network_interface)
        self._proc = None

    def _check_nccl_interface(self, network_interface: str | None) -> None:
        """An NCCL_SOCKET_IFNAME in ``env`` that horovodrun would override (see
        ``training.config.nccl_interface_problem``), named as this operator's argument."""
        from training.config import nccl_interface_problem

        if problem := nccl_interface_problem(self.env, network_interface, set_as="network_interface="):
            raise ConfigError(_argument(self.task_id, "env"), "NCCL_SOCKET_IFNAME", problem)

    def run_stage(self, context: Any, pipeline: dict, run: RunContext) -> StageResult:
        from operators.kinds import kind_of
        from training.launcher import horovod_launcher
        from training.stages import train_model

        kind = kind_of(pipeline)
        cfg = section(pipeline, "train", kind.sections()["train"])
        scale = self._scale(pipeline)
        self._check_nccl_interface(scale.network_interface)

        launch = horovod_launcher(scale, env=self.env, emit=lambda line: self.log.info("%s", line),
                                  on_start=self._started)
        dataset = commit.load_manifest(self.dataset_id, stage="datasets", field="dataset_id")
        if self._gated:
            self._check_data_gate(dataset)
        try:
            return train_model(dataset, config=cfg, scale=scale, run=run, launch=launch,
                               name=pipeline.get("model_name", "model"), entry=kind.train_entry,
                               rank_env=self.env)
        except ConfigError as exc:  # a scale field judged against the dataset: name where it was set
            key = exc.field.partition("scale.")[2]
            if not exc.field.startswith("scale.") or not key:
                raise
            renamed = ConfigError(self._where(pipeline, key), exc.value, exc.fix)
            renamed._dlpipe_audited = getattr(exc, "_dlpipe_audited", False)  # run_stage wrote its event
            raise renamed from exc

    def _check_data_gate(self, dataset: dict) -> None:
        """Refuse to train unless the data gate committed 'passed' on this very dataset."""
        from dlpipe.lineage import judged

        where = f"HorovodTrainOperator(task_id={self.task_id!r}) argument data_gate_id"
        if not self.data_gate_id:
            raise ConfigError(where, self.data_gate_id,
                              "rendered empty: the data gate task committed no verdict, yet this run went on (was "
                              "it marked success by hand?). Training on data the gate did not pass is refused: "
                              "clear the data gate task, or see docs/operations.md, When a gate fails")
        gate = commit.load_manifest(self.data_gate_id, stage="gates", field="data_gate_id")
        if gate["summary"].get("verdict") != "passed" or judged(gate) != dataset["id"]:
            raise ConfigError(where, self.data_gate_id,
                              f"its verdict is {gate['summary'].get('verdict')!r} on {judged(gate)}, not 'passed' on "
                              f"{dataset['id']}: pass this run's data gate (clear it with the dataset task)")

    def _scale(self, pipeline: dict) -> Any:
        """The YAML's scale section with this operator's arguments over it, checked as a whole.
        An error is blamed on the operator where its arguments made it: the argument named, or,
        for a rule between fields (slots and num_proc, the elastic bounds), every argument given
        when the YAML's own section passes."""
        from training.config import ScaleConfig

        try:
            scale = section({**pipeline, "scale": {**(pipeline.get("scale") or {}), **self.scale_overrides}},
                            "scale", ScaleConfig)
        except ConfigError as exc:
            key = exc.field.rpartition("scale.")[2].split(".")[0]
            if key in self.scale_overrides:
                raise ConfigError(_argument(self.task_id, key), exc.value, exc.fix) from exc
            if self.scale_overrides:
                try:
                    section(pipeline, "scale", ScaleConfig)
                except ConfigError:
                    raise exc from None  # the YAML is wrong on its own
                given = ", ".join(f"{k}={v!r}" for k, v in sorted(self.scale_overrides.items()))
                raise ConfigError(f"HorovodTrainOperator(task_id={self.task_id!r}) arguments {given} over "
                                  f"{pipeline.get('_source', '?')}'s scale section: scale.{key}", exc.value,
                                  exc.fix) from exc
            raise
        _check_run_timeout(self._where(pipeline, "run_timeout_s"), scale.run_timeout_s, self.execution_timeout)
        return scale

    def _where(self, pipeline: dict, key: str) -> str:
        """Where scale field ``key`` was set: this operator's argument, else the YAML's field."""
        if key in self.scale_overrides:
            return _argument(self.task_id, key)
        return f"{pipeline.get('_source', '?')}: scale.{key}"

    def _started(self, proc) -> None:
        self._proc = proc
        if self._killed:  # Airflow's SIGTERM handler returns, and the task went on to start it
            kill_group(proc)

    def stop_tools(self) -> None:
        if self._proc is not None:
            kill_group(self._proc)
