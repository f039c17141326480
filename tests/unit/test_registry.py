"""Registry: immutable versions, idempotent re-registration, races, integrity; local and S3."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from dlpipe import registry
from dlpipe.errors import AliasConflict, CommitConflict, ConfigError, IntegrityError, NotCommittedError
from dlpipe.runctx import RunContext
from tests.conftest import run_processes
from dlpipe.storage import LocalStore, open_store


def _model(tmp: Path, payload: bytes) -> Path:
    d = tmp / uuid.uuid4().hex
    d.mkdir()
    (d / "model.safetensors").write_bytes(payload)
    (d / "metrics.json").write_text('{"val_mae": 1.0}')
    return d


def test_register_is_idempotent_and_versions_are_immutable(store, tmp_path):
    run = RunContext(dag_id="d", run_id="r")
    m1 = _model(tmp_path, b"weights-1")
    rec1, created1 = registry.register(store, "eta", m1, metrics={"val_mae": 1.0},
                                       lineage={"dataset": "ds1"}, run=run)
    rec1b, created1b = registry.register(store, "eta", _model(tmp_path, b"weights-1"),
                                         metrics={"val_mae": 1.0}, lineage={"dataset": "ds1"}, run=run)
    rec2, created2 = registry.register(store, "eta", _model(tmp_path, b"weights-2"),
                                       metrics={"val_mae": 0.9}, lineage={"dataset": "ds2"}, run=run)
    assert (rec1["version"], created1) == (1, True)
    assert (rec1b["version"], created1b) == (1, False)
    assert (rec2["version"], created2) == (2, True)
    assert [r["version"] for r in registry.list_versions(store, "eta")] == [1, 2]
    # the same artifacts with different lineage are a different model version
    rec3, created3 = registry.register(store, "eta", _model(tmp_path, b"weights-1"),
                                       metrics={}, lineage={"dataset": "other"}, run=run)
    assert (rec3["version"], created3) == (3, True)
    with pytest.raises(CommitConflict):  # a version record can never be rewritten
        store.put_new("eta/versions/000001.json", b"{}")


def test_download_verifies_hashes_and_refuses_tampered_blobs(store, tmp_path):
    rec, _ = registry.register(store, "eta", _model(tmp_path, b"weights"), metrics={}, lineage={},
                               run=RunContext())
    out = tmp_path / "dl"
    registry.download(store, "eta", 1, out)
    assert (out / "model.safetensors").read_bytes() == b"weights"
    sha = next(a["sha256"] for a in rec["artifacts"] if a["name"] == "model.safetensors")
    if isinstance(store, LocalStore):
        (store.root / "eta" / "blobs" / sha).write_bytes(b"weightz")
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(f"eta/blobs/{sha}"), Body=b"weightz")
    with pytest.raises(IntegrityError, match="modified"):
        registry.download(store, "eta", 1, tmp_path / "dl2")
    # A failed download (of the version the directory holds part of) changes nothing already
    # in the directory, and leaves no staging behind.
    (tmp_path / "dl3").mkdir()
    (tmp_path / "dl3" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(IntegrityError, match="nothing in .* was changed"):
        registry.download(store, "eta", 1, tmp_path / "dl3")
    assert [p.name for p in (tmp_path / "dl3").iterdir()] == ["model.safetensors"]
    assert (tmp_path / "dl3" / "model.safetensors").read_bytes() == b"weights"


def test_download_and_register_refuse_paths_of_the_wrong_kind(store, tmp_path):
    registry.register(store, "eta", _model(tmp_path, b"weights"), metrics={}, lineage={}, run=RunContext())
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="dest=.*afile.*not a file"):
        registry.download(store, "eta", 1, tmp_path / "afile")
    with pytest.raises(ConfigError, match="model_dir=.*nowhere.*existing directory"):
        registry.register(store, "eta", tmp_path / "nowhere", metrics={}, lineage={}, run=RunContext())


def _register_one(root: str, i: int, results) -> None:
    tmp = Path(root).parent / f"src-{i}"
    tmp.mkdir()
    (tmp / "model.bin").write_bytes(f"model-{i}".encode())
    rec, created = registry.register(LocalStore(root), "eta", tmp, metrics={}, lineage={"i": i},
                                     run=RunContext())
    results.put((i, rec["version"], created))


def test_concurrent_registrations_get_unique_versions(tmp_path):
    root = str(tmp_path / "registry")
    got = run_processes(_register_one, [(root, i) for i in range(8)], timeout=120)
    assert sorted(v for _, v, _ in got) == list(range(1, 9))
    assert all(created for _, _, created in got)
    store = LocalStore(root)
    for rec in registry.list_versions(store, "eta"):
        registry.download(store, "eta", rec["version"], tmp_path / f"check-{rec['version']}")


def test_bad_names_and_refs_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="model name"):
        registry.register(LocalStore(tmp_path), "../evil", tmp_path, metrics={}, lineage={}, run=RunContext())
    with pytest.raises(ConfigError, match="NAME@VERSION"):
        registry.parse_ref("eta")
    with pytest.raises(NotCommittedError, match="not registered"):
        registry.get_version(LocalStore(tmp_path), "eta", 7)
    with pytest.raises(ConfigError, match="s3://"):
        open_store("gs://bucket/x")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="registry root=.*a-file.*not a file"):
        open_store(str(tmp_path / "a-file"))  # it used to list as an empty registry


def test_a_file_changed_since_its_commit_is_refused(store, tmp_path):
    """committed_files comes from a committed manifest; the bytes actually sent must match it."""
    from dlpipe.hashing import sha256_bytes

    d = _model(tmp_path, b"weights as committed")
    committed = {"model.safetensors": {"sha256": sha256_bytes(b"weights as committed")},
                 "metrics.json": {"sha256": sha256_bytes(b'{"val_mae": 1.0}')}}
    (d / "model.safetensors").write_bytes(b"weights tampered with")
    with pytest.raises(IntegrityError, match="changed after it was hashed"):
        registry.register(store, "eta", d, metrics={}, lineage={}, run=RunContext(), committed_files=committed)
    assert registry.list_versions(store, "eta") == []


def _versions_by_day(store, tmp_path, days: list[str]) -> dict[str, int]:
    """Register one model per dataset day, in the given order (a backfill registers late)."""
    out = {}
    for day in days:
        rec, _ = registry.register(store, "eta", _model(tmp_path, day.encode()), metrics={},
                                   lineage={"dataset": f"datasets/eta/window_end={day}@abc"}, run=RunContext())
        out[day] = rec["version"]
    return out


def test_promote_forward_never_moves_an_alias_back_to_older_data(store, tmp_path):
    v = _versions_by_day(store, tmp_path, ["2026-01-03", "2026-01-02"])  # 01-02 backfilled later: v2
    doc, moved = registry.promote_forward(store, "eta", "staging", v["2026-01-03"], run=RunContext())
    assert moved and doc["version"] == v["2026-01-03"]
    doc, moved = registry.promote_forward(store, "eta", "staging", v["2026-01-02"], run=RunContext())
    assert not moved and doc["version"] == v["2026-01-03"]  # newer version number, older data
    doc, moved = registry.promote_forward(store, "eta", "staging", v["2026-01-03"], run=RunContext())
    assert not moved and len(registry.get_alias(store, "eta", "staging")["history"]) == 1
    newer = _versions_by_day(store, tmp_path, ["2026-01-04"])["2026-01-04"]
    doc, moved = registry.promote_forward(store, "eta", "staging", newer, run=RunContext())
    assert moved and doc["history"][-1]["from_version"] == v["2026-01-03"]


class _MovedAfterFirstRead:
    """A store whose alias is set by another run right after our first read of it: the
    interleaving that a race on an alias not yet set needs, forced instead of hoped for."""

    def __init__(self, inner, competitor) -> None:
        self.inner, self.competitor, self.fired = inner, competitor, False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def get_versioned(self, key: str):
        found = self.inner.get_versioned(key)
        if "/aliases/" in key and not self.fired:
            self.fired = True
            self.competitor()
        return found


def test_a_forward_promotion_racing_on_an_unset_alias_keeps_the_newer_data(store, tmp_path):
    v = _versions_by_day(store, tmp_path, ["2026-01-02", "2026-01-03"])
    newer_first = lambda: registry.promote_forward(store, "eta", "staging", v["2026-01-03"], run=RunContext(run_id="B"))
    doc, moved = registry.promote_forward(_MovedAfterFirstRead(store, newer_first), "eta", "staging",
                                          v["2026-01-02"], run=RunContext(run_id="A"))
    assert not moved and doc["version"] == v["2026-01-03"]
    history = registry.get_alias(store, "eta", "staging")["history"]
    assert [(h["to_version"], h["by"]["run_id"]) for h in history] == [(v["2026-01-03"], "B")]
    with pytest.raises(AliasConflict, match="not unset as expected"):
        registry.promote(store, "eta", "staging", v["2026-01-02"], run=RunContext(), expect_unset=True)


def _promote_one(root: str, version: int, alias: str, barrier, results) -> None:
    barrier.wait()
    doc, moved = registry.promote_forward(LocalStore(root), "eta", alias, version, run=RunContext())
    results.put((version, doc["version"], moved))


def test_concurrent_forward_promotions_end_at_the_newest_data(tmp_path):
    root = tmp_path / "registry"
    v = _versions_by_day(LocalStore(root), tmp_path, ["2026-01-02", "2026-01-03"])
    for alias in ("a", "b", "c"):  # a forced race, a few times: the outcome must not depend on who wins
        run_processes(_promote_one, [(str(root), v["2026-01-03"], alias), (str(root), v["2026-01-02"], alias)],
                      timeout=60, barrier=True)
        assert registry.get_alias(LocalStore(root), "eta", alias)["version"] == v["2026-01-03"]


class _ReplyLostThenMovedAgain:
    """A store whose compare-and-swap writes, then loses its reply while another writer moves
    the alias once more, so that the client's repeat is refused: what S3 and boto3's retry can
    do. The writes themselves are the real store's."""

    def __init__(self, inner, other_version: int) -> None:
        self.inner, self.other_version, self.uri = inner, other_version, inner.uri

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_if_match(self, key, data, token):
        self.inner.put_if_match(key, data, token)
        registry.promote(self.inner, "eta", "production", self.other_version, run=RunContext(run_id="other"))
        raise CommitConflict(f"{key} changed since it was read")


