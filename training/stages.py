"""The training stage: one committed model per (dataset, config, code)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dlpipe import commit
from dlpipe.commit import StageKey, StageResult
from dlpipe.datasets import split_url
from dlpipe.hashing import fingerprint, sources_hash
from dlpipe.runctx import RunContext
from dlpipe.spec import write_spec
from training import checkpoint, loader, model, train_eta
from training.config import ScaleConfig, TrainConfig
from training.launcher import Launcher


def train_model(dataset: dict, *, config: TrainConfig, scale: ScaleConfig, run: RunContext,
                launch: Launcher, name: str = "eta") -> StageResult:
    """Train on a committed dataset with ``launch`` (horovodrun) and commit the model."""
    key = StageKey("training", name, dataset["partition"])
    code = {"sources_hash": sources_hash([train_eta.__file__, loader.__file__, model.__file__,
                                          checkpoint.__file__, __file__])}
    # world size changes the effective batch and the learning rate: part of the fingerprint
    fp_config = {"train": config.model_dump(), "num_proc": scale.num_proc}

    # Checkpoints outlive a failed attempt (a retry resumes from them) and belong to exactly one
    # (dataset, config, code): any change starts from scratch.
    ckpt_dir = key.dir() / "checkpoints" / fingerprint({"dataset": dataset["id"], "config": fp_config,
                                                          "code": code["sources_hash"]})[:16]

    def produce(attempt: Path) -> dict:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "checkpoint_dir": str(ckpt_dir),
            "train": config.model_dump(),
            "train_url": split_url(dataset, "train"),
            "validation_url": split_url(dataset, "validation"),
            "features": dataset["summary"]["features"],
            "expected_rows": dataset["summary"]["rows"],
            "stats": dataset["summary"]["stats"]["train"],
            "label": dataset["summary"]["label"],
            "output_dir": str(attempt / "model"),
            "elastic": scale.elastic,
        }
        spec_path = write_spec(attempt / "spec.json", spec)
        launch([sys.executable, "-m", "training.train_eta", "--spec", str(spec_path)])
        metrics_path = attempt / "model" / "metrics.json"
        if not metrics_path.exists():
            raise RuntimeError(f"training exited 0 but wrote no {metrics_path}; see the rank output above")
        return {"metrics": json.loads(metrics_path.read_text()), "dataset": dataset["id"],
                "model_dir": "model", "hosts": scale.hosts}

    return commit.run_stage(key, inputs=[dataset], config=fp_config, code=code, run=run,
                            produce=produce, part_hashes=True)  # models go to the registry
