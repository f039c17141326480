"""Edges of the training side: elastic rebinding, failed decodes, empty ranks and the settings
that used to pass the checks and fail later, on every rank or at task run."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dlpipe.errors import ConfigError
from dlpipe.pipeline_config import section
from training.config import DigitsTrainConfig, ScaleConfig, TrainConfig, check_rank_env
from training.loader import ShardLoader


def write_split(root: Path, tables: list[pa.Table], row_group_size: int) -> str:
    root.mkdir(parents=True)
    for k, table in enumerate(tables):
        pq.write_table(table, root / f"part-{k:05d}.parquet", row_group_size=row_group_size)
    return f"file://{root}"


def rows(n: int) -> pa.Table:
    i = np.arange(n, dtype=np.float32)
    return pa.table({"a": i, "label": i + 0.5})


def drain(loader: ShardLoader, epoch: int) -> int:
    """Rows delivered; batches are dropped at once, as a training step does."""
    return sum(len(y) for _, y in loader.epoch(epoch))


def assert_every_slot_is_back(loader: ShardLoader) -> None:
    """Each slot made is back in the ring (reusable once nothing views it): none is lost."""
    ring = loader._ring
    assert len(ring._retired) == ring.size, f"{ring.size} slots made, {len(ring._retired)} back in the ring"


# -- elastic rebinding --------------------------------------------------------------------------

@pytest.fixture
def torch_globals():
    """A Trainer seeds torch and sets its thread count for the whole process: put them back for
    the tests that run after this one in the same process."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


@pytest.fixture
def horovod(torch_globals):
    """Real Horovod, a world of one process (no horovodrun needed)."""
    import horovod.torch as hvd

    hvd.init()
    yield hvd
    hvd.shutdown()


def eta_spec(tmp_path: Path) -> dict:
    train = write_split(tmp_path / "train", [rows(4000)], 100)
    validation = write_split(tmp_path / "validation", [rows(400)], 100)
    (tmp_path / "ckpt").mkdir()
    return {"train": {"decode_in": "processes", "batch_size": 64, "epochs": 1}, "checkpoint_dir": str(tmp_path / "ckpt"),
            "train_url": train, "validation_url": validation, "features": ["a"], "label": "label",
            "stats": {"a": {"mean": 0, "std": 1}, "label": {"mean": 0, "std": 1}},
            "expected_rows": {"train": 4000, "validation": 400}}


def test_rebinding_after_a_membership_change_stops_the_previous_loaders_decoders(horovod, tmp_path):
    """train_elastic's reset callback binds again after every membership change; each bind used
    to leave the previous world's decoding processes (and their shared memory) running."""
    from training.train_eta import EtaTrainer

    trainer = EtaTrainer(eta_spec(tmp_path), horovod)
    loaders, procs = [], []
    for _ in range(3):
        trainer.bind()
        with contextlib.closing(trainer.train.epoch(0)) as batches:
            next(batches)  # part of an epoch, then the membership changes
        loaders.append(trainer.train)  # held here, so only an explicit close() stops its workers
        procs.append(list(trainer.train._pool._procs))
    assert all(p.poll() is not None for world in procs[:-1] for p in world), "a past world's decoders still run"
    assert all(p.poll() is None for p in procs[-1])
    trainer.train.close()
    assert all(p.poll() is not None for p in procs[-1])


def test_a_dropped_loader_stops_its_decoders_without_the_cyclic_collector(tmp_path):
    """A loader nobody refers to any more stops its processes at once: it is in no reference
    cycle, so it does not wait for a cyclic collection (rare for old objects) to go."""
    url = write_split(tmp_path / "train", [rows(1000)], 100)
    loader = ShardLoader(url, ["a"], "label", batch_size=64, workers=2, processes=True)
    assert drain(loader, 0) == 1000
    procs = list(loader._pool._procs)
    gc.disable()
    try:
        del loader
        assert all(p.poll() is not None for p in procs), "the workers outlived their loader"
    finally:
        gc.enable()


# -- a failed decode gives its slot back ---------------------------------------------------------

@pytest.fixture
def null_label(tmp_path) -> str:
    """20 row groups of 100 rows; row 1500's label is null, so the epoch fails when the window
    holding its row group is waited for (shuffled: a different window every epoch). The null is
    the fault; decoding, the pool and the slots are real."""
    i = np.arange(2000, dtype=np.float32)
    label = pa.array([None if k == 1500 else float(k) for k in range(2000)], pa.float32())
    return write_split(tmp_path / "nulls", [pa.table({"a": i, "label": label})], 100)


