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
    # each commit's event carries its seal: two commits of one id (a stage run again after its
    # outputs were removed) are told apart in the audit log
    events = [e for e in audit.read() if e["event"] == "committed"]
    assert [e.get("seal") for e in events[-2:]] == [a.manifest["seal"], b.manifest["seal"]]


def test_inputs_enter_the_fingerprint():
    run = RunContext()
    up1 = run_stage(StageKey("raw", "t", "p1"), inputs=[], config={}, code=CODE, run=run, produce=_write(1))
    up2 = run_stage(StageKey("raw", "t", "p2"), inputs=[], config={}, code=CODE, run=run, produce=_write(2))
    a = run_stage(KEY, inputs=[up1.manifest], config={}, code=CODE, run=run, produce=_write(1))
    b = run_stage(KEY, inputs=[up2.manifest], config={}, code=CODE, run=run, produce=_write(1))
    assert a.manifest["fingerprint"] != b.manifest["fingerprint"]
    assert a.manifest["inputs"] == [{"id": up1.id, "fingerprint": up1.manifest["fingerprint"], "seal": up1.manifest["seal"]}]
    assert a.manifest["seal"] == commit.content_seal(a.manifest)


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


def test_verify_finds_a_file_its_manifest_does_not_list():
    """A part file copied into a committed folder passed --verify, though Petastorm and Spark
    read every file of the folder."""
    r = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(4))
    root = commit.location(r.manifest)
    (root / "sub").mkdir()
    (root / "sub" / ".nfs0001").write_text("hidden: readers skip it")
    (root / "part-0.txt.crc").write_text("Spark's side file")
    commit.verify(r.manifest)
    (root / "sub" / "part-99-extra.txt").write_text("x\n")
    with pytest.raises(IntegrityError, match=r"sub/part-99-extra.txt is in its folder .* but not in its manifest"):
        commit.verify(r.manifest)


def test_a_stage_refuses_an_input_written_since_its_commit_before_it_produces():
    """A stage read its inputs' files without looking: bytes changed after a commit gave another
    output under the same id. A stat per file now, and a re-hash of a file written since the
    commit: touched but the same bytes passes, other bytes of the same size and a missing file
    fail before ``produce``, audited, with the way to commit the input again."""
    import os
    import time

    run = RunContext()
    up = run_stage(StageKey("raw", "t", "dt=2026-01-01"), inputs=[], config={}, code=CODE, run=run, produce=_write(3))
    [path] = commit.files(up.manifest)
    produced = []

    def produce(attempt: Path) -> dict:
        produced.append(attempt)
        return _write(1)(attempt)

    os.utime(path, (time.time() + 5,) * 2)  # touched: the same bytes
    run_stage(KEY, inputs=[up.manifest], config={"n": 1}, code=CODE, run=run, produce=produce)
    path.write_text("y\n" * 3)  # the same size, other bytes
    with pytest.raises(IntegrityError, match=r"raw/t/dt=2026-01-01@\w+: part-0.txt was written after its commit and "
                                             r"holds other bytes .*dlpipe ingest-raw t --day 2026-01-01 PATH"):
        run_stage(KEY, inputs=[up.manifest], config={"n": 2}, code=CODE, run=run, produce=produce)
    assert len(produced) == 1 and list(audit.read())[-1]["event"] == "failed"
    path.unlink()
    with pytest.raises(IntegrityError, match=r"part-0.txt is missing"):
        run_stage(KEY, inputs=[up.manifest], config={"n": 3}, code=CODE, run=run, produce=produce)
    assert len(produced) == 1
    assert [m["config"] for m in commit.committed(KEY)] == [{"n": 1}]
    # an input read from its manifest alone (a drift baseline's statistics) is not looked at
    run_stage(KEY, inputs=[up.manifest], config={"n": 4}, code=CODE, run=run, produce=produce, unread=(up.id,))
    assert len(produced) == 2


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
    # the versions that can change an output are recorded, outside the fingerprint
    import numpy
    import pyarrow

    packages = on_disk["code"]["packages"]
    assert packages["numpy"] == numpy.__version__ and packages["pyarrow"] == pyarrow.__version__
    assert packages["python"].count(".") == 2 and set(commit.RECORDED_PACKAGES) <= set(packages)
    assert r.manifest["fingerprint"] == commit.stage_fingerprint(KEY, [], {"a": 1}, CODE)