def test_a_move_whose_reply_was_lost_counts_even_after_another_move(store, tmp_path):
    from dlpipe import audit

    run = RunContext(dag_id="d", run_id="ours")
    for i in (1, 2):
        registry.register(store, "eta", _model(tmp_path, b"w%d" % i), metrics={}, lineage={"i": i}, run=run)
    doc = registry.promote(_ReplyLostThenMovedAgain(store, other_version=2), "eta", "production", 1, run=run)
    assert doc["version"] == 1  # our move happened, and is reported as such
    history = registry.get_alias(store, "eta", "production")["history"]
    assert [(m["to_version"], m["run_id"]) for m in history] == [(1, "ours"), (2, "other")]
    assert [(e["event"], e["run"]["run_id"]) for e in audit.read() if e["stage"] == "alias"] == [
        ("committed", "other"), ("committed", "ours")]


def _tamper(store, key: str, data: bytes) -> None:
    """Replace a stored object's bytes, the way bit rot or a stray copy would."""
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(data)
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=data)


def test_a_damaged_blob_is_stored_again_not_reused_by_a_new_version(store, tmp_path):
    """A later version with the same file reuses its content-addressed blob only while the blob
    still verifies; a damaged one is uploaded again, so the new version downloads."""
    rec1, _ = registry.register(store, "eta", _model(tmp_path, b"good weights"), metrics={},
                                lineage={"run": 1}, run=RunContext())
    sha = next(a["sha256"] for a in rec1["artifacts"] if a["name"] == "model.safetensors")
    _tamper(store, f"eta/blobs/{sha}", b"bit-rotted")
    rec2, created = registry.register(store, "eta", _model(tmp_path, b"good weights"), metrics={},
                                      lineage={"run": 2}, run=RunContext())
    assert created and rec2["version"] == 2
    registry.download(store, "eta", 2, tmp_path / "dl")
    assert (tmp_path / "dl" / "model.safetensors").read_bytes() == b"good weights"
    registry.download(store, "eta", 1, tmp_path / "dl1")  # the blob is shared: version 1 is whole again


