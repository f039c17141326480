"""Training under failure with real horovodrun (RELIABILITY.md rows 6 to 8): a killed rank, a
frozen rank and a torn checkpoint; the retry resumes from the newest checkpoint that verifies."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from dlpipe import audit, commit
from dlpipe.errors import ConfigError, SubprocessFailed
from dlpipe.runctx import RunContext
from dlpipe.spark_submit import local_spark_submit
from feature_jobs.dataset_stage import DatasetConfig, materialize_dataset
from feature_jobs.feature_stage import FeatureJobConfig, extract_features
from training.config import ScaleConfig, TrainConfig
from training.launcher import horovod_launcher
from training.stages import train_model
from tests.conftest import write_small_raw

pytestmark = pytest.mark.integration
CFG = TrainConfig(epochs=30, batch_size=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """Raw trips, features and the dataset, built once with real Spark for this module."""
    home = tmp_path_factory.mktemp("built") / "dlpipe_home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLPIPE_HOME", str(home))
        write_small_raw()
        submit = local_spark_submit()
        extract_features("2026-01-03", "2026-01-04", config=FeatureJobConfig(lookback_days=2), run=RunContext(),
                         submit=submit)
        manifest = materialize_dataset("2026-01-03", "2026-01-04", config=DatasetConfig(window_days=1, num_files=2),
                                       features=FeatureJobConfig(lookback_days=2),
                                       run=RunContext(), submit=submit).manifest
    return home, manifest


@pytest.fixture
def dataset(built, dlpipe_home) -> dict:
    """Each test trains in a copy of the built home (locations in manifests are relative to
    it), so checkpoints, attempts and audit events never leak from one test to the next."""
    shutil.copytree(built[0], dlpipe_home, dirs_exist_ok=True)
    return built[1]


def _ckpt_dir(dataset: dict) -> Path:
    root = commit.StageKey("training", "eta", dataset["partition"]).dir() / "checkpoints"
    dirs = list(root.glob("*")) if root.exists() else []
    return dirs[0] if dirs else root / "missing"


def _when_epoch(dataset: dict, epoch: int, action, deadline_s: float = 300) -> threading.Thread:
    """Run ``action(pid of rank 1)`` once checkpoint ``epoch`` is sealed; returns the thread."""
    def watch() -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            d = _ckpt_dir(dataset)
            if (d / f"epoch-{epoch:04d}.sha256").exists() and (d / "rank-1.pid").exists():
                action(int((d / "rank-1.pid").read_text()))
                watch.fired_at = time.monotonic()
                return
            time.sleep(0.02)

    watch.fired_at = None
    t = threading.Thread(target=watch, daemon=True)
    t.watch = watch
    t.start()
    return t


def _train(dataset, lines, scale=ScaleConfig(num_proc=2, hosts="localhost:2", run_timeout_s=300), config=CFG):
    return train_model(dataset, config=config, scale=scale, run=RunContext(), launch=horovod_launcher(scale, emit=lines.append))


def _weights(result) -> dict:
    from safetensors.torch import load_file

    (path,) = commit.files(result.manifest, "model.safetensors")
    return load_file(str(path))


def test_killed_rank_fails_fast_and_the_retry_resumes_past_a_torn_checkpoint(dataset, built, tmp_path, monkeypatch):
    lines: list[str] = []
    killer = _when_epoch(dataset, 2, lambda pid: os.kill(pid, signal.SIGKILL))
    with pytest.raises(SubprocessFailed, match="horovodrun exited with code") as failure:
        _train(dataset, lines)
    failed_at = time.monotonic()
    # the error carries each rank's own last lines, not just the end of the merged stream
    message = str(failure.value)
    assert "output of each rank:" in message
    assert message.index("rank 1 was ended by signal 9 (exit code 137)") < message.index("output of each rank:")
    assert "rank 0" in message and "rank 1, last" in message
    rank1 = message.split("rank 1, last")[1].split("horovodrun, last")[0]
    assert "[train rank 1] shard:" in rank1 and "Killed" in rank1  # the dead rank's own last words
    assert "Exit code: 137" in message.split("horovodrun, last")[1]
    killer.join(5)
    assert killer.watch.fired_at is not None, "training finished before a rank could be killed"
    print(f"[measure] killed rank -> task failed in {failed_at - killer.watch.fired_at:.1f}s")
    assert failed_at - killer.watch.fired_at < 60, "the job hung after losing a rank"
    assert [e["event"] for e in audit.read() if e["stage"] == "training"] == ["started", "failed"]

    ckpts = _ckpt_dir(dataset)
    valid = max(int(p.stem.split("-")[1]) for p in ckpts.glob("epoch-*.sha256"))
    assert 2 <= valid < CFG.epochs
    # a torn newer checkpoint (killed mid-write: sealed by nobody) and a tampered one
    (ckpts / f"epoch-{valid + 1:04d}.pt").write_bytes(b"\x80\x02half a checkpoint")
    (ckpts / f"epoch-{valid + 2:04d}.pt").write_bytes((ckpts / f"epoch-{valid:04d}.pt").read_bytes()[:-7] + b"garbage")
    (ckpts / f"epoch-{valid + 2:04d}.sha256").write_text((ckpts / f"epoch-{valid:04d}.sha256").read_text())

    lines.clear()
    retry = _train(dataset, lines)
    m = retry.manifest["summary"]["metrics"]
    assert m["resumed_from_epoch"] == valid and m["epochs"] == CFG.epochs
    assert m["world_sizes"] == [{"epochs": f"1-{CFG.epochs}", "world_size": 2}]  # both attempts at 2
    text = "\n".join(lines)
    assert f"ignoring epoch-{valid + 2:04d}.pt: hash mismatch" in text
    assert f"ignoring epoch-{valid + 1:04d}.pt: no seal" in text
    assert f"resuming from epoch-{valid:04d}.pt" in text
    assert m["val_mae"] < 0.8 * m["baseline_mae"]

    # The resumed run continues as the run would have: the same model as one never interrupted,
    # which needs the optimizer's state (Adam's moments and step count) and the world's rate back.
    resumed = _weights(retry)  # read before the home changes: locations are relative to it
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "uninterrupted"))
    shutil.copytree(built[0], tmp_path / "uninterrupted")
    whole = _train(dataset, [])
    assert whole.manifest["summary"]["metrics"]["resumed_from_epoch"] == 0
    straight = _weights(whole)
    worst = max(float((resumed[k] - straight[k]).abs().max()) for k in straight)
    print(f"[measure] resumed against uninterrupted: largest weight difference {worst:.2e}")
    assert worst < 1e-5, f"the resumed model differs from the uninterrupted one by up to {worst:.3g}"


def test_frozen_rank_ends_within_a_bound_and_the_next_attempt_resumes(dataset, monkeypatch):
    """The Gloo timeout ends it: set apart from the stall inspector's times (and the run
    timeout), the job must end near it."""
    monkeypatch.setenv("HOROVOD_GLOO_TIMEOUT_SECONDS", "15")
    monkeypatch.setenv("HOROVOD_STALL_CHECK_TIME_SECONDS", "60")
    monkeypatch.setenv("HOROVOD_STALL_SHUTDOWN_TIME_SECONDS", "120")
    stopped: list[int] = []

    def freeze(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    lines: list[str] = []
    freezer = _when_epoch(dataset, 2, freeze)
    scale = ScaleConfig(num_proc=2, hosts="localhost:2", run_timeout_s=150)
    t0 = time.monotonic()
    try:
        with pytest.raises(SubprocessFailed):
            _train(dataset, lines, scale)
    finally:
        for pid in stopped:  # never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert freezer.watch.fired_at is not None, "training finished before a rank could be frozen"
    print(f"[measure] frozen rank -> task ended in {time.monotonic() - freezer.watch.fired_at:.1f}s")
    assert time.monotonic() - freezer.watch.fired_at < 50  # the Gloo timeout, not stall (120) or run (150)
    assert time.monotonic() - t0 < 200

    lines.clear()
    retry = _train(dataset, lines)
    assert retry.manifest["summary"]["metrics"]["resumed_from_epoch"] >= 2


def test_two_hosts_one_slot_each(dataset):
    """Several hosts the way Horovod's own tests fake a cluster: -H localhost:1,127.0.0.1:1."""
    lines: list[str] = []
    scale = ScaleConfig(num_proc=2, hosts="localhost:1,127.0.0.1:1", run_timeout_s=300,
                        env={"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "WARN"})
    result = train_model(dataset, config=TrainConfig(epochs=3), scale=scale, run=RunContext(),
                         launch=horovod_launcher(scale, env={"NCCL_DEBUG": "INFO"}, emit=lines.append),
                         rank_env={"NCCL_DEBUG": "INFO"})
    assert result.manifest["summary"]["metrics"]["world_size"] == 2
    assert result.manifest["summary"]["hosts"] == "localhost:1,127.0.0.1:1"
    # what the ranks were given is recorded, the operator's value over the spec's
    assert result.manifest["summary"]["rank_env"] == {"OMP_NUM_THREADS": "1", "NCCL_DEBUG": "INFO"}
    assert any(line.startswith("[1]") for line in lines) and any(line.startswith("[0]") for line in lines)


@pytest.mark.parametrize("decode_in", ["threads", "processes"])
def test_elastic_job_loses_a_rank_and_finishes_with_the_survivor(dataset, tmp_path, decode_in):
    """Elastic Horovod (--min-np 1): a rank is killed at epoch 2, its host is dropped, and the
    survivor rolls back to the last committed epoch, takes over every shard and completes. With
    decoding processes, the survivor's new bind stops the interrupted loader's processes first."""
    discover = tmp_path / "discover_hosts.sh"
    discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    tmp_path.chmod(0o755)  # a folder only its owner writes: the launcher trusts nothing else (any umask)
    scale = ScaleConfig(num_proc=2, min_np=1, max_np=2, host_discovery_script=str(discover), run_timeout_s=300)
    lines: list[str] = []
    config = TrainConfig(epochs=10, batch_size=16, decode_in=decode_in)
    killer = _when_epoch(dataset, 2, lambda pid: os.kill(pid, signal.SIGKILL))
    result = _train(dataset, lines, scale, config)
    killer.join(5)
    assert killer.watch.fired_at is not None, "training finished before a rank could be killed"
    m = result.manifest["summary"]["metrics"]
    assert m["elastic_resets"] >= 1 and m["world_size"] == 1 and m["epochs"] == config.epochs, m
    assert m["train_rows"] == dataset["summary"]["rows"]["train"]  # the survivor read every shard
    # the epochs trained by two ranks, then by the survivor, every epoch accounted for
    sizes = m["world_sizes"]
    assert sizes[0]["world_size"] == 2 and sizes[0]["epochs"].startswith("1-") and sizes[-1]["world_size"] == 1
    assert sizes[-1]["epochs"].endswith(str(config.epochs)) and len(sizes) == 2, sizes
    assert "membership changed: world size is now 1" in "\n".join(lines)
    summary = result.manifest["summary"]  # -H is never given to an elastic job: its discovery is recorded
    assert (summary["hosts"], summary["host_discovery_script"], summary["min_np"], summary["max_np"]) == \
        (None, str(discover), 1, 2)
    assert not _ckpt_dir(dataset).exists()  # committed: its checkpoints are removed
    assert m["val_mae"] < 0.8 * m["baseline_mae"]


def test_elastic_settings_are_checked_before_anything_starts():
    with pytest.raises(ValueError, match="needs both min_np and host_discovery_script"):
        ScaleConfig(num_proc=2, min_np=1)
    with pytest.raises(ValueError, match="need min_np <= num_proc <= max_np"):
        ScaleConfig(num_proc=4, min_np=1, max_np=2, host_discovery_script="/bin/true")


def _discovery(tmp_path: Path) -> Path:
    """Two one-slot hosts on this machine, as elastic Horovod's host discovery sees them."""
    discover = tmp_path / "discover_hosts.sh"
    discover.write_text("#!/bin/sh\necho localhost:1\necho 127.0.0.1:1\n")
    discover.chmod(0o755)
    tmp_path.chmod(0o755)  # a folder only its owner writes: the launcher trusts nothing else (any umask)
    return discover


def test_an_elastic_job_that_loses_no_rank_trains_the_static_jobs_model(dataset, built, tmp_path, monkeypatch):
    """Static and elastic runs of one config share a fingerprint and checkpoints, so they must
    train the same model (Horovod's elastic sync used to give a fresh Adam an extra step)."""
    config = TrainConfig(epochs=4, batch_size=16)
    static = _train(dataset, [], ScaleConfig(num_proc=2, hosts="localhost:1,127.0.0.1:1", run_timeout_s=300), config)
    static_weights = _weights(static)
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "elastic"))
    shutil.copytree(built[0], tmp_path / "elastic")
    scale = ScaleConfig(num_proc=2, min_np=1, max_np=2, host_discovery_script=str(_discovery(tmp_path)),
                        run_timeout_s=300)
    elastic = _train(dataset, [], scale, config)
    assert elastic.manifest["summary"]["metrics"]["elastic_resets"] == 0
    elastic_weights = _weights(elastic)
    worst = max(float((static_weights[k] - elastic_weights[k]).abs().max()) for k in static_weights)
    print(f"[measure] elastic against static: largest weight difference {worst:.2e}")
    assert worst == 0.0, f"the elastic model differs from the static one by up to {worst:.3g}"


