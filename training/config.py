"""Typed training configuration (validated before any process is started)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, model_validator

from dlpipe.errors import ConfigError, FieldValueError
from dlpipe.pipeline_config import YamlFloat
from dlpipe.proc import secret_env

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def _check_hosts(value: str) -> str:
    """``host:slots,...`` with distinct hosts: horovodrun counts a repeated host's slots twice
    and gives its ranks inconsistent local and cross ranks."""
    seen = set()
    for entry in value.split(","):
        host, colon, slots = entry.partition(":")
        if not (colon and _HOST.fullmatch(host) and slots.isdigit()):
            raise ValueError(f"{entry!r} is not host:slots; write hosts as host:slots,host:slots "
                             f"(e.g. node1:4,node2:4; no spaces, a host starts with a letter or digit)")
        if host in seen:
            raise ValueError(f"host {host!r} is listed twice; give each host once with all its slots")
        seen.add(host)
    return value


def _check_interface(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,14}", value):
        raise ValueError("name a network interface as `ip link` shows it (e.g. eth0, ens5): up to 15 "
                         "letters, digits, '.', '_' or '-', not starting with '-'")
    return value


# An absolute path and nothing else: horovodrun runs the discovery script through a shell, so
# arguments, spaces or ';' would make a spec (data, reviewed as configuration) run a command line.
SCRIPT_PATH = re.compile(r"/[A-Za-z0-9_./+-]+")


def _check_script(value: str | None) -> str | None:
    if value is not None and not SCRIPT_PATH.fullmatch(value):
        raise ValueError("give the absolute path of an executable that prints the current host:slots lines "
                         "(letters, digits, '_', '.', '-', '+', '/'; no arguments: horovodrun runs it in a shell)")
    return value


# torch.manual_seed takes an unsigned 64-bit seed; a larger one failed on every rank, after start.
MAX_SEED = 2 ** 64 - 1


class TrainConfig(BaseModel):
    """Hyper-parameters of the ETA MLP regressor."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no epoch count
    hidden: list[PositiveInt] = Field([64, 64], min_length=1, description="hidden layer widths")
    epochs: int = Field(6, ge=1, le=1000, description="passes over the training split")
    batch_size: int = Field(256, ge=1, le=1 << 20, description="rows per step per process")
    learning_rate: YamlFloat = Field(2e-3, gt=0, le=1.0, description="per-process rate (scaled by world size)")
    seed: int = Field(13, ge=0, le=MAX_SEED, description="seeds init and shuffling: same seed, same model")
    decode_in: Literal["threads", "processes"] = Field(
        "threads", description="where the training data is decoded: threads of the training process, or "
                               "worker processes that leave its GIL to the training loop (GPU hosts); same batches")