def test_files_in_subfolders_are_registered_and_downloaded_in_place(store, tmp_path):
    model = _model(tmp_path, b"weights")
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "vocab.json").write_text('{"a": 1}')
    (model / ".cache").mkdir()
    (model / ".cache" / "junk").write_text("not a model file")
    rec, _ = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert [a["name"] for a in rec["artifacts"]] == ["metrics.json", "model.safetensors", "tokenizer/vocab.json"]
    registry.download(store, "eta", 1, tmp_path / "dl")
    got = sorted(p.relative_to(tmp_path / "dl").as_posix() for p in (tmp_path / "dl").rglob("*") if p.is_file())
    assert got == ["metrics.json", "model.safetensors", "tokenizer/vocab.json"]
    assert (tmp_path / "dl" / "tokenizer" / "vocab.json").read_text() == '{"a": 1}'


@pytest.mark.parametrize("name", ["../../outside.sh", "/etc/cron.d/x", "a/../../x", ".hidden", "a//b", "a\\..\\b"])
def test_a_record_naming_a_path_outside_the_destination_is_refused(tmp_path, name):
    """A version record is data from storage; whoever can write the bucket can write one. An
    artifact name that would leave the destination is refused before anything is written."""
    import hashlib
    import json

    store = LocalStore(tmp_path / "reg")
    rec, _ = registry.register(store, "eta", _model(tmp_path, b"weights"), metrics={}, lineage={}, run=RunContext())
    payload = b"echo pwned\n"
    sha = hashlib.sha256(payload).hexdigest()
    (tmp_path / "reg" / "eta" / "blobs" / sha).write_bytes(payload)
    rec["artifacts"].append({"name": name, "sha256": sha, "size": len(payload)})
    # its fingerprint recomputed too (anyone can): the name check must stand on its own
    rec["model_fingerprint"] = registry.model_identity(rec["artifacts"], rec["lineage"])
    (tmp_path / "reg" / "eta" / "versions" / "000001.json").write_text(json.dumps(rec))
    dest = tmp_path / "deploy" / "eta"
    with pytest.raises(IntegrityError, match="not a relative path inside the model directory"):
        registry.download(store, "eta", 1, dest)
    assert not list(tmp_path.rglob("outside.sh")) and not any(dest.iterdir())