def test_an_elastic_job_that_loses_rank_0_after_resuming_keeps_the_checkpoints_state(dataset, tmp_path,
                                                                                   monkeypatch):
    """Rank 0 alone reads the checkpoint; the survivors must roll back to the state it
    broadcast, not to their own initial weights and an empty optimizer."""
    import torch

    from training import checkpoint

    monkeypatch.setenv(checkpoint.KEEP_ALL_VAR, "1")  # every epoch's optimizer state is read afterwards

    killer = _when_epoch(dataset, 2, lambda pid: os.kill(pid, signal.SIGKILL))
    config = TrainConfig(epochs=6, batch_size=2)  # epochs of a few seconds: time to kill rank 0 inside one
    with pytest.raises(SubprocessFailed):
        _train(dataset, [], ScaleConfig(num_proc=2, hosts="localhost:2", run_timeout_s=300), config)
    killer.join(5)
    ckpts = _ckpt_dir(dataset)
    resumed = max(int(p.stem.split("-")[1]) for p in ckpts.glob("epoch-*.sha256"))
    assert resumed + 2 <= config.epochs

    killed_at: list[float] = []

    def kill_rank_0_once_resumed(line: str) -> None:
        lines.append(line)
        if "resuming from" in line and not killed_at:
            def later() -> None:  # after the first sync, inside the first resumed epoch
                time.sleep(1.0)
                killed_at.append(time.time())  # wall clock: compared with a file's mtime
                os.kill(int((ckpts / "rank-0.pid").read_text()), signal.SIGKILL)
            threading.Thread(target=later, daemon=True).start()

    lines: list[str] = []
    scale = ScaleConfig(num_proc=2, min_np=1, max_np=2, host_discovery_script=str(_discovery(tmp_path)),
                        run_timeout_s=300)
    result = train_model(dataset, config=config, scale=scale, run=RunContext(),
                         launch=horovod_launcher(scale, emit=kill_rank_0_once_resumed))
    m = result.manifest["summary"]["metrics"]
    assert killed_at and m["elastic_resets"] >= 1 and m["world_size"] == 1, m
    assert (ckpts / f"epoch-{resumed + 1:04d}.sha256").stat().st_mtime > killed_at[0], \
        "the first resumed epoch ended before rank 0 was killed: the test did not test anything"
    steps = lambda epoch: max(int(s["step"]) for s in torch.load(ckpts / f"epoch-{epoch:04d}.pt", weights_only=True)["optimizer"]["state"].values())  # noqa: E731
    # Adam's step count goes on from the checkpoint's: the survivor's first epoch adds as many
    # steps as its next one (a fresh optimizer would have started again from 0 or 1)
    per_epoch = steps(resumed + 2) - steps(resumed + 1)
    assert steps(resumed + 1) == steps(resumed) + per_epoch, [steps(e) for e in range(resumed, resumed + 3)]
    assert m["val_mae"] < 0.8 * m["baseline_mae"]


