"""Damaged registry documents: records and alias documents that are JSON but not what their
readers need, records that no longer match themselves, blobs gone missing. Each is named, with
its key, as an IntegrityError (never a KeyError), and the rest of the registry still works."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from dlpipe import registry
from dlpipe.errors import IntegrityError
from dlpipe.runctx import RunContext
from dlpipe.storage import LocalStore


def _model(tmp: Path, payload: bytes) -> Path:
    d = tmp / uuid.uuid4().hex
    d.mkdir()
    (d / "model.safetensors").write_bytes(payload)
    return d


def _registry(tmp_path: Path) -> LocalStore:
    """eta@1 and fraud@1, registered; eta@2's record replaced by valid but incomplete JSON."""
    store = LocalStore(tmp_path / "registry")
    for name, payload in (("eta", b"w1"), ("fraud", b"f1"), ("eta", b"w2")):
        registry.register(store, name, _model(tmp_path, payload), metrics={}, lineage={}, run=RunContext())
    (store.root / "eta/versions/000002.json").write_text('{"name": "ext", "version": 2}')
    return store


def test_an_incomplete_record_is_named_by_every_reader_not_a_key_error(tmp_path, capsys, monkeypatch):
    from dlpipe import cli

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "home"))
    store = _registry(tmp_path)
    code = cli.main(["registry", "list", "--root", str(store.root)])
    out, err = capsys.readouterr()
    assert code == 1 and "eta@1" in out and "fraud@1" in out and "eta@2" not in out
    assert "damaged: eta@2: its version record in" in err and "missing field(s) model_fingerprint, artifacts" in err
    message = r"eta@2: its version record .*000002\.json\) is not readable \(missing field\(s\) model_fingerprint"
    with pytest.raises(IntegrityError, match=message):
        registry.download(store, "eta", 2, tmp_path / "dl")
    with pytest.raises(IntegrityError, match=message):
        registry.promote(store, "eta", "production", 2, run=RunContext())
    # the same model again gets a new version: the damaged one can be neither verified nor loaded
    rec, created = registry.register(store, "eta", _model(tmp_path, b"w2"), metrics={}, lineage={}, run=RunContext())
    assert (rec["version"], created) == (3, True)
    assert registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={},
                             run=RunContext())[0]["version"] == 1


@pytest.mark.parametrize("field, value, problem", [
    ("artifacts", [{"name": "model.safetensors"}], r"artifacts\[0\] lacks a name, sha256 or size"),
    ("metrics", None, "metrics is NoneType, not dict"),
    ("version", 7, "it names eta@7, not the version its key holds"),
])
def test_a_record_with_a_wrong_field_is_named(tmp_path, field, value, problem):
    store = LocalStore(tmp_path / "registry")
    registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={}, run=RunContext())
    path = store.root / "eta/versions/000001.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, field: value}))
    with pytest.raises(IntegrityError, match=rf"eta@1: .*is not readable \({problem}"):
        registry.get_version(store, "eta", 1)


@pytest.mark.parametrize("damage, problem", [
    (lambda text: text[:20], "not JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "history"}), "no history of moves"),
    (lambda text: json.dumps({**json.loads(text), "version": 1}), "its version 1 is not where its latest move went"),
])
def test_a_damaged_alias_document_is_named_with_its_key_and_the_fix(tmp_path, capsys, monkeypatch, damage, problem):
    from dlpipe import cli

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "home"))
    store = LocalStore(tmp_path / "registry")
    for payload in (b"w1", b"w2"):
        registry.register(store, "eta", _model(tmp_path, payload), metrics={}, lineage={}, run=RunContext())
    registry.promote(store, "eta", "production", 1, run=RunContext())
    registry.promote(store, "eta", "production", 2, run=RunContext())
    path = store.root / "eta/aliases/production.json"
    path.write_text(damage(path.read_text()))
    message = rf"alias document {store.root}/eta/aliases/production.json is damaged \({problem}"
    for call in (lambda: registry.get_alias(store, "eta", "production"),
                 lambda: registry.promote(store, "eta", "production", 1, run=RunContext()),
                 lambda: registry.rollback(store, "eta", "production", run=RunContext())):
        with pytest.raises(IntegrityError, match=message) as caught:
            call()
        assert "dlpipe registry promote" in str(caught.value)
    code = cli.main(["registry", "history", "eta:production", "--root", str(store.root)])
    assert code == 2 and "production.json is damaged" in capsys.readouterr().err


def test_a_record_pointed_at_another_versions_blob_is_refused_by_download_and_promote(tmp_path):
    """Each blob verifies against the record's own sha256, so only the record's fingerprint
    shows that eta@2 now names eta@1's bytes."""
    store = LocalStore(tmp_path / "registry")
    first, _ = registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={}, run=RunContext())
    registry.register(store, "eta", _model(tmp_path, b"w2"), metrics={}, lineage={}, run=RunContext())
    path = store.root / "eta/versions/000002.json"
    record = json.loads(path.read_text())
    record["artifacts"][0]["sha256"] = first["artifacts"][0]["sha256"]
    path.write_text(json.dumps(record))
    message = r"eta@2: its version record .* no longer matches its model_fingerprint"
    with pytest.raises(IntegrityError, match=message):
        registry.download(store, "eta", 2, tmp_path / "dl")
    assert not (tmp_path / "dl" / "model.safetensors").exists()
    with pytest.raises(IntegrityError, match=message):
        registry.load_version(store, "eta", 2, tmp_path / "dl2")
    with pytest.raises(IntegrityError, match=message):
        registry.promote(store, "eta", "production", 2, run=RunContext())
    assert registry.get_alias(store, "eta", "production") is None


def test_a_missing_blob_is_named_with_its_artifact_and_key_on_both_backends(store, tmp_path):
    rec, _ = registry.register(store, "eta", _model(tmp_path, b"w1"), metrics={}, lineage={}, run=RunContext())
    key = f"eta/blobs/{rec['artifacts'][0]['sha256']}"
    if isinstance(store, LocalStore):
        (store.root / key).unlink()
    else:
        store.client.delete_object(Bucket=store.bucket, Key=store._key(key))
    with pytest.raises(IntegrityError, match=rf"eta@1: artifact model.safetensors is missing from the registry "
                                             rf"\({store.uri}/{key} does not exist\)"):
        registry.download(store, "eta", 1, tmp_path / "dl")


@pytest.mark.parametrize("damage", ["deleted", "overwritten"])
def test_registering_the_same_model_again_stores_a_missing_or_damaged_blob_again(store, tmp_path, damage, caplog):
    from dlpipe import audit

    model = _model(tmp_path, b"w1")
    rec, _ = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    key = f"eta/blobs/{rec['artifacts'][0]['sha256']}"
    if isinstance(store, LocalStore):
        (store.root / key).unlink() if damage == "deleted" else (store.root / key).write_bytes(b"rot")
    elif damage == "deleted":
        store.client.delete_object(Bucket=store.bucket, Key=store._key(key))
    else:
        store.client.put_object(Bucket=store.bucket, Key=store._key(key), Body=b"rot", ChecksumAlgorithm="SHA256")
    again, created = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert (again["version"], created) == (1, False)
    assert "eta@1: stored model.safetensors again (missing or damaged" in caplog.text
    assert list(audit.read())[-1]["repaired"] == ["model.safetensors"]
    registry.download(store, "eta", 1, tmp_path / "dl")
    assert (tmp_path / "dl" / "model.safetensors").read_bytes() == b"w1"