def test_a_rollback_refuses_an_alias_moved_away_and_back_since_it_was_read(tmp_path, monkeypatch):
    """rollback undoes the latest move it read. If the alias moved 2 -> 3 -> 2 in between, it
    points at the same version, but the latest move is another one: rolling back then would
    undo the wrong move, so it is refused."""
    store, run = LocalStore(tmp_path / "reg"), RunContext(run_id="r")
    for v in (1, 2, 3):
        registry.register(store, "eta", _model(tmp_path, bytes([v])), metrics={}, lineage={"v": v}, run=run)
    registry.promote(store, "eta", "production", 1, run=run)
    registry.promote(store, "eta", "production", 2, run=run)
    read = registry.get_alias

    def read_then_others_move(store_, name, alias):
        doc = read(store_, name, alias)
        monkeypatch.setattr(registry, "get_alias", read)
        registry.promote(store, "eta", "production", 3, run=RunContext(run_id="B"))
        registry.promote(store, "eta", "production", 2, run=RunContext(run_id="C"))
        return doc

    monkeypatch.setattr(registry, "get_alias", read_then_others_move)
    with pytest.raises(AliasConflict, match="has moved 2 time"):
        registry.rollback(store, "eta", "production", run=RunContext(run_id="A"), reason="undo 2")
    history = read(store, "eta", "production")["history"]
    assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2), (2, 3), (3, 2)]


def test_a_symbolic_link_in_a_model_directory_is_refused(tmp_path):
    """Registering follows nothing out of the model directory: a link's bytes (a credentials
    file, say) would be stored as an artifact."""
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key=TOPSECRET")
    model = _model(tmp_path, b"weights")
    (model / "tokenizer.txt").symlink_to(secret)
    store = LocalStore(tmp_path / "reg")
    with pytest.raises(ConfigError, match=r"tokenizer.txt.*a symbolic link"):
        registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert registry.list_versions(store, "eta") == []


def test_a_training_registers_exactly_the_files_its_manifest_commits(dlpipe_home, tmp_path):
    """A file added to a committed training folder afterwards (or a link planted there) is not
    registered: readers only open files a manifest lists."""
    from dlpipe import commit

    def train(attempt: Path) -> dict:
        (attempt / "model").mkdir()
        (attempt / "model" / "model.safetensors").write_bytes(b"weights")
        return {"model_dir": "model", "metrics": {}}

    training = commit.run_stage(commit.StageKey("training", "eta", "window_end=2026-01-03"), inputs=[], config={},
                                code={"sources_hash": "t"}, run=RunContext(), produce=train).manifest
    model = commit.location(training) / "model"
    (model / "extra.txt").write_text("added after the commit")
    committed = {f["path"].split("/", 1)[1]: f for f in training["outputs"]["files"]}
    rec, _ = registry.register(LocalStore(tmp_path / "reg"), "eta", model, metrics={}, lineage={}, run=RunContext(),
                               committed_files=committed)
    assert [a["name"] for a in rec["artifacts"]] == ["model.safetensors"]


