"""The training stage: one committed model per (dataset, config, code)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.datasets import split_url
from dlpipe.errors import ConfigError, IntegrityError
from dlpipe.hashing import checkpoint_name, sources_hash
from dlpipe.runctx import RunContext
from dlpipe.spec import write_spec
from training import checkpoint
from training.config import ScaleConfig
from training.launcher import Launcher

HERE = Path(__file__).resolve().parent


def where_it_ran(scale: ScaleConfig) -> dict:
    """The manifest's record of the hosts: ``-H`` for a static job; an elastic job never gets
    ``-H`` (its hosts come from the discovery script), so its bounds and script instead. The
    world it ended with is in the metrics (``world_size``)."""
    if scale.elastic:
        return {"hosts": None, "host_discovery_script": scale.host_discovery_script,
                "min_np": scale.min_np, "max_np": scale.max_np or scale.num_proc}
    return {"hosts": scale.hosts}

# The sources each entry point's training depends on, beyond itself, horovod_loop.py and
# checkpoint.py: they enter the fingerprint, so a change to any of them (the shuffle stream,
# decoding, the model) trains afresh instead of skipping or resuming old checkpoints.
_LOADING = ["loader.py", "scatter.py", "parquet_groups.py", "decode_pool.py"]
ENTRY_SOURCES = {
    "training.train_eta": [*_LOADING, "model.py"],
    "training.train_digits": ["image_loader.py", *_LOADING, "digits_model.py"],
}


def entry_files(entry: str) -> list[Path]:
    """The source files whose contents make a training entry point's code version: its module
    (wherever it is imported from: a team's own package too), the files ``ENTRY_SOURCES`` lists
    for it (relative to that module's folder), the training loop, checkpoints and this file.
    Each must exist: hashing another file of the same name would let a code fix skip as
    'already committed'."""
    import importlib.util

    if entry not in ENTRY_SOURCES:
        raise ConfigError("entry", entry, f"use one of {sorted(ENTRY_SOURCES)}, or list its training modules in "
                                          f"training/stages.py ENTRY_SOURCES")
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError) as exc:  # its package does not import
        raise ConfigError("train_entry", entry, f"its package does not import here ({exc})") from None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ConfigError("train_entry", entry, "no such Python module importable here (the workers' PYTHONPATH); "
                                                "give the module horovodrun runs as `python -m MODULE`")
    module = Path(spec.origin).resolve()
    listed = [module.parent / f for f in ENTRY_SOURCES[entry]]
    if missing := [str(f) for f in listed if not f.is_file()]:
        raise ConfigError(f"training/stages.py ENTRY_SOURCES[{entry!r}]", ", ".join(missing),
                          f"no such file; list files relative to {module.parent}")
    return [module, *listed, HERE / "horovod_loop.py", HERE / "checkpoint.py", Path(__file__)]


def check_numeric_columns(dataset: dict) -> None:
    """Refuse a dataset whose features or label are not numbers, before any rank starts: every
    rank would otherwise fail on it (the model's normalization, then the loader), as a crash
    that is retried. Kinds whose dataset lists no features (images) are not judged here."""
    summary = dataset["summary"]
    kinds = {name: kind for name, kind in summary.get("columns") or []}
    wanted = [*(summary.get("features") or []), *([summary["label"]] if summary.get("features") else [])]
    for column in wanted:
        if kinds and column not in kinds:
            raise ConfigError(f"dataset {dataset['id']} column", column,
                              f"its summary lists it as a feature or the label, but its columns are {sorted(kinds)}: "
                              f"the dataset stage's summary must name columns it wrote")
        if kinds.get(column, "float") not in ("float", "int"):
            raise ConfigError(f"dataset {dataset['id']} column", column,
                              f"it is a {kinds[column]} column, and training reads float and int columns only: "
                              f"encode it as numbers in the feature job (an index, or one column per value), or "
                              f"leave it out of the dataset's features")


def check_world_fits(train_url: str, scale: ScaleConfig, dataset: dict | None = None) -> None:
    """Refuse a world with more ranks than the training split can feed, before any rank starts.

    Each rank reads whole row groups (``parquet_groups.deal``, as the loaders deal them), so a
    rank left without rows would stop the job only after horovodrun started every process, and
    the failure would read like a crash and be retried. An elastic job may run at any size from
    ``min_np`` to ``max_np``: each is checked.
    With the ``dataset`` manifest, training files that no longer hold the rows it commits are
    refused too (the ranks would find that only once started)."""
    from training.parquet_groups import deal, list_row_groups

    _, groups = list_row_groups(train_url)
    expected = ((dataset or {}).get("summary") or {}).get("rows", {}).get("train")
    total = sum(g.rows for g in groups)
    if expected is not None and total != expected:
        # the ranks would find it too, after horovodrun started them, as a retried crash
        raise IntegrityError(f"dataset {dataset['id']}: its training files hold {total} "
                             f"rows, its manifest commits {expected}; the files changed after the commit: "
                             f"restore them, or delete the dataset's manifest and materialize it again")
    filled = sum(1 for g in groups if g.rows)
    if not filled:
        raise ConfigError("dataset", train_url, "the training split has no rows: nothing to train on")
    largest = scale.max_np or scale.num_proc
    field = "max_np" if scale.elastic and scale.max_np else "num_proc"
    for size in range(scale.min_np, largest + 1) if scale.elastic else [scale.num_proc]:
        empty = [rank for rank, shard in enumerate(deal(groups, size)) if not any(g.rows for g in shard)]
        if empty:
            at = "" if size == largest else f" (at a world of {size}, between min_np and {field})"
            raise ConfigError(f"scale.{field}", largest,
                              f"ranks {empty} would get no training rows{at}: each rank reads whole row groups "
                              f"and the training split has {len(groups)} ({filled} non-empty); run at most "
                              f"{filled} processes, or write more files (dataset num_files) so there are at "
                              f"least {size}")


def train_model(dataset: dict, *, config: BaseModel, scale: ScaleConfig, run: RunContext,
                launch: Launcher, name: str = "eta", entry: str = "training.train_eta",
                rank_env: dict[str, str] | None = None) -> StageResult:
    """Train on a committed dataset with ``launch`` (horovodrun running ``python -m entry``)
    and commit the model. ``entry`` is a module whose ``main`` runs ``training.horovod_loop``.
    ``rank_env``, the variables the operator gives the ranks over the spec's ``scale.env``, is
    recorded with them in the manifest (not in the fingerprint: they tune, they do not change
    the model)."""
    key = StageKey("training", name, dataset["partition"])
    code = {"sources_hash": sources_hash(entry_files(entry))}
    # world size changes the effective batch and the learning rate: part of the fingerprint
    fp_config = {"train": config.model_dump(), "num_proc": scale.num_proc}

    # Checkpoints outlive a failed attempt (a retry resumes from them) and belong to exactly one
    # (dataset, config, code): any change starts from scratch.
    ckpt_dir = key.dir() / "checkpoints" / checkpoint_name(dataset["id"], fp_config, code["sources_hash"])

    summary = dataset["summary"]

    def produce(attempt: Path) -> dict:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "checkpoint_dir": str(ckpt_dir),
            "train": config.model_dump(),
            "train_url": split_url(dataset, "train"),
            "validation_url": split_url(dataset, "validation"),
            "expected_rows": summary["rows"],
            # what the entry point needs to know of the dataset, from its manifest
            "label": summary["label"],
            "features": summary.get("features"),
            "stats": (summary.get("stats") or {}).get("train"),
            "image": summary.get("image"),
            "image_shape": summary.get("image_shape"),
            "output_dir": str(attempt / "model"),
            "elastic": scale.elastic,
        }
        check_numeric_columns(dataset)
        check_world_fits(spec["train_url"], scale, dataset)
        spec_path = write_spec(attempt / "spec.json", spec)
        launch([sys.executable, "-m", entry, "--spec", str(spec_path)])
        metrics_path = attempt / "model" / "metrics.json"
        if not metrics_path.exists():  # the same on every retry: a module that never trains
            raise ConfigError("train_entry", entry, f"horovodrun exited 0, but no rank wrote {metrics_path}: does "
                                                    f"the module end with `if __name__ == \"__main__\": "
                                                    f"sys.exit(main(YourTrainer))` (training.horovod_loop.main), "
                                                    f"and does rank 0's Trainer save the model?")
        return {"metrics": json.loads(metrics_path.read_text()), "dataset": dataset["id"],
                "model_dir": "model", **where_it_ran(scale), "rank_env": {**scale.env, **(rank_env or {})}}

    result = commit.run_stage(key, inputs=[dataset], config=fp_config, code=code, run=run,
                              produce=produce, part_hashes=True)  # models go to the registry
    if not checkpoint.keep_all():  # committed: a retry now skips, and nothing resumes from them
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result