def test_an_image_records_the_commit_it_was_built_from(monkeypatch, tmp_path):
    """In an image dlpipe is an installed package with no checkout: the build argument
    DLPIPE_GIT_COMMIT is the commit recorded."""
    import subprocess

    commit.git_version.cache_clear()
    monkeypatch.setenv("DLPIPE_GIT_COMMIT", "0123abc")
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: real(["false"], **kw))  # not a checkout
    try:
        assert commit.git_version() == {"git_commit": "0123abc"}
    finally:
        commit.git_version.cache_clear()


def test_a_torn_audit_line_is_skipped_with_a_warning_that_names_it(caplog):
    run = RunContext()
    audit.record("started", stage="s", run=run)
    with open(audit.settings.audit_log_path(), "a") as f:
        f.write('{"ts": "2026-01-01", "event": "comm')  # a crash mid-write
    audit.record("failed", stage="s", run=run)
    assert [e["event"] for e in audit.read()] == ["started", "failed"]
    assert "events.jsonl line 2 is not a JSON event" in caplog.text
    with open(audit.settings.audit_log_path(), "a") as f:  # JSON, but not an event: readers failed on it
        f.write('{"event": "committed", "ts": "x"}\n[1, 2]\n{"ts": "x", "event": "e", "stage": "s", "run": {}}\n')
    audit.record("committed", stage="s", run=run)
    assert [e["event"] for e in audit.read()] == ["started", "failed", "committed"]
    assert "line 4 is JSON but not an event" in caplog.text and "line 6 is JSON but not an event" in caplog.text
    run_keys = '"run": {"dag_id": "d", "run_id": "r", "task_id": "t", "try_number": 1, "user": "u"}'
    with open(audit.settings.audit_log_path(), "a") as f:  # an error that is not text: `dlpipe audit` sliced it
        f.write('{"ts": "x", "event": "failed", "stage": "s", "error": 7, ' + run_keys + '}\n')
    assert [e["event"] for e in audit.read()] == ["started", "failed", "committed"]
    assert "line 8 is JSON but not an event" in caplog.text


def test_a_partial_or_failed_audit_write_leaves_whole_lines_only(monkeypatch):
    """os.write may take part of a line (a signal, a pipe-like file system), or fail half way
    (a full disk, a file-size limit): the rest is written, or the half line taken back."""
    import errno
    import os

    run = RunContext()
    audit.record("started", stage="s", run=run)
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:7])))  # 7 bytes a call
    audit.record("committed", stage="s", run=run, manifest_id="m" * 50)
    calls = []

    def full_disk(fd, data):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data[:20]))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        audit.record("failed", stage="s", run=run)
    monkeypatch.setattr(os, "write", real)
    text = audit.settings.audit_log_path().read_text()
    assert text.endswith("\n") and [e["event"] for e in audit.read()] == ["started", "committed"]
    assert next(e for e in audit.read() if e["event"] == "committed")["manifest_id"] == "m" * 50