def test_a_stage_output_that_is_a_symbolic_link_is_not_committed(dlpipe_home, tmp_path):
    from dlpipe import commit

    def produce(attempt: Path) -> dict:
        (attempt / "data.bin").symlink_to(tmp_path / "elsewhere")
        return {}

    with pytest.raises(IntegrityError, match="data.bin is a symbolic link"):
        commit.run_stage(commit.StageKey("training", "eta", "window_end=2026-01-04"), inputs=[], config={},
                         code={"sources_hash": "t"}, run=RunContext(), produce=produce)


def test_a_file_name_download_could_not_place_is_refused_at_registration(tmp_path):
    model = _model(tmp_path, b"weights")
    (model / "a\\b").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"a file name with '\\' in it"):
        registry.register(LocalStore(tmp_path / "reg"), "eta", model, metrics={}, lineage={}, run=RunContext())


def test_a_registration_that_loses_the_race_to_the_same_model_is_audited(store, tmp_path, monkeypatch):
    """The same model registered meanwhile by another attempt: the version it got is in the
    audit log, or `dlpipe summary` shows the task as missing."""
    from dlpipe import audit

    model = _model(tmp_path, b"weights")
    winner, _ = registry.register(store, "eta", model, metrics={}, lineage={"run": 1}, run=RunContext())
    real, looks = registry._find_same, []

    def before_the_winner_on_the_first_look(store, name, identity):
        looks.append(1)
        return (None, 0) if len(looks) == 1 else real(store, name, identity)

    monkeypatch.setattr(registry, "_find_same", before_the_winner_on_the_first_look)
    before = len(list(audit.read()))
    rec, created = registry.register(store, "eta", model, metrics={}, lineage={"run": 1},
                                     run=RunContext(task_id="register_model"))
    assert (rec["version"], created) == (winner["version"], False)
    events = list(audit.read())[before:]
    assert [(e["event"], e["manifest_id"], e["run"]["task_id"]) for e in events] == [
        ("skipped", "eta@1", "register_model")]
    assert "concurrent registration" in events[0]["reason"]


def test_a_deleted_versions_number_is_never_given_to_another_model(store, tmp_path):
    """operations.md: a deleted record leaves a tombstone, so eta@2 always means one model."""
    run = RunContext(dag_id="d", run_id="r")
    for payload in (b"m1", b"m2"):
        registry.register(store, "eta", _model(tmp_path, payload), metrics={}, lineage={}, run=run)
    record = store.get("eta/versions/000002.json")
    store.put_new("eta/versions/000002.deleted", record)  # the documented delete: tombstone first
    if isinstance(store, LocalStore):
        (store.root / "eta/versions/000002.json").unlink()
    else:
        store.client.delete_object(Bucket=store.bucket, Key=store._key("eta/versions/000002.json"))
    rec3, created = registry.register(store, "eta", _model(tmp_path, b"m3"), metrics={}, lineage={}, run=run)
    assert (rec3["version"], created) == (3, True)
    assert [r["version"] for r in registry.list_versions(store, "eta")] == [1, 3]
    with pytest.raises(NotCommittedError, match="eta@2 was deleted from"):
        registry.get_version(store, "eta", 2)


