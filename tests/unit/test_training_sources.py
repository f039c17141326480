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


def test_an_entry_point_in_a_teams_own_package_hashes_its_own_files(tmp_path, monkeypatch):
    """The module was looked for under training/ by its last name: a team's
    maps_team.train_speed failed with FileNotFoundError after three stages committed (and was
    retried), and a training/ file of the same name would have been hashed in its place."""
    from dlpipe.errors import ConfigError
    from dlpipe.hashing import sources_hash
    from training import stages

    package = tmp_path / "maps_team"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train_speed.py").write_text("SPEED = 1\n")
    (package / "speed_model.py").write_text("LAYERS = 2\n")
    (package / "train_eta.py").write_text("# not training/train_eta.py\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(stages.ENTRY_SOURCES, "maps_team.train_speed", ["speed_model.py"])
    monkeypatch.setitem(stages.ENTRY_SOURCES, "maps_team.train_eta", [])
    files = stages.entry_files("maps_team.train_speed")
    assert files[:2] == [package / "train_speed.py", package / "speed_model.py"]
    before = sources_hash(files)
    (package / "speed_model.py").write_text("LAYERS = 3\n")  # a fix to the team's model: new code version
    assert sources_hash(stages.entry_files("maps_team.train_speed")) != before
    assert stages.entry_files("maps_team.train_eta")[0] == package / "train_eta.py"
    monkeypatch.setitem(stages.ENTRY_SOURCES, "maps_team.train_speed", ["speed_modle.py"])
    with pytest.raises(ConfigError, match=r"ENTRY_SOURCES\['maps_team.train_speed'\]='.*speed_modle.py': no such file"):
        stages.entry_files("maps_team.train_speed")
    monkeypatch.setitem(stages.ENTRY_SOURCES, "maps_team.train_sped", [])
    with pytest.raises(ConfigError, match=r"train_entry='maps_team.train_sped': no such Python module"):
        stages.entry_files("maps_team.train_sped")


def test_a_string_feature_is_refused_before_any_rank_starts():
    """Every rank failed on it (a TypeError in the model's normalization), retried as a crash."""
    from dlpipe.errors import ConfigError
    from training.stages import check_numeric_columns

    summary = {"features": ["distance_km", "surface"], "label": "speed_kmh",
               "columns": [["probe_id", "string"], ["distance_km", "float"], ["surface", "string"],
                           ["speed_kmh", "float"], ["hour", "int"]]}
    with pytest.raises(ConfigError, match=r"column='surface': it is a string column, and training reads float and "
                                          r"int columns only"):
        check_numeric_columns({"id": "datasets/maps/w@1", "summary": summary})
    summary["features"] = ["distance_km", "hour"]
    check_numeric_columns({"id": "datasets/maps/w@1", "summary": summary})
    summary["features"] = ["distance_km", "hour_of_day"]  # a summary naming a column it did not write
    with pytest.raises(ConfigError, match=r"column='hour_of_day': its summary lists it as a feature or the label"):
        check_numeric_columns({"id": "datasets/maps/w@1", "summary": summary})
    # images: no features listed, the binary image column is the kind's own business
    check_numeric_columns({"id": "d@1", "summary": {"label": "label", "columns": [["image", "binary"], ["label", "int"]]}})
