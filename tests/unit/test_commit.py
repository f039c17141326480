"""The commit protocol: skip-if-done, atomic publish, races, crashes, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlpipe import audit, commit
from dlpipe.commit import StageKey, run_stage
from dlpipe.errors import ConfigError, IntegrityError, NotCommittedError
from dlpipe.runctx import RunContext
from tests.conftest import run_processes

KEY = StageKey("features", "demo", "dt=2026-01-01")
CODE = {"sources_hash": "abc"}


def _write(rows: int):
    def produce(attempt: Path) -> dict:
        (attempt / "part-0.txt").write_text("x\n" * rows)
        return {"rows": rows}
    return produce


def test_commit_then_skip_with_same_fingerprint():
    run = RunContext(dag_id="d", run_id="r1", task_id="t", try_number=1)
    first = run_stage(KEY, inputs=[], config={"n": 3}, code=CODE, run=run, produce=_write(3))
    second = run_stage(KEY, inputs=[], config={"n": 3}, code=CODE, run=run, produce=_write(99))
    assert not first.skipped and second.skipped
    assert second.manifest == first.manifest  # the committed output, not the rerun's
    assert first.manifest["summary"] == {"rows": 3}
    [f] = first.manifest["outputs"]["files"]
    assert f["path"] == "part-0.txt" and f["size"] == 6 and len(f["sha256"]) == 64
    events = [e["event"] for e in audit.read()]
    assert events == ["started", "committed", "skipped"]


def test_new_config_gives_new_manifest_and_keeps_the_old_one():
    run = RunContext()
    a = run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=run, produce=_write(1))
    b = run_stage(KEY, inputs=[], config={"n": 2}, code=CODE, run=run, produce=_write(2))
    assert a.id != b.id and not b.skipped
    assert [m["id"] for m in commit.committed(KEY)] == [a.id, b.id]
    assert commit.latest(KEY)["id"] == b.id
    assert commit.files(a.manifest)[0].read_text() == "x\n"  # nothing committed was overwritten


def test_inputs_enter_the_fingerprint():
    run = RunContext()
    up1 = run_stage(StageKey("raw", "t", "p1"), inputs=[], config={}, code=CODE, run=run, produce=_write(1))
    up2 = run_stage(StageKey("raw", "t", "p2"), inputs=[], config={}, code=CODE, run=run, produce=_write(2))
    a = run_stage(KEY, inputs=[up1.manifest], config={}, code=CODE, run=run, produce=_write(1))
    b = run_stage(KEY, inputs=[up2.manifest], config={}, code=CODE, run=run, produce=_write(1))
    assert a.manifest["fingerprint"] != b.manifest["fingerprint"]
    assert a.manifest["inputs"] == [{"id": up1.id, "fingerprint": up1.manifest["fingerprint"]}]


def test_failed_attempt_commits_nothing_and_is_audited():
    def boom(attempt: Path) -> dict:
        (attempt / "half.txt").write_text("partial")
        raise RuntimeError("spark died")

    with pytest.raises(RuntimeError, match="spark died"):
        run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=boom)
    with pytest.raises(NotCommittedError, match="nothing committed"):
        commit.latest(KEY)
    failed = [e for e in audit.read() if e["event"] == "failed"]
    assert len(failed) == 1 and "spark died" in failed[0]["error"]
    # the retry succeeds and only its files are referenced
    ok = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(try_number=2), produce=_write(2))
    assert [f["path"] for f in ok.manifest["outputs"]["files"]] == ["part-0.txt"]


def _race(home: str, barrier, results) -> None:
    import os

    os.environ["DLPIPE_HOME"] = home

    def produce(attempt: Path) -> dict:
        (attempt / "part-0.txt").write_text(str(os.getpid()))
        barrier.wait()  # both attempts have written their data before either commits
        return {"pid": os.getpid()}

    r = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=produce)
    results.put((os.getpid(), r.skipped, r.manifest["attempt_id"]))


def test_two_concurrent_attempts_exactly_one_commits(dlpipe_home):
    got = run_processes(_race, [(str(dlpipe_home),)] * 2, timeout=60, barrier=True)
    assert sorted(skipped for _, skipped, _ in got) == [False, True]
    assert len({attempt for _, _, attempt in got}) == 1  # both report the winner's attempt
    assert len(commit.committed(KEY)) == 1
    events = sorted(e["event"] for e in audit.read())
    assert events == ["committed", "conflict", "started", "started"]
    winner = commit.latest(KEY)
    assert commit.files(winner)[0].read_text() == str(winner["summary"]["pid"])


def test_verify_detects_a_flipped_byte():
    r = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(4))
    commit.verify(r.manifest)
    path = commit.files(r.manifest)[0]
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="modified after commit"):
        commit.verify(r.manifest)


def test_load_manifest_refuses_unknown_and_malformed_ids():
    with pytest.raises(NotCommittedError, match="no committed manifest"):
        commit.load_manifest("features/demo/dt=2026-01-01@0000000000000000")
    with pytest.raises(NotCommittedError, match="malformed"):
        commit.load_manifest("../../etc/passwd")


def test_load_manifest_takes_only_a_whole_id_of_the_expected_stage():
    run = RunContext()
    first = run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=run, produce=_write(1))
    run_stage(KEY, inputs=[], config={"n": 2}, code=CODE, run=run, produce=_write(2))
    assert commit.load_manifest(first.id) == first.manifest
    assert commit.load_manifest(first.id, stage="features", field="x") == first.manifest
    base = first.id.rsplit("@", 1)[0]
    # A template rendered short, empty or as a glob must not pick whichever commit sorts first.
    for bad in (f"{base}@", f"{base}@{first.id[-16:-8]}", f"{base}@[0-9]*", f"{base}@*", base):
        with pytest.raises(NotCommittedError, match="malformed dataset_id .*16 to 64"):
            commit.load_manifest(bad, field="dataset_id")
    with pytest.raises(ConfigError, match=r"invalid training_id=.*'training'.*'features'"):
        commit.load_manifest(first.id, stage="training", field="training_id")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_stage_key_rejects_path_tricks(bad):
    with pytest.raises(ValueError, match="invalid"):
        StageKey("features", bad)


def test_manifest_is_valid_json_with_run_identity():
    run = RunContext(dag_id="eta", run_id="manual__1", task_id="extract", try_number=3)
    r = run_stage(KEY, inputs=[], config={"a": 1}, code=CODE, run=run, produce=_write(1))
    on_disk = json.loads(next((KEY.dir() / "manifests").glob("*.json")).read_text())
    assert on_disk == r.manifest
    assert on_disk["run"]["try_number"] == 3 and on_disk["run"]["dag_id"] == "eta"
    assert on_disk["code"]["sources_hash"] == "abc" and "dlpipe_version" in on_disk["code"]


def test_a_torn_audit_line_is_skipped_with_a_warning_that_names_it(caplog):
    run = RunContext()
    audit.record("started", stage="s", run=run)
    with open(audit.settings.audit_log_path(), "a") as f:
        f.write('{"ts": "2026-01-01", "event": "comm')  # a crash mid-write
    audit.record("failed", stage="s", run=run)
    assert [e["event"] for e in audit.read()] == ["started", "failed"]
    assert "events.jsonl line 2 is not a JSON event" in caplog.text


def test_dlpipe_home_must_be_a_directory(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match="DLPIPE_HOME=.*afile.*directory"):
        audit.settings.home()
    monkeypatch.setenv("DLPIPE_HOME", "")
    monkeypatch.chdir(tmp_path)
    assert audit.settings.home() == tmp_path / ".dlpipe"  # empty means the default, as unset does