def test_a_commit_whose_audit_event_cannot_be_written_says_it_committed_and_the_retry_records_it(monkeypatch):
    """The disk fills between the commit and its 'committed' event: the error says the data is
    committed and names the log, no 'failed' event claims otherwise, and the retry's skip names
    the attempt that committed."""
    import errno
    import os

    real = os.write

    def full_at_committed(fd, data):
        if b'"event":"committed"' in bytes(data):
            raise OSError(errno.EFBIG, "File too large")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full_at_committed)
    with pytest.raises(OSError) as exc:
        run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=RunContext(), produce=_write(1))
    monkeypatch.setattr(os, "write", real)
    manifest = commit.latest(KEY)
    message = str(exc.value)
    assert f"{manifest['id']} is committed (attempt {manifest['attempt_id']}" in message
    assert "File too large" in message and str(audit.settings.audit_log_path()) in message
    assert getattr(exc.value, "_dlpipe_audited", False)  # the operator adds no 'failed' event
    retry = run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=RunContext(), produce=_write(1))
    assert retry.skipped and retry.id == manifest["id"]
    assert [(e["event"], e.get("committed_attempt_id")) for e in audit.read()] == [
        ("started", None), ("skipped", manifest["attempt_id"])]


def test_an_event_written_from_a_signal_handler_does_not_wait_for_a_held_lock(caplog):
    """on_kill runs in Airflow's SIGTERM handler: if the code it interrupted holds the log's
    lock, waiting for it would hang the task until SIGKILL."""
    import fcntl
    import os
    import time

    run = RunContext()
    audit.record("started", stage="s", run=run)
    fd = os.open(audit.settings.audit_log_path(), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        began = time.monotonic()
        assert audit.record("failed", stage="s", run=run, lock_wait_s=0.3) is None
        assert 0.3 <= time.monotonic() - began < 3
    finally:
        os.close(fd)
    assert "failed event of s not written" in caplog.text
    assert audit.record("failed", stage="s", run=run, lock_wait_s=0.3)["event"] == "failed"
    assert [e["event"] for e in audit.read()] == ["started", "failed"]


def test_the_recorded_user_is_the_account_not_the_user_variable(monkeypatch):
    import os
    import pwd

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    assert RunContext().user == pwd.getpwuid(os.geteuid()).pw_name != "mallory"


def test_dlpipe_home_must_be_a_directory(monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "afile"))
    with pytest.raises(ConfigError, match="DLPIPE_HOME=.*afile.*directory"):
        audit.settings.home()
    monkeypatch.setenv("DLPIPE_HOME", "")
    monkeypatch.chdir(tmp_path)
    assert audit.settings.home() == tmp_path / ".dlpipe"  # empty means the default, as unset does


# -- what enters the fingerprint ---------------------------------------------------------------

def test_a_sources_hash_alone_keeps_the_fingerprint_it_always_had():
    """Every ETA stage passes ``code={"sources_hash": ...}`` alone: its fingerprints must keep
    the values they had before extra code keys entered the fingerprint (the value below was
    computed by the code before that change), or a year of partitions would be recomputed."""
    r = run_stage(KEY, inputs=[], config={"n": 3}, code=CODE, run=RunContext(), produce=_write(3))
    assert r.manifest["fingerprint"] == "a0aa5ac1ce26b87ed3cd2fa98d72fc4e9d70766a1a1bae2788154f9934d4a61b"


def test_a_library_version_recorded_beside_the_sources_hash_enters_the_fingerprint():
    """The digits stage records the scikit-learn version whose bundled images it reads: another
    version is another input, committed anew (before, only ``sources_hash`` was hashed)."""
    run = RunContext()
    old = run_stage(KEY, inputs=[], config={}, code={**CODE, "scikit_learn": "1.9.1"}, run=run, produce=_write(1))
    same = run_stage(KEY, inputs=[], config={}, code={**CODE, "scikit_learn": "1.9.1"}, run=run, produce=_write(1))
    new = run_stage(KEY, inputs=[], config={}, code={**CODE, "scikit_learn": "99.0.0"}, run=run, produce=_write(1))
    assert same.skipped and same.id == old.id
    assert not new.skipped and new.id != old.id
    assert new.manifest["code"]["scikit_learn"] == "99.0.0"


# -- a failure after the manifest was linked: the commit happened ------------------------------