def test_a_local_registration_and_download_stream_large_files(tmp_path):
    """A model larger than a worker's memory must register: the local store copies in chunks."""
    import tracemalloc

    store = LocalStore(tmp_path / "registry")
    model = tmp_path / "big"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as f:
        for _ in range(12):
            f.write(uuid.uuid4().bytes * (1 << 18))  # 12 x 4 MiB
    tracemalloc.start()
    try:
        registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
        registry.download(store, "eta", 1, tmp_path / "dl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (tmp_path / "dl/model.safetensors").stat().st_size == 48 << 20
    assert peak < 24 << 20, f"peak Python allocation {peak >> 20} MiB for a 48 MiB model"


def test_a_download_refuses_a_directory_holding_another_versions_files(store, tmp_path):
    run = RunContext()
    v1 = _model(tmp_path, b"w1")
    (v1 / "tokenizer.json").write_text("{}")
    registry.register(store, "eta", v1, metrics={}, lineage={}, run=run)
    registry.register(store, "eta", _model(tmp_path, b"w2"), metrics={}, lineage={}, run=run)
    out = tmp_path / "dl"
    registry.download(store, "eta", 1, out)
    registry.download(store, "eta", 1, out)  # the same version again: nothing extra, allowed
    with pytest.raises(ConfigError, match=r"invalid dest=.*holds files that eta@2 does not have \(tokenizer.json\)"):
        registry.download(store, "eta", 2, out)
    assert (out / "model.safetensors").read_bytes() == b"w1"  # nothing changed
    registry.download(store, "eta", 2, tmp_path / "dl2")
    assert sorted(p.name for p in (tmp_path / "dl2").iterdir()) == ["metrics.json", "model.safetensors"]
    # the same names with eta@3's bytes: replacing them one by one, a stop half way mixed two models
    registry.register(store, "eta", _model(tmp_path, b"w3"), metrics={}, lineage={}, run=run)
    with pytest.raises(ConfigError, match=r"holds other bytes under eta@3's file names \(model.safetensors\)"):
        registry.download(store, "eta", 3, tmp_path / "dl2")
    assert (tmp_path / "dl2" / "model.safetensors").read_bytes() == b"w2"


def test_a_concurrent_move_conflict_names_who_moved_the_alias(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "registry")
    for payload in (b"a", b"b", b"c"):
        registry.register(store, "eta", _model(tmp_path, payload), metrics={}, lineage={}, run=RunContext())
    registry.promote(store, "eta", "production", 1, run=RunContext(), reason="first")
    read = store.get_versioned

    def moved_meanwhile(key):  # the other writer moves the alias between our read and our write
        found = read(key)
        monkeypatch.setattr(store, "get_versioned", read)
        registry.promote(store, "eta", "production", 3, reason="theirs",
                         run=RunContext(dag_id="eta_training", task_id="promote_staging", triggered_by="alice"))
        return found

    monkeypatch.setattr(store, "get_versioned", moved_meanwhile)
    with pytest.raises(AliasConflict, match=r"now version 3, by eta_training.promote_staging \(alice\) at 20"):
        registry.promote(store, "eta", "production", 2, run=RunContext(), reason="ours")


class _CountingStore:
    """A real store that counts the version records read."""

    def __init__(self, inner) -> None:
        self.inner, self.uri, self.record_reads = inner, inner.uri, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get(self, key):
        self.record_reads += "/versions/" in key
        return self.inner.get(key)


def test_a_registration_finds_an_identical_model_without_reading_every_record(store, tmp_path):
    """An index key per version names the model it holds; records are read only where it
    points, or where it has no entry yet (written before the index, or by a registration that
    stopped between its record and its entry), and those get one."""
    run = RunContext()
    for i in range(12):
        registry.register(store, "eta", _model(tmp_path, b"w%d" % i), metrics={}, lineage={"i": i}, run=run)
    counting = _CountingStore(store)
    rec, created = registry.register(counting, "eta", _model(tmp_path, b"w3"), metrics={}, lineage={"i": 3}, run=run)
    assert (rec["version"], created, counting.record_reads) == (4, False, 1)
    counting.record_reads = 0
    rec, created = registry.register(counting, "eta", _model(tmp_path, b"new"), metrics={}, lineage={}, run=run)
    assert (rec["version"], created, counting.record_reads) == (13, True, 0)

    # a registry from before the index: every record is read once, and indexed
    for key in [k for k in store.list("eta/identities/")]:
        if isinstance(store, LocalStore):
            (store.root / key).unlink()
        else:
            store.client.delete_object(Bucket=store.bucket, Key=store._key(key))
    counting.record_reads = 0
    rec, created = registry.register(counting, "eta", _model(tmp_path, b"w11"), metrics={}, lineage={"i": 11},
                                     run=run)
    assert (rec["version"], created, counting.record_reads) == (12, False, 12)  # read up to its match
    counting.record_reads = 0
    rec, created = registry.register(counting, "eta", _model(tmp_path, b"w0"), metrics={}, lineage={"i": 0}, run=run)
    assert (rec["version"], created, counting.record_reads) == (1, False, 1)


def test_a_failed_index_write_does_not_fail_a_stored_version(tmp_path, monkeypatch, caplog):
    store = LocalStore(tmp_path / "registry")
    real = store.put_new

    def index_fails(key, data):
        if "/identities/" in key:
            raise OSError("disk went away")
        return real(key, data)

    monkeypatch.setattr(store, "put_new", index_fails)
    rec, created = registry.register(store, "eta", _model(tmp_path, b"w"), metrics={}, lineage={}, run=RunContext())
    assert (rec["version"], created) == (1, True) and "could not write its index entry" in caplog.text
    monkeypatch.setattr(store, "put_new", real)
    rec, created = registry.register(store, "eta", _model(tmp_path, b"w"), metrics={}, lineage={}, run=RunContext())
    assert (rec["version"], created) == (1, False)  # found without the entry, and indexed now
    assert store.list("eta/identities/")


def test_a_bad_model_name_is_a_config_error_not_a_damaged_record(tmp_path):
    with pytest.raises(ConfigError, match="model name"):
        registry.get_version(LocalStore(tmp_path / "registry"), "Bad Name", 1)
    (tmp_path / "registry/eta/versions").mkdir(parents=True)
    (tmp_path / "registry/eta/versions/000001.json").write_text('{"name": "eta", "vers')
    with pytest.raises(IntegrityError, match="eta@1: its version record .* is not readable"):
        registry.get_version(LocalStore(tmp_path / "registry"), "eta", 1)


def test_one_damaged_record_neither_hides_the_others_nor_stops_a_registration(tmp_path, capsys, monkeypatch):
    """A torn record of eta@1: `registry list` still lists fraud@1 (and names the damage, exit
    1), another model registers, and eta itself registers again as a new version, since the
    damaged one can be neither verified nor loaded."""
    from dlpipe import cli

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "home"))
    store = LocalStore(tmp_path / "registry")
    registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={}, run=RunContext())
    registry.register(store, "fraud", _model(tmp_path, b"f1"), metrics={}, lineage={}, run=RunContext())
    (tmp_path / "registry/eta/versions/000001.json").write_text('{"name": "eta", "vers')
    code = cli.main(["registry", "list", "--root", str(tmp_path / "registry")])
    out, err = capsys.readouterr()
    assert code == 1 and "fraud@1" in out and "eta@1" not in out
    assert "damaged: eta@1: its version record in" in err and "000001.json) is not readable" in err
    rec, created = registry.register(store, "fraud", _model(tmp_path, b"f2"), metrics={}, lineage={}, run=RunContext())
    assert (rec["version"], created) == (2, True)
    rec, created = registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={}, run=RunContext())
    assert (rec["version"], created) == (2, True)
    code = cli.main(["registry", "register", "other", str(_model(tmp_path, b"o")), "--root", str(tmp_path / "registry")])
    assert code == 0 and "other@1 registered" in capsys.readouterr().out