class DigitsTrainConfig(BaseModel):
    """Hyper-parameters of the digits CNN classifier."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no epoch count
    channels: list[PositiveInt] = Field([16, 32], min_length=1, description="3x3 convolution widths")
    hidden: list[PositiveInt] = Field([64], description="dense layer widths after the convolutions")
    epochs: int = Field(15, ge=1, le=1000, description="passes over the training split")
    batch_size: int = Field(64, ge=1, le=1 << 16, description="images per step per process")
    learning_rate: YamlFloat = Field(2e-3, gt=0, le=1.0, description="per-process rate (scaled by world size)")
    seed: int = Field(7, ge=0, le=MAX_SEED, description="seeds init and shuffling: same seed, same model")


# Credentials the ranks never need. horovodrun copies its whole environment onto the command
# line of every remote rank (visible to `ps` on that host), so they are not passed on at all:
# Airflow's connections, variables and whole configuration (its database URL holds a password),
# anything named like a credential, and any value that is a URL with a user and password in it
# (``dlpipe.proc.secret_env``, the rules Spark's environments get too).
_secret = secret_env


EXAMPLE = "e.g. {'OMP_NUM_THREADS': '4'}"
# What a shell takes as a variable name. horovodrun writes each rank's environment into a shell
# command as NAME=quoted-value: the value is quoted, the name is not, so any other character in
# a name ("A;touch /tmp/x;B") would run as a command.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _unusable(name: object, value: object) -> tuple[object, str] | None:
    """(what to show of the name, the fix) when Popen would refuse the variable at task run, a
    bare TypeError or ValueError that Airflow retries; None when it is fine. Only the name is
    shown, and only the part of it that cannot be a pasted value: a number, the text before '='."""
    if not isinstance(name, str):
        shown = name if isinstance(name, (int, float)) or name is None else f"<a {type(name).__name__}>"
        return shown, f"the name is of type {type(name).__name__}; give names as strings, {EXAMPLE}"
    if not name:
        return name, "a variable needs a name"
    if "=" in name:
        return name.partition("=")[0] + "=...", "a name cannot contain '=' (it ends the name); give {'NAME': 'value'}"
    if not ENV_NAME.fullmatch(name):
        return name[:40], ("a variable name is letters, digits and '_', not starting with a digit: horovodrun "
                           "passes it to a shell unquoted")
    if not isinstance(value, str):
        return name, f"its value is of type {type(value).__name__}; give values as strings, {EXAMPLE}"
    if "\0" in value:
        return name, "a value cannot contain a NUL character"
    return None


def check_rank_env(extra: dict[str, str]) -> None:
    """Refuse extra rank variables that Popen cannot pass (a name or value that is not a string,
    an empty name, a name with '='), and ones that look like credentials (by name, or a URL with
    a password): horovodrun would show them on every rank's command line."""
    if not isinstance(extra, dict):
        raise ConfigError("env", type(extra).__name__, f"give a mapping of names to strings, {EXAMPLE}")
    for name, value in extra.items():
        unusable = _unusable(name, value)
        if unusable is not None:
            raise ConfigError("env", *unusable)
        if _secret(name, value):
            raise ConfigError("env", name, "horovodrun puts every rank's environment on a command line "
                                           "that any user of the host can read (ps); give ranks credentials "
                                           "through a file only they can read (AWS_SHARED_CREDENTIALS_FILE, "
                                           "GOOGLE_APPLICATION_CREDENTIALS) or an instance role, not a variable")


# Variables that decide which code or libraries a process loads: the dynamic loader's, Python's
# (PYTHONPATH: a sitecustomize.py; PYTHONWARNINGS imports the modules it names), the shells'
# start-up files, OpenSSL's engines, Open MPI's launch agent, any plugin, preload, module path
# or directory, and files a rank would write (a timeline, a debug log). A spec is configuration,
# reviewed as data: with these it could run code in horovodrun on the Airflow worker and in
# every rank, under a model whose code hash looks clean.
CODE_LOADING_ENV = re.compile(r"^(LD_|DYLD_|PYTHON|BASH|OMPI_|PMIX_|DLPIPE_)|^(PATH|ENV|SHELLOPTS|IFS|PS4"
                              r"|PROMPT_COMMAND|GCONV_PATH|OPENSSL_CONF|OPENSSL_ENGINES|NODE_OPTIONS"
                              r"|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|PERL5LIB|PERL5OPT|RUBYOPT)$"
                              r"|PLUGIN|PRELOAD|_PATH$|_DIR$|_DIRS$|MODULE|TIMELINE|_DEBUG_FILE$", re.IGNORECASE)


def _check_env(value: object) -> object:
    """The ranks' extra variables under the same rules as HorovodTrainOperator's ``env``: shell
    names, string values, no credentials (horovodrun shows them on a command line); and, since
    a spec is configuration, only tuning variables: none of CODE_LOADING_ENV."""
    try:
        check_rank_env(value)
    except ConfigError as exc:  # exc.value: the part of the name that is safe to show, never a value
        raise FieldValueError("", exc.value, exc.fix) from None
    for name in value:  # a mapping of strings: checked above
        if CODE_LOADING_ENV.search(name):
            raise FieldValueError("", name, "a spec's scale.env holds tuning variables (OMP_NUM_THREADS, NCCL_*, "
                                            "HOROVOD_*), not ones that decide which code or libraries horovodrun "
                                            "and the ranks load; set this one in the workers' environment, or "
                                            "in the DAG file's HorovodTrainOperator(env=...), which is reviewed "
                                            "as code")
    return value


