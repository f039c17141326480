"""Typed training configuration (validated before any process is started)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class TrainConfig(BaseModel):
    """Hyper-parameters of the ETA MLP regressor."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: list[PositiveInt] = Field([64, 64], min_length=1, description="hidden layer widths")
    epochs: int = Field(6, ge=1, le=1000, description="passes over the training split")
    batch_size: int = Field(256, ge=1, le=1 << 20, description="rows per step per process")
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="per-process rate (scaled by world size)")
    seed: int = Field(13, ge=0, description="seeds init and shuffling: same seed, same model")
    decode_in: Literal["threads", "processes"] = Field(
        "threads", description="where the training data is decoded: threads of the training process, or "
                               "worker processes that leave its GIL to the training loop (GPU hosts); same batches")


class DigitsTrainConfig(BaseModel):
    """Hyper-parameters of the digits CNN classifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    channels: list[PositiveInt] = Field([16, 32], min_length=1, description="3x3 convolution widths")
    hidden: list[PositiveInt] = Field([64], description="dense layer widths after the convolutions")
    epochs: int = Field(15, ge=1, le=1000, description="passes over the training split")
    batch_size: int = Field(64, ge=1, le=1 << 16, description="images per step per process")
    learning_rate: float = Field(2e-3, gt=0, le=1.0, description="per-process rate (scaled by world size)")
    seed: int = Field(7, ge=0, description="seeds init and shuffling: same seed, same model")


class ScaleConfig(BaseModel):
    """Where and how wide to run horovodrun."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_proc: int = Field(2, ge=1, le=4096, description="total processes (-np)")
    hosts: str = Field("localhost:2", pattern=r"^[A-Za-z0-9_.\-]+:\d+(,[A-Za-z0-9_.\-]+:\d+)*$",
                       description="horovodrun -H host:slots,...")
    controller: str = Field("gloo", pattern="^(gloo|mpi)$", description="gloo or mpi")
    network_interface: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$",
                                          description="NIC for collectives, e.g. eth0")
    start_timeout_s: int = Field(60, ge=1, description="horovodrun --start-timeout")
    run_timeout_s: int = Field(3600, ge=1, description="kill the whole job after this long")
    min_np: int | None = Field(None, ge=1, description="elastic: go on while at least this many processes live")
    max_np: int | None = Field(None, ge=1, description="elastic: grow up to this many processes")
    host_discovery_script: str | None = Field(
        None, description="elastic: executable printing the current `host:slots` lines")

    @property
    def elastic(self) -> bool:
        return self.min_np is not None

    @model_validator(mode="after")
    def _slots_and_elastic_consistent(self) -> "ScaleConfig":
        slots = [int(entry.rpartition(":")[2]) for entry in self.hosts.split(",")]
        if min(slots) < 1:
            raise ValueError(f"hosts={self.hosts!r}: every host needs at least 1 slot")
        if self.min_np is None and self.max_np is None and self.host_discovery_script is None:
            if self.num_proc > sum(slots):
                raise ValueError(f"num_proc={self.num_proc} is more than the {sum(slots)} slot(s) in "
                                 f"hosts={self.hosts!r}: add hosts or slots, or lower num_proc")
            return self
        if self.min_np is None or self.host_discovery_script is None:
            raise ValueError("elastic training needs both min_np and host_discovery_script "
                             f"(got min_np={self.min_np}, host_discovery_script={self.host_discovery_script!r})")
        top = self.max_np or self.num_proc
        if not self.min_np <= self.num_proc <= top:
            raise ValueError(f"need min_np <= num_proc <= max_np, got {self.min_np} <= {self.num_proc} <= {top}: "
                             f"set num_proc between them")
        if self.controller != "gloo":
            raise ValueError(f"controller={self.controller!r}: elastic Horovod runs on gloo only")
        return self