def _events() -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("attempt_id")) for e in audit.read()]


def _fail_on_directory_fsync(monkeypatch, error: BaseException) -> None:
    """Fault injection: fsync of a directory (create_exclusive's last step, after the link)
    raises ``error``; file fsyncs work."""
    import os
    import stat

    from dlpipe import fsutil

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}").endswith("/manifests"):
            raise error  # the manifest's folder: after its link (the attempt's folders are synced before)
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)


def test_an_error_after_the_link_is_audited_as_the_commit_it_is(monkeypatch, caplog):
    """The directory fsync fails (EIO, injected) after os.link published the manifest: readers
    already see the commit and a retry would skip on it, so the attempt reports it committed,
    with the error in the event and a warning, instead of 'failed' and no 'committed' ever."""
    import errno

    with monkeypatch.context() as m:
        _fail_on_directory_fsync(m, OSError(errno.EIO, "Input/output error"))
        r = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(1))
    assert not r.skipped and commit.latest(KEY) == r.manifest
    attempt = r.manifest["attempt_id"]
    assert _events() == [("started", attempt), ("committed", attempt)]
    committed = list(audit.read())[-1]
    assert "Input/output error" in committed["error_after_commit"]
    assert "committed, but" in caplog.text and "Input/output error" in caplog.text
    again = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(try_number=2), produce=_write(1))
    assert again.skipped and again.manifest == r.manifest


def test_an_interrupt_after_the_link_is_audited_as_a_commit_and_still_stops_the_task(monkeypatch):
    """A task timeout or SIGTERM that lands after the link (injected as a KeyboardInterrupt from
    the directory fsync) still stops the task, but the audit log says the attempt committed."""
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        _fail_on_directory_fsync(m, KeyboardInterrupt())
        run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(1))
    attempt = commit.latest(KEY)["attempt_id"]
    assert _events() == [("started", attempt), ("committed", attempt)]


def _fail_to_remove_temp_files(monkeypatch) -> None:
    """Fault injection: removing create_exclusive's temporary file fails."""
    from dlpipe import fsutil

    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(fsutil.Path, "unlink", unlink)


def test_a_temp_file_that_cannot_be_removed_does_not_fail_a_commit(monkeypatch, caplog):
    """The link decided the outcome; the temporary file is only litter. Before, the unlink
    error was raised after the link, and the commit was audited 'failed'."""
    _fail_to_remove_temp_files(monkeypatch)
    r = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(1))
    assert not r.skipped and commit.latest(KEY) == r.manifest
    assert _events() == [("started", r.manifest["attempt_id"]), ("committed", r.manifest["attempt_id"])]
    assert "could not remove the temporary file" in caplog.text


def test_a_temp_file_that_cannot_be_removed_does_not_hide_a_lost_race(monkeypatch, tmp_path):
    """Before, the unlink error replaced the FileExistsError of a lost race: run_stage then
    audited a failure instead of reporting the winner's commit."""
    from dlpipe.fsutil import create_exclusive

    target = tmp_path / "m.json"
    create_exclusive(target, b"winner")
    _fail_to_remove_temp_files(monkeypatch)
    with pytest.raises(FileExistsError):
        create_exclusive(target, b"loser")
    assert target.read_bytes() == b"winner"


def test_a_commit_conflict_raised_by_a_stage_body_is_audited_as_a_failure():
    """Only the manifest's own link decides a conflict. A CommitConflict from the body (a store
    it writes to) met an ``assert`` that failed (or, under python -O, a TypeError) inside the
    handler, and the 'failed' event was never written."""
    from dlpipe.errors import CommitConflict

    def body(attempt: Path) -> dict:
        raise CommitConflict("s3://bucket/x already exists")

    with pytest.raises(CommitConflict, match="already exists"):
        run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=body)
    events = list(audit.read())
    assert [e["event"] for e in events] == ["started", "failed"]
    assert "CommitConflict: s3://bucket/x already exists" in events[-1]["error"]