def test_openlineage_names_say_where_the_data_lives(tmp_path):
    """Two deployments, or a local and an S3 registry, never report the same dataset name."""
    from dlpipe.lineage import openlineage_dataset

    home = tmp_path / "home"
    assert openlineage_dataset("features/eta/dt=2026-01-03@ab12", home=home, registry_uri="s3://b/p") == (
        "file", f"{home}/features/eta/dt=2026-01-03", "ab12")
    assert openlineage_dataset("eta@3", home=home, registry_uri="s3://ml-models/teams/eta-reg/") == (
        "s3://ml-models", "teams/eta-reg/eta", "3")
    assert openlineage_dataset("eta:staging", home=home, registry_uri="s3://ml-models") == (
        "s3://ml-models", "eta:staging", None)
    assert openlineage_dataset("eta@3", home=home, registry_uri=str(tmp_path / "reg")) == (
        "file", f"{tmp_path.resolve()}/reg/eta", "3")
    assert openlineage_dataset("eta@3", home=home, registry_uri=f"file://{tmp_path}/reg") == (
        "file", f"{tmp_path.resolve()}/reg/eta", "3")


def test_an_aws_connection_that_does_not_exist_is_named_not_replaced_by_boto3s_chain(monkeypatch):
    """The Amazon provider's hook only warns about a missing connection and goes on with boto3's
    own credentials (an instance role: another account); the task stops instead."""
    pytest.importorskip("airflow.providers.amazon")
    from operators.registry import registry_store

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_S3_OK", json.dumps({
        "conn_type": "aws", "login": "AKIAOK", "password": "not-shown",
        "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}}))
    assert registry_store("s3://models/reg", "dlpipe_s3_ok").uri == "s3://models/reg"
    with pytest.raises(ConfigError, match=r"aws_conn_id='dlpipe_s3_typo': no such Airflow connection"):
        registry_store("s3://models/reg", "dlpipe_s3_typo")


