"""A training run's fingerprint covers all the training code it runs, so a change to the
shuffle, the decoding or the model trains afresh instead of skipping or resuming old work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from training.stages import ENTRY_SOURCES

TRAINING = Path(__file__).resolve().parents[2] / "training"
ALWAYS = {"horovod_loop.py", "checkpoint.py"}  # hashed for every entry point
NOT_BEHAVIOUR = {"config.py"}  # its values are in the fingerprint already


def _training_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "training":
            found |= {f"{a.name}.py" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training."):
            found.add(node.module.split(".", 1)[1] + ".py")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] + ".py" for a in node.names if a.name.startswith("training.")}
    return {f for f in found if (TRAINING / f).exists()}


@pytest.mark.parametrize("entry", sorted(ENTRY_SOURCES))
def test_every_training_module_an_entry_point_runs_is_in_its_fingerprint(entry):
    todo, seen = [f"{entry.split('.', 1)[1]}.py", *ALWAYS], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _training_imports(TRAINING / name)
    hashed = {f"{entry.split('.', 1)[1]}.py", *ALWAYS, *ENTRY_SOURCES[entry]}
    assert seen - NOT_BEHAVIOUR <= hashed, f"run but not hashed: {sorted(seen - NOT_BEHAVIOUR - hashed)}"