def test_every_output_file_and_folder_is_fsynced_before_the_manifest(monkeypatch):
    """Spark and torch write without fsync. The manifest is what readers and skips trust, so
    the data it names must be on disk before it is: every file and folder of the attempt is
    fsynced before the manifest's own write. (os.fsync is wrapped to record what it syncs and
    in which order; it still syncs.)"""
    import os

    from dlpipe import fsutil

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", recording_fsync)

    def produce(attempt: Path) -> dict:
        (attempt / "train").mkdir()
        (attempt / "train" / "part-0.parquet").write_bytes(b"data")
        (attempt / "model.bin").write_bytes(b"weights")
        return {}

    result = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=produce)
    attempt = commit.location(result.manifest)
    manifest_write = next(i for i, p in enumerate(synced) if "/manifests/" in p)
    before = set(synced[:manifest_write])
    expected = {str(attempt / "train" / "part-0.parquet"), str(attempt / "model.bin"),
                str(attempt / "train"), str(attempt)}
    assert expected <= before, expected - before


@pytest.mark.parametrize("name", ["my data", "run#1", "what?", "100%", "h[1]", "caf\u00e9", "a|b"])
def test_dlpipe_home_must_be_usable_in_a_file_url(monkeypatch, tmp_path, name):
    """Training opens datasets with pyarrow's FileSystem.from_uri, which cannot parse a space;
    Petastorm cuts a path at '#': refused up front, not by the train task."""
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / name))
    with pytest.raises(ConfigError) as e:
        audit.settings.home()
    assert e.value.field == "DLPIPE_HOME" and e.value.value.endswith(name) and "file://" in e.value.fix
    assert not (tmp_path / name).exists()


def test_every_dlpipe_home_accepted_survives_a_file_url(monkeypatch, tmp_path):
    import pyarrow.fs as pafs

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "a.b_c-d+e=f,g:h@i~j"))
    home = audit.settings.home()
    assert pafs.FileSystem.from_uri(f"file://{home}/x")[1] == f"{home}/x"


def test_a_failed_attempt_leaves_its_inputs_code_and_config_in_the_audit_log():
    """No manifest records a failed try: its 'started' event must say what it ran on and with."""
    run = RunContext(dag_id="d", run_id="r", task_id="t", try_number=3)
    up = run_stage(StageKey("raw", "t", "p1"), inputs=[], config={}, code=CODE, run=run, produce=_write(1))

    def boom(attempt):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_stage(KEY, inputs=[up.manifest], config={"lr": 0.1}, code=CODE, run=run, produce=boom)
    started = [e for e in audit.read() if e["event"] == "started" and e["stage"] == KEY.stage][-1]
    assert started["inputs"] == [up.id] and started["config"] == {"lr": 0.1}
    assert started["code"]["sources_hash"] == CODE["sources_hash"] and "dlpipe_version" in started["code"]
    assert "git_commit" in started["code"] and started["run"]["try_number"] == 3


def test_a_seal_is_the_one_the_manifest_gives_when_read_back():
    """JSON keys are strings on disk: a summary keyed by numbers reorders when read back."""
    run = RunContext()
    done = run_stage(KEY, inputs=[], config={}, code=CODE, run=run,
                     produce=lambda attempt: {"by_epoch": {2: 0.5, 10: 0.4}})
    on_disk = commit.load_manifest(done.id)
    assert on_disk["seal"] == done.manifest["seal"] == commit.content_seal(on_disk)