def test_a_failed_decode_gives_its_slot_back_every_epoch(null_label):
    with ShardLoader(null_label, ["a"], "label", batch_size=64, workers=2, shuffle_window=2,
                     processes=True) as loader:
        made = []
        for epoch in range(8):
            with pytest.raises(ValueError, match="column 'label' has 1 nulls"):
                drain(loader, epoch)
            assert_every_slot_is_back(loader)
            gc.collect()  # the error's traceback holds the epoch's last batch, in a cycle
            made.append(loader._ring.size)
        # at most what an epoch holds at once (2 windows decoding, 1 waiting to be queued, 2
        # queued, 1 with the consumer, and the one its last batch still views while the next
        # window arrives: seen under load), reused; it used to grow by a slot a failed epoch
        assert made[-1] <= 7, made


class _CopiedEvent:
    """torch.cuda.Event without a GPU: every copy has run. Stubbed only because this machine has
    none (scripts/gpu_check.sh runs the GPU tests); the pool, the slots and the ring are real."""

    def record(self, stream=None) -> None:
        pass

    def query(self) -> bool:
        return True


def test_the_gpu_paths_failed_or_stopped_windows_give_their_slots_back(null_label, monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _CopiedEvent)
    with ShardLoader(null_label, ["a"], "label", batch_size=64, workers=2, shuffle_window=2, seed=5,
                     processes=True) as loader:
        for epoch in range(6):
            rng = np.random.Generator(np.random.PCG64([5, epoch, 0]))
            with pytest.raises(ValueError, match="column 'label' has 1 nulls"):
                for _ in loader._decoded_windows_procs(rng, threading.Event(), None):
                    pass
            assert_every_slot_is_back(loader)
        for epoch in range(6):  # stopped after its first window (a membership change, an early stop)
            windows = loader._decoded_windows_procs(np.random.Generator(np.random.PCG64([5, 0, 0])),
                                                    threading.Event(), None)
            next(windows)
            windows.close()
            assert_every_slot_is_back(loader)
        assert loader._ring.size <= 6


# -- a rank whose row groups hold no rows ----------------------------------------------------------