@pytest.mark.parametrize("error", ["ReadTimeoutError", "ConnectTimeoutError"])
def test_a_raw_s3_timeout_gets_the_s3_hint_not_a_traceback(error, tmp_path, monkeypatch, capsys):
    """botocore's timeouts are OSErrors with no strerror: the CLI's path-error branch must not
    re-raise them before the S3 hint."""
    from botocore import exceptions as bc

    from dlpipe import cli

    def times_out(*args, **kwargs):
        raise getattr(bc, error)(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(registry, "list_versions", times_out)
    code = cli.main(["registry", "list", "--root", str(tmp_path / "registry")])
    err = capsys.readouterr().err
    assert code == 2 and "dlpipe: error: S3 unreachable:" in err and "http://127.0.0.1:9" in err
    assert "retry, or check --endpoint-url" in err


def test_s3_clients_get_deadlines_from_the_environment_or_the_defaults(monkeypatch):
    """A server that never answers must fail a command in seconds, not minutes: every S3 client
    dlpipe builds (open_store, the CLI's --endpoint-url, an Airflow connection's) has connect
    and read timeouts and a bounded number of attempts."""
    from dlpipe import cli, storage

    for var in ("DLPIPE_S3_CONNECT_TIMEOUT_S", "DLPIPE_S3_READ_TIMEOUT_S", "DLPIPE_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(var, raising=False)
    config = storage.open_store("s3://models/reg").client.meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (
        storage.S3_CONNECT_TIMEOUT_S, storage.S3_READ_TIMEOUT_S, storage.S3_MAX_ATTEMPTS)
    monkeypatch.setenv("DLPIPE_S3_CONNECT_TIMEOUT_S", "2")
    monkeypatch.setenv("DLPIPE_S3_READ_TIMEOUT_S", "7.5")
    monkeypatch.setenv("DLPIPE_S3_MAX_ATTEMPTS", "1")
    args = cli.build_parser().parse_args(["registry", "list", "--root", "s3://models/reg",
                                          "--endpoint-url", "http://127.0.0.1:9"])
    config = cli._store(args).client.meta.config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (2, 7.5, 1)
    monkeypatch.setenv("DLPIPE_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match=r"DLPIPE_S3_MAX_ATTEMPTS='many': give a positive whole number"):
        storage.open_store("s3://models/reg")


def test_an_aws_connections_client_gets_the_deadlines_under_its_own_config(monkeypatch):
    """The hook path: dlpipe's timeouts, except where the connection's config_kwargs say otherwise."""
    pytest.importorskip("airflow.providers.amazon")
    from operators.registry import registry_store

    monkeypatch.setenv("DLPIPE_S3_READ_TIMEOUT_S", "9")
    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_S3_CFG", json.dumps({
        "conn_type": "aws", "login": "AKIAOK", "password": "not-shown",
        "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1",
                  "config_kwargs": {"connect_timeout": 3}}}))
    config = registry_store("s3://models/reg", "dlpipe_s3_cfg").client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 9)


def test_registering_the_same_model_again_reads_one_record_whatever_the_history(store, tmp_path, monkeypatch, capsys):
    """design.md's claim, through the CLI: the "new registry" note must not read every record."""
    from dlpipe import cli, storage

    model = _model(tmp_path, b"w0")
    args = ["registry", "register", "m0", str(model), "--root", store.uri]
    if isinstance(store, storage.S3Store):
        monkeypatch.setattr(cli, "_store", lambda _args: store)
    assert cli.main(args) == 0
    for i in range(1, 6):
        registry.register(store, f"m{i}", _model(tmp_path, f"w{i}".encode()), metrics={}, lineage={}, run=RunContext())
    capsys.readouterr()
    reads = []
    original = type(store).get
    monkeypatch.setattr(type(store), "get", lambda self, key: reads.append(key) or original(self, key))
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "m0@1 already registered" in out and "new one" not in out
    assert reads == ["m0/versions/000001.json"]
    empty = type(store)(tmp_path / "empty") if isinstance(store, LocalStore) else None
    if empty is not None:
        assert cli.main(["registry", "register", "m0", str(model), "--root", str(empty.root)]) == 0
        assert "held no registry before this: it is a new one" in capsys.readouterr().out
