"""dlpipe gc: what no manifest names and nothing still writes is collected; committed outputs never."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dlpipe import audit, cli, commit
from dlpipe.commit import StageKey, run_stage
from dlpipe.runctx import RunContext

KEY = StageKey("features", "demo", "dt=2026-01-01")
CODE = {"sources_hash": "abc"}
DAY = 24 * 3600


def _produce(attempt: Path) -> dict:
    (attempt / "part-0.txt").write_text("x\n" * 1000)
    return {"rows": 1000}


def _fail(attempt: Path) -> dict:
    (attempt / "half.txt").write_text("x\n" * 500)
    raise RuntimeError("spark died")


def _age(folder: Path, seconds: float) -> None:
    """Make everything in ``folder`` look written ``seconds`` ago."""
    then = time.time() - seconds
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (then, then))


def test_gc_lists_then_removes_only_what_no_manifest_names_and_nothing_still_writes(dlpipe_home, capsys):
    committed = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_produce).manifest
    with pytest.raises(RuntimeError):
        run_stage(KEY, inputs=[], config={"n": 2}, code=CODE, run=RunContext(), produce=_fail)
    attempts = KEY.dir() / "attempts"
    [failed] = [p for p in attempts.iterdir() if p != commit.location(committed)]
    killed = attempts / "0123456789abcdef"  # a SIGKILLed attempt: no event after 'started'
    killed.mkdir()
    (killed / "part-0.txt").write_text("x\n")
    running = attempts / "fedcba9876543210"  # one still writing
    running.mkdir()
    (running / "part-0.txt").write_text("x\n")
    ckpt = dlpipe_home / "training" / "eta" / "window_end=2026-01-04" / "checkpoints"
    (ckpt / "old").mkdir(parents=True)
    (ckpt / "old" / "epoch-0003.pt").write_bytes(b"w" * 100)
    (ckpt / "fresh").mkdir()
    (ckpt / "fresh" / "epoch-0001.pt").write_bytes(b"w")
    _age(commit.location(committed), 10 * DAY)  # committed long ago: still never collected
    _age(killed, 4 * DAY)
    _age(ckpt / "old", 4 * DAY)

    assert cli.main(["gc"]) == 0  # a dry run
    out, err = capsys.readouterr()
    listed = {line.split()[1] for line in out.splitlines()[2:]}
    rel = lambda p: p.relative_to(dlpipe_home).as_posix()  # noqa: E731
    assert listed == {rel(failed), rel(killed), rel(ckpt / "old")}, out
    assert "its attempt failed at" in out and "nothing written in it since" in out and "never committed" in out
    assert "3 folder(s)" in err and "a dry run; add --delete" in err
    assert failed.exists() and killed.exists()

    assert cli.main(["gc", "--delete"]) == 0
    assert "removed 3 folder(s)" in capsys.readouterr().err
    assert not failed.exists() and not killed.exists() and not (ckpt / "old").exists()
    assert running.exists() and (ckpt / "fresh").exists()
    commit.verify(committed)  # the committed output is whole
    removed = [e for e in audit.read() if e["event"] == "removed"]
    assert {e["folder"] for e in removed} == listed and all(e["run"]["task_id"] == "gc" for e in removed)
    _age(running, 120)
    assert cli.main(["gc", "--older-than", "1m"]) == 0 and rel(running) in capsys.readouterr().out


def test_gc_leaves_a_partition_whose_manifest_cannot_be_read_and_names_a_bad_age(dlpipe_home, capsys):
    committed = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_produce).manifest
    _age(commit.location(committed), 10 * DAY)
    [mfile] = (KEY.dir() / "manifests").glob("*.json")
    mfile.write_text(mfile.read_text()[:40])  # torn: what it names is unknown
    assert cli.main(["gc"]) == 0
    assert "nothing to collect" in capsys.readouterr().err and commit.location(committed).exists()
    assert cli.main(["gc", "--older-than", "3 days"]) == 2
    assert "--older-than='3 days'" in capsys.readouterr().err


def test_gc_says_when_checkpoints_belong_to_a_committed_training(dlpipe_home, capsys):
    """A dlpipe from before 2026-12 left a training's checkpoints after its commit: gc said 'its
    training never committed' of them."""
    from dlpipe.hashing import fingerprint

    key = StageKey("training", "eta", "window_end=2026-01-04")
    dataset = run_stage(StageKey("datasets", "eta", "window_end=2026-01-04"), inputs=[], config={}, code=CODE,
                        run=RunContext(), produce=_produce).manifest
    config = {"num_proc": 2, "train": {"epochs": 3}}
    training = run_stage(key, inputs=[dataset], config=config, code=CODE, run=RunContext(),
                         produce=_produce).manifest
    name = fingerprint({"dataset": dataset["id"], "config": config, "code": CODE["sources_hash"]})[:16]
    for folder in (name, "0" * 16):
        (key.dir() / "checkpoints" / folder).mkdir(parents=True)
        (key.dir() / "checkpoints" / folder / "epoch-0003.pt").write_bytes(b"w")
        _age(key.dir() / "checkpoints" / folder, 4 * DAY)
    assert cli.main(["gc"]) == 0
    rows = {line.split()[1].rsplit("/", 1)[1]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert f"its training committed ({training['id']})" in rows[name]
    assert "its training never committed" in rows["0" * 16]