def nccl_interface_problem(env: dict[str, str], network_interface: str | None,
                           set_as: str = "network_interface: ") -> str | None:
    """Why ``NCCL_SOCKET_IFNAME`` among the ranks' variables would be ignored, if it would.
    horovodrun's gloo launcher writes ``NCCL_SOCKET_IFNAME=<its interfaces>`` after the
    variables it passes on, on every rank's command line, so the later value wins: the
    interfaces are ``network_interface``, or every interface the hosts share when it is unset.
    ``set_as`` spells the setting as the user writes it (YAML field or operator argument)."""
    value = env.get("NCCL_SOCKET_IFNAME") if isinstance(env, dict) else None
    if value is None or value == network_interface:
        return None
    return (f"horovodrun sets NCCL_SOCKET_IFNAME={network_interface or '<every interface the hosts share>'} "
            f"on every rank after this variable, so {value!r} would be ignored: set "
            f"{set_as}{value} (it carries Gloo and NCCL both) and drop NCCL_SOCKET_IFNAME")


def _check_controller(value: str) -> str:
    """gloo only: dlpipe's Horovod (scripts/build_horovod.sh, the docker images) is built
    without MPI, and the launcher reads gloo's per-rank output prefixes."""
    if value != "gloo":
        raise FieldValueError("", value, "dlpipe runs Horovod's gloo controller only (its Horovod is built "
                                         "without MPI, and gloo runs on CPUs and with NCCL on GPUs alike): "
                                         "use controller: gloo")
    return value


class ScaleConfig(BaseModel):
    """Where and how wide to run horovodrun."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # strict: YAML `yes` is no epoch count
    num_proc: int = Field(2, ge=1, le=4096, description="total processes (-np)")
    hosts: Annotated[str, AfterValidator(_check_hosts)] = Field(
        "localhost:2", description="horovodrun -H host:slots,...")
    controller: Annotated[str, AfterValidator(_check_controller)] = Field(
        "gloo", description="gloo (dlpipe builds Horovod without MPI)")
    network_interface: Annotated[str | None, AfterValidator(_check_interface)] = Field(
        None, description="NIC for collectives, e.g. eth0")
    start_timeout_s: int = Field(60, ge=1, description="horovodrun --start-timeout")
    run_timeout_s: int = Field(3600, ge=1, description="kill the whole job after this long")
    min_np: int | None = Field(None, ge=1, description="elastic: go on while at least this many processes live")
    max_np: int | None = Field(None, ge=1, description="elastic: grow up to this many processes")
    host_discovery_script: Annotated[str | None, AfterValidator(_check_script)] = Field(
        None, description="elastic: executable printing the current `host:slots` lines")
    # checked before pydantic's own type checks, whose errors would show a value (a number under
    # MY_PASS); the rules refuse non-string values themselves, naming only the variable
    env: Annotated[dict[str, str], BeforeValidator(_check_env)] = Field(
        default_factory=dict, description="extra variables for every rank, e.g. NCCL_DEBUG "
                                          "(the operator's env= adds to them and wins)")

    @property
    def elastic(self) -> bool:
        return self.min_np is not None

    @model_validator(mode="after")
    def _nccl_interface_is_network_interface(self) -> "ScaleConfig":
        if problem := nccl_interface_problem(self.env, self.network_interface):
            raise FieldValueError("env", "NCCL_SOCKET_IFNAME", problem)
        return self

    @model_validator(mode="after")
    def _slots_and_elastic_consistent(self) -> "ScaleConfig":
        slots = [int(entry.rpartition(":")[2]) for entry in self.hosts.split(",")]
        if min(slots) < 1:
            raise FieldValueError("hosts", self.hosts, "every host needs at least 1 slot")
        if self.min_np is None and self.max_np is None and self.host_discovery_script is None:
            if self.num_proc > sum(slots):
                raise FieldValueError("num_proc", self.num_proc, f"more than the {sum(slots)} slot(s) in "
                                      f"hosts={self.hosts!r}: add hosts or slots, or lower num_proc")
            return self
        if self.min_np is None or self.host_discovery_script is None:
            missing = "min_np" if self.min_np is None else "host_discovery_script"
            raise FieldValueError(missing, None, "elastic training needs both min_np and "
                                  "host_discovery_script (max_np alone does not make a run elastic)")
        if self.max_np is not None and self.max_np < self.min_np:  # before num_proc, which no value fits
            raise FieldValueError("max_np", self.max_np, f"below min_np={self.min_np}: set max_np >= min_np "
                                  f"(the most processes the job grows to, at least the fewest it goes on with)")
        top = self.max_np or self.num_proc
        if not self.min_np <= self.num_proc <= top:
            raise FieldValueError("num_proc", self.num_proc, f"need min_np <= num_proc <= max_np, got "
                                  f"{self.min_np} <= {self.num_proc} <= {top}: set num_proc between them")
        return self