def test_a_commit_made_by_a_clock_behind_still_sorts_newest(monkeypatch):
    """A second worker whose clock is ten minutes behind commits a correction: readers take it,
    not the version it corrects (ordered by time alone, they kept the older one)."""
    run = RunContext()
    first = commit.run_newest_version(KEY, config={"n": 1}, code=CODE, run=run, produce=_write(1))
    real_now = audit.utcnow_iso
    monkeypatch.setattr(audit, "utcnow_iso", lambda: "2000-01-01T00:00:00.000+00:00")  # far behind
    second = commit.run_newest_version(KEY, config={"n": 2}, code=CODE, run=run, produce=_write(2))
    monkeypatch.setattr(audit, "utcnow_iso", real_now)
    assert second.manifest["committed_at"] < first.manifest["committed_at"]
    assert second.manifest["config"]["replaces"] == first.id
    assert commit.latest(KEY)["id"] == second.id
    assert [m["commit_seq"] for m in commit.committed(KEY)] == [1, 2]
    # run again on the correct clock: the newest already has these settings, nothing is committed
    again = commit.run_newest_version(KEY, config={"n": 2}, code=CODE, run=run, produce=_write(2))
    assert again.skipped and again.id == second.id


def test_manifests_from_before_commit_seq_sort_first_by_time(tmp_path):
    run = RunContext()
    a = run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=run, produce=_write(1))
    path = commit._manifest_path(KEY, a.manifest["fingerprint"])
    old = json.loads(path.read_text())
    del old["commit_seq"]  # as committed by an earlier release (the seal is not checked here)
    path.write_text(json.dumps(old))
    b = run_stage(KEY, inputs=[], config={"n": 2}, code=CODE, run=run, produce=_write(2))
    assert b.manifest["commit_seq"] == 1
    assert [m["id"] for m in commit.committed(KEY)] == [a.id, b.id]
    # an older dlpipe, still running after the upgrade, commits a correction: it has no commit_seq,
    # and readers took the numbered version over it (counted as 0, it sorted first for ever)
    c = run_stage(KEY, inputs=[], config={"n": 3}, code=CODE, run=run, produce=_write(3))
    path = commit._manifest_path(KEY, c.manifest["fingerprint"])
    later = json.loads(path.read_text())
    del later["commit_seq"]
    path.write_text(json.dumps(later))
    assert [m["id"] for m in commit.committed(KEY)] == [a.id, b.id, c.id]
    assert commit.latest(KEY)["id"] == c.id
    d = run_stage(KEY, inputs=[], config={"n": 4}, code=CODE, run=run, produce=_write(4))
    assert d.manifest["commit_seq"] == 2 and commit.latest(KEY)["id"] == d.id


def test_a_manifest_written_by_a_newer_dlpipe_is_refused_not_misread():
    from dlpipe.errors import NewerFormatError

    done = run_stage(KEY, inputs=[], config={}, code=CODE, run=RunContext(), produce=_write(1))
    assert done.manifest["manifest_version"] == commit.MANIFEST_VERSION
    path = commit._manifest_path(KEY, done.manifest["fingerprint"])
    path.write_text(json.dumps({**done.manifest, "manifest_version": commit.MANIFEST_VERSION + 1}))
    with pytest.raises(NewerFormatError, match=r"written by a newer dlpipe \(manifest_version 3; this one reads up to 2\)"):
        commit.latest(KEY)
    with pytest.raises(NewerFormatError):
        commit.load_manifest(done.id)


@pytest.mark.parametrize("content", ["", '{"id": "x", "truncat', "[1, 2]", "\xff\xfe"])
def test_a_damaged_manifest_is_named_by_every_reader(content):
    run = RunContext()
    a = run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=run, produce=_write(1))
    path = commit._manifest_path(KEY, a.manifest["fingerprint"])
    path.write_bytes(content.encode("latin-1"))
    for read in (lambda: commit.load_manifest(a.id), lambda: commit.committed(KEY), lambda: commit.latest(KEY),
                 lambda: run_stage(KEY, inputs=[], config={"n": 1}, code=CODE, run=run, produce=_write(1))):
        with pytest.raises(IntegrityError) as exc:
            read()
        assert str(path) in str(exc.value) and "move it out of manifests/" in str(exc.value)