def test_more_ranks_than_row_groups_is_refused_before_any_rank_starts(dataset):
    """A rank reads whole row groups: a split of one file (one row group here) leaves rank 1
    of 2 without rows. That is a configuration error, found from the footers before horovodrun
    starts (it used to stop the started job, which read as a crash and was retried)."""
    one_file = materialize_dataset("2026-01-03", "2026-01-04", config=DatasetConfig(window_days=1, num_files=1),
                                   features=FeatureJobConfig(lookback_days=2),
                                   run=RunContext(), submit=local_spark_submit()).manifest
    lines: list[str] = []
    with pytest.raises(ConfigError) as refused:
        _train(one_file, lines, config=TrainConfig(epochs=1, batch_size=16))
    assert refused.value.field == "scale.num_proc" and refused.value.value == 2
    assert "ranks [1] would get no training rows" in refused.value.fix
    assert "run at most 1 processes, or write more files (dataset num_files)" in refused.value.fix
    assert lines == [], "horovodrun was started"


def test_a_training_module_that_never_trains_is_a_config_error_not_a_retried_crash(dataset, tmp_path, monkeypatch):
    """A team's entry module without its `if __name__ == "__main__"` call: horovodrun exits 0
    with no model. It was a RuntimeError pointing at rank output that did not exist, retried."""
    from training import stages

    package = tmp_path / "noguard_team"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text("from training.horovod_loop import main\n")  # main never called
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(stages.ENTRY_SOURCES, "noguard_team.train", [])
    scale = ScaleConfig(num_proc=1, hosts="localhost:1", run_timeout_s=120)
    launch = horovod_launcher(scale, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    with pytest.raises(ConfigError, match=r"train_entry='noguard_team.train': horovodrun exited 0, but no rank "
                                          r"wrote .*metrics.json: does the module end with"):
        train_model(dataset, config=CFG, scale=scale, run=RunContext(), launch=launch, entry="noguard_team.train")