@pytest.mark.parametrize("processes", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_rank_with_only_empty_row_groups_gives_no_batches(tmp_path, processes, batch_size):
    """Rank 1 of 2 is dealt the only row group of a 0-row file: no batches, in either mode (a
    shared slot of 0 rows used to be an empty file, which mmap refuses)."""
    url = write_split(tmp_path / "split", [rows(100), rows(0)], 100)
    with ShardLoader(url, ["a"], "label", rank=1, size=2, batch_size=batch_size, processes=processes) as loader:
        assert ([g.rows for g in loader.groups], loader.num_batches()) == ([0], 0)
        assert [list(loader.epoch(epoch)) for epoch in (0, 1)] == [[], []]


def test_a_world_larger_than_the_splits_row_groups_is_refused_before_launch(tmp_path):
    """The same deal as the loaders' (``parquet_groups.deal``): refused from the footers,
    naming the field, the ranks left without rows and the fix; elastic jobs are checked at max_np."""
    from training.stages import check_world_fits

    url = write_split(tmp_path / "split", [rows(100), rows(50), rows(0)], 100)
    check_world_fits(url, ScaleConfig(num_proc=2, hosts="localhost:2"))  # rank 0: groups 0 and 2, rank 1: 1
    with pytest.raises(ConfigError) as refused:
        check_world_fits(url, ScaleConfig(num_proc=3, hosts="localhost:3"))
    assert (refused.value.field, refused.value.value) == ("scale.num_proc", 3)
    assert "ranks [2] would get no training rows" in refused.value.fix and "3 (2 non-empty)" in refused.value.fix
    elastic = ScaleConfig(num_proc=2, min_np=1, max_np=4, host_discovery_script="/d.sh")
    with pytest.raises(ConfigError) as refused:
        check_world_fits(url, elastic)
    assert (refused.value.field, refused.value.value) == ("scale.max_np", 4)
    assert "ranks [2] would get no training rows (at a world of 3, between min_np and max_np)" in refused.value.fix
    # empty groups between filled ones: dealt by position, rank 0 of 2 got only the empty ones
    alternating = write_split(tmp_path / "alternating", [rows(0), rows(50)] * 3, 100)
    check_world_fits(alternating, ScaleConfig(num_proc=3, hosts="localhost:3"))
    check_world_fits(alternating, ScaleConfig(num_proc=2, min_np=1, max_np=3, host_discovery_script="/d.sh"))
    with pytest.raises(ConfigError, match="the training split has no rows"):
        check_world_fits(write_split(tmp_path / "empty", [rows(0)], 100), ScaleConfig(num_proc=1, hosts="localhost:1"))


def test_training_files_that_no_longer_hold_the_committed_rows_are_refused_before_launch(tmp_path):
    """The ranks found it too, but only once horovodrun had started them, as a crash that
    Airflow retried; from the footers it is an integrity error (not retried) naming the fix."""
    from dlpipe.errors import IntegrityError
    from training.stages import check_world_fits

    url = write_split(tmp_path / "split", [rows(100), rows(50)], 100)
    scale = ScaleConfig(num_proc=2, hosts="localhost:2")
    check_world_fits(url, scale, {"id": "datasets/eta/w@1", "summary": {"rows": {"train": 150}}})
    with pytest.raises(IntegrityError, match=r"dataset datasets/eta/w@1: its training files hold 150 rows, its "
                                             r"manifest commits 200; .*materialize it again"):
        check_world_fits(url, scale, {"id": "datasets/eta/w@1", "summary": {"rows": {"train": 200}}})


# -- checkpoints: what stays on disk, what loads ---------------------------------------------------

def test_only_the_two_newest_checkpoints_and_no_stale_temporary_files_stay(tmp_path, monkeypatch):
    from training import checkpoint

    import os
    import time

    monkeypatch.delenv(checkpoint.KEEP_ALL_VAR, raising=False)
    killed = tmp_path / ".epoch-0001.pt.0123abcd.tmp"
    killed.write_bytes(b"left by a killed write")
    os.utime(killed, (time.time() - 2 * 3600,) * 2)
    # a concurrent try of the same training, behind this one, writing its epoch 2 right now
    (tmp_path / ".epoch-0002.pt.4567ef.tmp").write_bytes(b"being written")
    for epoch in range(1, 5):
        checkpoint.save(tmp_path, epoch, {"epoch": epoch, "w": torch.ones(2) * epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        [".epoch-0002.pt.4567ef.tmp", "epoch-0003.pt", "epoch-0003.sha256", "epoch-0004.pt", "epoch-0004.sha256"]
    monkeypatch.setenv(checkpoint.KEEP_ALL_VAR, "1")  # kept to look into a run
    checkpoint.save(tmp_path, 5, {"epoch": 5})
    checkpoint.save(tmp_path, 6, {"epoch": 6})
    assert len(list(tmp_path.glob("epoch-*.pt"))) == 4


def test_a_checkpoint_whose_folder_a_concurrent_try_removed_is_skipped_not_fatal(tmp_path, monkeypatch, capsys):
    """The try that commits removes the folder; a concurrent try still training must go on."""
    from training import checkpoint

    real = checkpoint.write_temp

    def folder_removed_meanwhile(path, data):
        tmp = real(path, data)
        tmp.unlink()
        return tmp

    monkeypatch.setattr(checkpoint, "write_temp", folder_removed_meanwhile)
    assert checkpoint.save(tmp_path / "gone", 3, {"epoch": 3}) is None
    assert "epoch-0003.pt not kept" in capsys.readouterr().out
    checkpoint.prune(tmp_path / "never-made", keep_from=5)  # no error either
    monkeypatch.setattr(checkpoint, "write_temp", real)
    assert checkpoint.save(tmp_path / "removed", 4, {"epoch": 4}) is None  # the folder is not made again
    assert not (tmp_path / "removed").exists()


def test_a_sealed_checkpoint_torch_cannot_load_falls_back_to_the_one_before(tmp_path, capsys):
    """A seal proves the bytes are the ones written, not that this torch can read them (another
    release wrote them): every retry used to fail on it; the older checkpoint is used instead."""
    from dlpipe.hashing import sha256_bytes
    from training import checkpoint

    checkpoint.save(tmp_path, 1, {"epoch": 1, "w": torch.ones(2)})
    (tmp_path / "epoch-0002.pt").write_bytes(b"PK\x03\x04 not a checkpoint this torch reads")
    (tmp_path / "epoch-0002.sha256").write_text(sha256_bytes((tmp_path / "epoch-0002.pt").read_bytes()))
    epoch, path, state = checkpoint.load_latest(tmp_path)
    assert (epoch, path.name, state["epoch"]) == (1, "epoch-0001.pt", 1)
    assert "ignoring epoch-0002.pt: torch cannot load it" in capsys.readouterr().out
    assert checkpoint._sealed_bytes(tmp_path / "epoch-0002.pt") is not None  # sealed: it is the load that fails


def test_a_failed_temporary_write_leaves_no_file(tmp_path):
    from dlpipe.fsutil import write_temp

    with pytest.raises(TypeError):
        write_temp(tmp_path / "x.json", "not bytes")  # fails after the file was opened, like ENOSPC
    assert list(tmp_path.iterdir()) == []


# -- settings refused when they are read, naming the field ----------------------------------------

@pytest.mark.parametrize("model", [TrainConfig, DigitsTrainConfig])
def test_a_seed_torch_cannot_take_is_refused_naming_the_field(model, torch_globals):
    """torch.manual_seed takes seeds below 2**64: a larger one failed on every rank after start."""
    with pytest.raises(ConfigError, match=r"train\.seed=18446744073709551616: .*less than or equal to "
                                          r"18446744073709551615"):
        section({"train": {"seed": 2 ** 64}, "_source": "p.yaml"}, "train", model)
    largest = section({"train": {"seed": 2 ** 64 - 1}}, "train", model).seed
    torch.manual_seed(largest)  # what every rank does with it
    assert torch.initial_seed() == largest


def test_max_np_below_min_np_is_blamed_on_max_np():
    with pytest.raises(ConfigError, match=r"p\.yaml: scale\.max_np=2: .*below min_np=4.*max_np"):
        section({"scale": {"min_np": 4, "max_np": 2, "num_proc": 4, "host_discovery_script": "/d.sh"},
                 "_source": "p.yaml"}, "scale", ScaleConfig)
    with pytest.raises(ConfigError, match=r"scale\.num_proc=5: need min_np <= num_proc <= max_np"):
        section({"scale": {"min_np": 2, "max_np": 4, "num_proc": 5, "host_discovery_script": "/d.sh"}},
                "scale", ScaleConfig)


ARGUMENT = r"HorovodTrainOperator\(task_id='train'\) argument env"


def test_the_discovery_script_must_be_one_nobody_else_could_have_written(tmp_path):
    """horovodrun runs it as the worker every few seconds: a script in /tmp, or one others may
    write, would let anyone who can write there run code as the worker."""
    from training.launcher import untrusted_script_problem

    folder = tmp_path / "bin"
    folder.mkdir(mode=0o755)
    script = folder / "discover.sh"
    script.write_text("#!/bin/sh\necho localhost:2\n")
    script.chmod(0o755)
    folder.chmod(0o755)
    assert untrusted_script_problem(str(script)) is None
    script.chmod(0o757)
    assert "may be written by others" in untrusted_script_problem(str(script))
    script.chmod(0o644)
    assert "is not an executable file" in untrusted_script_problem(str(script))
    script.chmod(0o755)
    folder.chmod(0o777)
    assert "in a folder others may write into" in untrusted_script_problem(str(script))
    folder.chmod(0o755)
    assert "cannot be read on this worker" in untrusted_script_problem(str(folder / "gone.sh"))
    planted = Path("/tmp") / f"dlpipe-discover-{os.getpid()}.sh"
    try:
        planted.write_text("#!/bin/sh\necho localhost:2\n")
        planted.chmod(0o755)
        assert "such as /tmp" in untrusted_script_problem(str(planted))
    finally:
        planted.unlink()
    from training.launcher import horovodrun_argv

    scale = ScaleConfig(num_proc=2, min_np=1, max_np=2, host_discovery_script=str(folder / "gone.sh"))
    with pytest.raises(ConfigError, match=r"scale.host_discovery_script=.*gone.sh.*cannot be read"):
        horovodrun_argv(scale, ["python", "-c", "pass"])


@pytest.mark.parametrize("env, shown, fix", [
    ({"OMP_NUM_THREADS": 48151623}, "'OMP_NUM_THREADS'",
     r"its value is of type int; give values as strings, e\.g\. \{'OMP_NUM_THREADS': '4'\}"),
    ({"NCCL_DEBUG": None}, "'NCCL_DEBUG'", "its value is of type NoneType; give values as strings"),
    ({7: "s3cr3t"}, "7", "the name is of type int; give names as strings"),
    ({b"TOKEN=s3cr3t": "x"}, "'<a bytes>'", "give names as strings"),
    ({"": "s3cr3t"}, "''", "a variable needs a name"),
    ({"TOKEN=s3cr3t": "s3cr3t"}, r"'TOKEN=\.\.\.'", "a name cannot contain '='"),
    ({"NCCL_DEBUG": "s3cr3t\0"}, "'NCCL_DEBUG'", "NUL"),
    # horovodrun writes NAME=quoted-value into a shell command: the name is not quoted
    ({"A;touch${IFS}/tmp/pwned;B": "1"}, r"'A;touch\$\{IFS\}/tmp/pwned;B'", "passes it to a shell unquoted"),
    ({"1ST": "1"}, "'1ST'", "not starting with a digit"),
])
def test_rank_variables_that_popen_refuses_are_refused_when_the_dag_is_parsed(env, shown, fix):
    """Popen refused them only when the task ran (a bare TypeError, retried by Airflow). The
    error names the variable, never its value (a value may be a credential)."""
    from operators.train import HorovodTrainOperator

    with pytest.raises(ConfigError, match=rf"{ARGUMENT}={shown}: .*{fix}") as err:
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml",
                             env={"NCCL_DEBUG": "WARN", **env})
    assert "s3cr3t" not in str(err.value) and "48151623" not in str(err.value)


def test_inherited_variables_whose_names_a_shell_would_run_are_not_passed_to_ranks(monkeypatch):
    from training.launcher import training_env

    monkeypatch.setenv("A;touch${IFS}/tmp/pwned;B", "1")
    monkeypatch.setenv("DLPIPE_TEST_PLAIN", "1")
    env = training_env()
    assert "DLPIPE_TEST_PLAIN" in env and not any(";" in name for name in env)


def test_rank_variables_must_be_a_mapping_and_strings_at_run_time_too():
    from training.launcher import training_env

    with pytest.raises(ConfigError, match=r"env='list': give a mapping of names to strings"):
        training_env(["OMP_NUM_THREADS=4"])
    with pytest.raises(ConfigError, match=r"env='OMP_NUM_THREADS': .*give values as strings"):
        training_env({"OMP_NUM_THREADS": 4})
    assert training_env({"OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"


@pytest.mark.parametrize("script", ["discover.sh", "/opt/discover.sh --all", "/opt/d.sh;touch /tmp/pwned",
                                    "$(curl x)", "", " "])
def test_the_discovery_script_is_an_absolute_path_and_nothing_else(script):
    """horovodrun runs the discovery script through a shell: a spec must not hold a command line."""
    with pytest.raises(ConfigError, match=r"scale\.host_discovery_script=.*absolute path of an executable"):
        section({"scale": {"min_np": 1, "max_np": 2, "num_proc": 2, "host_discovery_script": script}},
                "scale", ScaleConfig)
    assert section({"scale": {"min_np": 1, "max_np": 2, "num_proc": 2, "host_discovery_script": "/opt/d-1.sh"}},
                   "scale", ScaleConfig).host_discovery_script == "/opt/d-1.sh"


@pytest.mark.parametrize("env, shown, fix", [
    ({"AWS_SECRET_ACCESS_KEY": "s3cr3t"}, "'AWS_SECRET_ACCESS_KEY'", "command line that any user"),
    ({"DB": "postgres://u:s3cr3t@h/db"}, "'DB'", "command line that any user"),
    ({"K": "-----BEGIN PRIVATE KEY-----s3cr3t"}, "'K'", "command line that any user"),
    ({"bad name": "s3cr3t"}, "'bad name'", "passes it to a shell unquoted"),
])
def test_a_specs_rank_variables_follow_the_operators_rules(env, shown, fix):
    """scale.env in the YAML: the same refusals as the operator's env=, naming the variable and
    never its value."""
    with pytest.raises(ConfigError, match=rf"p\.yaml: scale\.env={shown}: .*{fix}") as err:
        section({"_source": "p.yaml", "scale": {"env": {"NCCL_DEBUG": "WARN", **env}}}, "scale", ScaleConfig)
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigError, match=r"scale\.env='OMP_NUM_THREADS': its value is of type int"):
        section({"_source": "p.yaml", "scale": {"env": {"OMP_NUM_THREADS": 4}}}, "scale", ScaleConfig)


@pytest.mark.parametrize("name", ["PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "BASH_ENV", "PATH", "PYTHONWARNINGS",
                                  "NCCL_NET_PLUGIN", "OMPI_MCA_plm_rsh_agent", "HOROVOD_TIMELINE", "UCX_MODULE_DIR",
                                  "OPENSSL_CONF", "DLPIPE_HOME"])
def test_a_spec_cannot_set_variables_that_decide_which_code_runs(tmp_path, name):
    """PYTHONPATH with a sitecustomize.py ran code in horovodrun on the worker and in every rank,
    under a clean code hash. A spec (configuration) gets tuning variables only; the operator's
    env= (code in the DAG file) still takes any of them."""
    with pytest.raises(ConfigError, match=rf"p\.yaml: scale\.env='{name}': a spec's scale\.env holds tuning "
                                          r"variables .*HorovodTrainOperator\(env=\.\.\.\)"):
        section({"_source": "p.yaml", "scale": {"env": {"NCCL_DEBUG": "WARN", name: str(tmp_path)}}}, "scale",
                ScaleConfig)
    tuning = {"OMP_NUM_THREADS": "4", "NCCL_IB_HCA": "mlx5", "CUDA_VISIBLE_DEVICES": "0",
              "HOROVOD_FUSION_THRESHOLD": "67108864", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
              "MALLOC_ARENA_MAX": "2", "TZ": "UTC"}
    assert section({"scale": {"env": tuning}}, "scale", ScaleConfig).env == tuning
    check_rank_env({name: str(tmp_path)})  # the operator's env: a DAG file is code


def test_ranks_get_the_specs_variables_and_the_operators_win(monkeypatch):
    from training import launcher

    seen = {}
    monkeypatch.setattr(launcher, "run_streaming", lambda argv, *, env, **kw: seen.update(env))
    scale = section({"scale": {"env": {"NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "WARN"}}}, "scale", ScaleConfig)
    launcher.horovod_launcher(scale, env={"NCCL_DEBUG": "INFO"})(["python", "-c", "pass"])
    assert seen["NCCL_IB_HCA"] == "mlx5" and seen["NCCL_DEBUG"] == "INFO"
    launcher.horovod_launcher(scale)(["python", "-c", "pass"])
    assert seen["NCCL_DEBUG"] == "WARN"


def test_a_private_key_in_an_error_message_is_masked_whatever_its_name():
    from dlpipe.errors import ConfigError as Error

    assert "s3cr3t" not in str(Error("deploy.note", "-----BEGIN OPENSSH PRIVATE KEY-----\ns3cr3t", "remove it"))


def test_a_numeric_value_under_a_variable_named_like_a_credential_is_not_shown():
    """Strict validation refuses a number as a string and shows the input: not under MY_PASS."""
    with pytest.raises(ConfigError, match=r"scale\.env='MY_PASS': its value is of type int; give values as strings") as err:
        section({"_source": "p.yaml", "scale": {"env": {"MY_PASS": 123456}}}, "scale", ScaleConfig)
    assert "123456" not in str(err.value)


@pytest.mark.parametrize("epochs, kept", [(1, False), (3, False), (4, True), (6, True)])
def test_decoded_row_groups_are_kept_only_for_runs_long_enough_to_pay_for_it(horovod, tmp_path, epochs, kept):
    """Keeping makes the first epoch 1.7x to 2.7x slower and later ones 3.4x to 3.8x faster: it
    breaks even at about 3.7 to 3.9 epochs (docs/benchmarks.md). Evaluation reads once."""
    from training.train_eta import EtaTrainer

    spec = eta_spec(tmp_path)
    spec["train"] = {**spec["train"], "decode_in": "threads", "epochs": epochs}
    trainer = EtaTrainer(spec, horovod)
    trainer.bind()  # the training loader, as a run makes it
    train = trainer.train
    validation = trainer.loader("validation", batch_size=64, shuffle=False)
    try:
        assert (train.cache_bytes > 0) is kept
        assert validation.cache_bytes == 0
    finally:
        train.close()
        validation.close()


def test_an_epoch_says_how_many_rows_it_trains_and_warns_below_nine_tenths(horovod, tmp_path):
    from training.horovod_loop import epoch_coverage
    from training.train_eta import EtaTrainer

    trainer = EtaTrainer(eta_spec(tmp_path), horovod)
    trainer.bind()
    trainer.train.close()
    assert trainer.rows_per_epoch == 4000  # one rank: every row
    # the shards of files with 10,000-row groups and small tails dealt by position (two ranks)
    used, warning = epoch_coverage([80000, 41036], steps=161, batch_size=256)
    assert used == 41216 + 41036 and "each epoch trains 82252 of 121036 rows (68%)" in warning
    assert "[80000, 41036]" in warning and "smaller row groups" in warning
    assert epoch_coverage([60518, 60518], steps=237, batch_size=256) == (121036, None)


def test_a_network_interface_on_a_job_of_this_machine_alone_is_refused_before_horovodrun():
    """horovodrun 0.28 fails with a bare ValueError ('No interface is found for address
    127.0.0.1.') when every host is local and the interface does not hold 127.0.0.1, which the
    task retried as if it were transient."""
    import psutil

    from training.launcher import horovodrun_argv

    ifaces = psutil.net_if_addrs()
    loopback = next(n for n, a in ifaces.items() if any(x.address == "127.0.0.1" for x in a))
    for hosts in ("localhost:2", "localhost:1,127.0.0.1:1"):
        with pytest.raises(ConfigError, match=r"scale\.network_interface='nic-not-here'.*is this machine.*"
                                              r"leave network_interface out"):
            horovodrun_argv(ScaleConfig(hosts=hosts, network_interface="nic-not-here"), ["train"])
        argv = horovodrun_argv(ScaleConfig(hosts=hosts, network_interface=loopback), ["train"])
        assert argv[argv.index("--network-interface") + 1] == loopback
    # a remote host (an address of no interface here): the interface is the job's to choose
    argv = horovodrun_argv(ScaleConfig(hosts="localhost:1,192.0.2.77:1", network_interface="nic-not-here"), ["t"])
    assert argv[argv.index("--network-interface") + 1] == "nic-not-here"


def test_an_nccl_interface_horovodrun_would_override_is_refused():
    """horovodrun's gloo launcher writes NCCL_SOCKET_IFNAME=<its interfaces> after the rank
    variables, so a different value in env never reached NCCL: network_interface is the setting."""
    from operators.train import HorovodTrainOperator

    with pytest.raises(ConfigError, match=r"p\.yaml: scale\.env='NCCL_SOCKET_IFNAME': horovodrun sets "
                                          r"NCCL_SOCKET_IFNAME=eth0 .*'ib0' would be ignored: set network_interface: ib0"):
        section({"_source": "p.yaml", "scale": {"network_interface": "eth0", "env": {"NCCL_SOCKET_IFNAME": "ib0"}}},
                "scale", ScaleConfig)
    with pytest.raises(ConfigError, match=r"NCCL_SOCKET_IFNAME=<every interface the hosts share>"):
        section({"scale": {"env": {"NCCL_SOCKET_IFNAME": "ib0"}}}, "scale", ScaleConfig)
    same = section({"scale": {"network_interface": "ib0", "env": {"NCCL_SOCKET_IFNAME": "ib0"}}}, "scale", ScaleConfig)
    assert same.env == {"NCCL_SOCKET_IFNAME": "ib0"}
    with pytest.raises(ConfigError, match=rf"{ARGUMENT}='NCCL_SOCKET_IFNAME': .*NCCL_SOCKET_IFNAME=eth0 .*"
                                          rf"set network_interface=ib0"):
        HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", network_interface="eth0",
                             env={"NCCL_SOCKET_IFNAME": "ib0"})
    HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml", network_interface="ib0",
                         env={"NCCL_SOCKET_IFNAME": "ib0"})
    # without the argument, the YAML's network_interface decides, when the task runs
    op = HorovodTrainOperator(task_id="train", dataset_id="x", pipeline_config="p.yaml",
                              env={"NCCL_SOCKET_IFNAME": "ib0"})
    op._check_nccl_interface("ib0")
    with pytest.raises(ConfigError, match=r"<every interface the hosts share>"):
        op._check_nccl_interface(None)


def test_the_mpi_controller_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"scale\.controller='mpi': .*built without MPI.*use controller: gloo"):
        section({"scale": {"controller": "mpi"}}, "scale", ScaleConfig)


def test_world_sizes_are_reported_as_runs_of_epochs():
    from training.horovod_loop import _size_runs

    assert _size_runs({1: 2, 2: 2, 3: 1, 4: 1, 5: 2}) == [
        {"epochs": "1-2", "world_size": 2}, {"epochs": "3-4", "world_size": 1}, {"epochs": "5", "world_size": 2}]
    assert _size_runs({}) == []


def test_an_epoch_whose_loss_is_not_finite_stops_training_without_a_checkpoint(horovod, tmp_path):
    """A NaN among the features (or a learning rate that diverges) used to train every epoch on
    NaN weights, checkpoint them, and fail only at the model gate, hours later on a GPU."""
    from training.train_eta import EtaTrainer

    spec = eta_spec(tmp_path)
    spec["train"] = {**spec["train"], "decode_in": "threads", "epochs": 3}
    table = rows(4000)
    a = table.column("a").to_numpy().copy()
    a[1234] = np.nan  # NaN is not null: the loader's null check lets it through
    shutil.rmtree(tmp_path / "train")
    spec["train_url"] = write_split(tmp_path / "train", [table.set_column(0, "a", pa.array(a))], 100)
    trainer = EtaTrainer(spec, horovod)
    trainer.bind()
    try:
        with pytest.raises(SystemExit, match=r"epoch 1/3: the mean training loss is nan .*learning_rate \(0.002 "
                                             r"per process, 0.002 at this world size\)"):
            trainer.run_epoch(0)
    finally:
        trainer.train.close()
    assert not list((tmp_path / "ckpt").glob("epoch-*")), "a diverged epoch was checkpointed"


def test_the_rank_that_raised_first_leads_the_error_not_rank_0():
    """Rank 1 failed in its own code; rank 0 then failed with HorovodInternalError. The report
    listed rank 0 first, and the audit event (its first characters) named only rank 0's error."""
    from training.launcher import RankTails

    tails = RankTails()
    for line in ["[0]<stdout>:[train rank 0] epoch 1", "[1]<stderr>:Traceback (most recent call last):",
                 "[1]<stderr>:  File \"train_maps.py\", line 9, in final_metrics",
                 "[1]<stderr>:KeyError: 'road_class_lookup'", "[0]<stderr>:Traceback (most recent call last):",
                 "[0]<stderr>:horovod.common.exceptions.HorovodInternalError: Horovod has been shut down",
                 "Process name: 0", "Exit code: 1"]:
        tails.add(line)
    assert tails.first_error() == "rank 1 raised first: KeyError: 'road_class_lookup'"
    report = tails.report()
    assert report.index("rank 1 (raised first), last 3 lines:") < report.index("rank 0, last 3 lines:")
    # a rank killed by a signal prints no traceback: horovodrun's exit report names it
    killed = RankTails()
    for line in ["[0]<stderr>:Traceback (most recent call last):", "[0]<stderr>:HorovodInternalError: x",
                 "Process name: 1", "Exit code: 137"]:
        killed.add(line)
    assert killed.first_error() == "rank 1 was ended by signal 9 (exit code 137)"
    python_style = RankTails()
    for line in ["Process name: 0", "Exit code: -15"]:
        python_style.add(line)
    assert python_style.first_error() == "rank 0 was ended by signal 15 (exit code -15)"
    assert RankTails().first_error() is None
    # a SIGSTOPped rank 1: rank 0 times out and raises; the one that raised nothing is named
    frozen = RankTails()
    for line in ["[0]<stdout>:[train rank 0] epoch 39", "[1]<stdout>:[train rank 1] started",
                 "[0]<stderr>:Traceback (most recent call last):",
                 "[0]<stderr>:horovod.common.exceptions.HorovodInternalError: ... Timed out waiting 30000ms for recv",
                 "Process name: 0", "Exit code: 1"]:
        frozen.add(line)
    assert frozen.first_error().startswith("rank 0 raised first: horovod.common.exceptions.HorovodInternalError")
    assert "; rank(s) [1] raised nothing: a rank that stops answering" in frozen.first_error()