def test_a_writer_waiting_for_a_partition_says_who_holds_it(caplog):
    """A stopped writer holds the partition's lock until it ends; the next one waited in
    silence, even with -v. It now names the holder (pid, host, since when) and goes on once the
    lock is free."""
    import os
    import threading

    release, holding = threading.Event(), threading.Event()

    def slow(attempt: Path) -> dict:
        holding.set()
        release.wait(30)
        return _write(1)(attempt)

    first = threading.Thread(target=commit.run_newest_version, args=(KEY,),
                             kwargs=dict(config={"n": 1}, code=CODE, run=RunContext(), produce=slow))
    first.start()
    assert holding.wait(30)
    results = []
    second = threading.Thread(target=lambda: results.append(commit.run_newest_version(
        KEY, config={"n": 2}, code=CODE, run=RunContext(), produce=_write(2))))
    with caplog.at_level("WARNING", logger="dlpipe.commit"):
        second.start()
        for _ in range(300):
            if "waiting for" in caplog.text:
                break
            threading.Event().wait(0.05)
        release.set()
        first.join(30)
        second.join(30)
    assert f"{KEY.relpath}: waiting for pid {os.getpid()} on " in caplog.text and ".newest.lock" in caplog.text
    assert results[0].manifest["config"]["replaces"] == commit.committed(KEY)[0]["id"]


def test_each_audit_event_links_to_the_line_before_and_verify_finds_a_line_changed_removed_or_inserted():
    run = RunContext()
    path = audit.settings.audit_log_path()
    path.parent.mkdir(parents=True)
    path.write_text('{"ts": "x", "event": "started", "stage": "old"}\n')  # written before events were linked
    for i in range(4):
        audit.record("started", stage=f"s{i}", run=run)
    with open(path, "a") as f:
        f.write('{"ts": "2026-01-01", "event": "comm')  # a crash mid-write: the next event links to it
    audit.record("failed", stage="s4", run=run)
    assert audit.verify(path) == (5, 1, [])
    good = path.read_text()
    lines = good.splitlines(keepends=True)

    path.write_text("".join(lines[:2] + lines[3:]))  # an event removed
    assert audit.verify(path)[2] == ["line 3 does not link to line 2: a line between them was changed, "
                                     "removed or inserted"]
    path.write_text(good.replace('"stage":"s2"', '"stage":"s9"'))  # an event edited
    assert audit.verify(path)[2] == ["line 5 does not link to line 4: a line between them was changed, "
                                     "removed or inserted"]
    path.write_text("".join(lines[:3] + ['{"ts": "x", "event": "committed", "stage": "s"}\n'] + lines[3:]))
    problems = audit.verify(path)[2]  # a line inserted by hand: no link of its own, and the next one's is wrong
    assert problems[0].startswith("line 4 has no link") and problems[1].startswith("line 5 does not link to line 4")
    path.write_text("".join(lines[2:]))  # the start cut off
    assert audit.verify(path)[2][0] == "line 1 links to a line before it: the start of the log was removed"


def test_a_partition_computed_again_says_what_differs_from_its_newest_version(caplog):
    """After an upgrade every stage recomputed and the log said only 'attempt ... writing to'."""
    import logging

    caplog.set_level(logging.INFO, logger="dlpipe.commit")
    run = RunContext()
    first = run_stage(KEY, inputs=[], config={"n": 1, "k": 2}, code=CODE, run=run, produce=_write(1))
    assert "computed anew" not in caplog.text  # the partition's first version
    run_stage(KEY, inputs=[], config={"n": 2, "k": 2}, code={"sources_hash": "f" * 64}, run=run, produce=_write(2))
    assert (f"computed anew: its newest version {first.id} differs in the code (sources hash "
            f"{CODE['sources_hash'][:12]} -> ffffffffffff); the config (n)") in caplog.text
