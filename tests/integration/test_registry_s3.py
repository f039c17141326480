"""The registry on a real S3-compatible server process (moto server mode) on loopback.

Covers the reliability rows on registration and aliases: double and concurrent registration,
tampered artifacts, the server going away mid-upload, alias races and pickle payloads.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from dlpipe import audit, registry
from dlpipe.errors import AliasConflict, ConfigError, UnsafeArtifactError
from dlpipe.runctx import RunContext
from dlpipe.storage import S3Store
from tests.conftest import new_bucket, run_processes
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration


_bucket = new_bucket


def _model_dir(tmp: Path, payload: bytes, name: str = "model.safetensors") -> Path:
    d = tmp / uuid.uuid4().hex
    d.mkdir()
    (d / name).write_bytes(payload)
    return d


def _safetensors_dir(tmp: Path, value: float) -> Path:
    import torch
    from safetensors.torch import save_file

    d = tmp / uuid.uuid4().hex
    d.mkdir()
    save_file({"w": torch.full((4,), value)}, str(d / "model.safetensors"))
    return d


class _RacingStore:
    """Wraps a real store so two promotions both read before either writes (forces the race)."""

    def __init__(self, inner, barrier: threading.Barrier) -> None:
        self.inner, self.barrier, self.uri = inner, barrier, inner.uri

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_if_match(self, key, data, token):
        self.barrier.wait(timeout=30)
        return self.inner.put_if_match(key, data, token)


def test_alias_race_one_wins_the_other_gets_a_clear_conflict(store, tmp_path):
    run = RunContext(dag_id="d", run_id="r0")
    for v in (1, 2, 3):
        registry.register(store, "eta", _safetensors_dir(tmp_path, v), metrics={}, lineage={"v": v}, run=run)
    registry.promote(store, "eta", "production", 1, run=run, reason="first")

    racing = _RacingStore(store, threading.Barrier(2))
    outcomes: dict[int, object] = {}

    def move(version: int) -> None:
        try:
            outcomes[version] = registry.promote(racing, "eta", "production", version,
                                                 run=RunContext(run_id=f"r{version}"), reason=f"to {version}")
        except AliasConflict as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=move, args=(v,)) for v in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    conflicts = [v for v, o in outcomes.items() if isinstance(o, AliasConflict)]
    assert len(conflicts) == 1, outcomes
    loser = conflicts[0]
    winner = 5 - loser
    assert "moved concurrently" in str(outcomes[loser]) and f"now version {winner}" in str(outcomes[loser])

    doc = registry.get_alias(store, "eta", "production")
    assert doc["version"] == winner
    assert [(m["seq"], m["from_version"], m["to_version"]) for m in doc["history"]] == [(1, None, 1), (2, 1, winner)]

    back = registry.rollback(store, "eta", "production", run=RunContext(run_id="rb"), reason="bad latency")
    assert back["version"] == 1
    assert [(m["from_version"], m["to_version"], m["reason"]) for m in back["history"]][-1] == (
        winner, 1, "rollback: bad latency")
    assert [m["seq"] for m in back["history"]] == [1, 2, 3]


def test_promote_refuses_unknown_versions_and_bad_aliases(store, tmp_path):
    registry.register(store, "eta", _safetensors_dir(tmp_path, 1), metrics={}, lineage={}, run=RunContext())
    with pytest.raises(Exception, match="not registered"):
        registry.promote(store, "eta", "production", 9, run=RunContext())
    with pytest.raises(ConfigError, match="alias"):
        registry.promote(store, "eta", "Prod uction", 1, run=RunContext())
    with pytest.raises(ConfigError, match="no earlier version"):
        registry.promote(store, "eta", "staging", 1, run=RunContext())
        registry.rollback(store, "eta", "staging", run=RunContext())
    assert registry.get_alias(store, "eta", "staging")["version"] == 1


def _register_s3(endpoint: str, bucket: str, workdir: str, i: int, results) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing-secret")
    src = Path(workdir) / f"m{i}"
    src.mkdir()
    (src / "model.bin").write_bytes(os.urandom(1024) + str(i).encode())
    rec, created = registry.register(S3Store(f"s3://{bucket}/registry", client), "eta", src,
                                     metrics={"i": i}, lineage={"i": i}, run=RunContext(run_id=f"p{i}"))
    results.put((i, rec["version"], created))


def test_eight_processes_register_concurrently_on_s3(s3_server, s3_client, tmp_path):
    bucket = _bucket(s3_client)
    got = run_processes(_register_s3, [(s3_server, bucket, str(tmp_path), i) for i in range(8)], timeout=180)
    assert sorted(v for _, v, _ in got) == list(range(1, 9)) and all(c for _, _, c in got)
    store = S3Store(f"s3://{bucket}/registry", s3_client)
    records = registry.list_versions(store, "eta")
    assert [r["version"] for r in records] == list(range(1, 9))
    assert sorted(r["metrics"]["i"] for r in records) == list(range(8))  # none lost
    for r in records:
        registry.download(store, "eta", r["version"], tmp_path / f"dl{r['version']}")


def test_upload_survives_the_server_going_away_mid_upload(s3_server, s3_client, tmp_path):
    import boto3
    from botocore.config import Config

    bucket = _bucket(s3_client)
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1])).start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing-secret",
                          config=Config(retries={"mode": "standard", "max_attempts": 10}))
    model = _model_dir(tmp_path, os.urandom(40 * 1024 * 1024), "model.bin")  # 3 multipart parts

    def restart_when_uploading() -> None:
        while proxy.bytes_up < 12 * 1024 * 1024:
            time.sleep(0.005)
        proxy.stop()  # every open connection reset, new ones refused
        time.sleep(1.5)
        proxy.start()  # back on the same port

    restarter = threading.Thread(target=restart_when_uploading, daemon=True)
    restarter.start()
    store = S3Store(f"s3://{bucket}/registry", client)
    rec, created = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    restarter.join(30)
    assert not restarter.is_alive(), "the proxy was never interrupted: the test did not test anything"
    assert created and rec["version"] == 1
    # server-side checksum equals the local one (put_file checked it too), and bytes round-trip
    from dlpipe.storage import file_part_digests, s3_checksum

    sha = rec["artifacts"][0]["sha256"]
    head = s3_client.head_object(Bucket=bucket, Key=f"registry/eta/blobs/{sha}", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == s3_checksum(file_part_digests(model / "model.bin"), multipart=True)
    registry.download(S3Store(f"s3://{bucket}/registry", s3_client), "eta", 1, tmp_path / "dl")
    proxy.stop()


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_pickle_payload_is_refused_at_load(store, tmp_path, monkeypatch):
    import torch

    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    d = tmp_path / "evil"
    d.mkdir()
    torch.save({"w": torch.ones(2), "payload": _Evil()}, d / "model.pt")
    registry.register(store, "eta", d, metrics={}, lineage={}, run=RunContext())
    with pytest.raises(UnsafeArtifactError, match="pickle payload"):
        registry.load_version(store, "eta", 1, tmp_path / "dl")
    assert not marker.exists(), "the payload ran"
    # a plain state dict in the same format loads fine
    ok = tmp_path / "ok"
    ok.mkdir()
    torch.save({"w": torch.ones(2)}, ok / "model.pt")
    registry.register(store, "eta", ok, metrics={}, lineage={"ok": 1}, run=RunContext())
    _, weights = registry.load_version(store, "eta", 2, tmp_path / "dl2")
    assert torch.equal(weights["model.pt"]["w"], torch.ones(2))


def test_every_alias_move_is_audited(store, tmp_path):
    run = RunContext(dag_id="d", run_id="r")
    registry.register(store, "eta", _safetensors_dir(tmp_path, 1), metrics={}, lineage={}, run=run)
    registry.promote(store, "eta", "production", 1, run=run)
    registry.promote(store, "eta", "production", 1, run=run)
    assert [(e["stage"], e["event"]) for e in audit.read() if e["stage"] == "alias"] == [
        ("alias", "committed"), ("alias", "skipped")]


class _CorruptingClient:
    """A real boto3 client whose part uploads get one byte flipped on the way (a bad network)."""

    def __init__(self, client) -> None:
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def upload_part(self, **kwargs):
        body = bytearray(kwargs["Body"])
        body[len(body) // 2] ^= 0xFF
        return self.client.upload_part(**{**kwargs, "Body": bytes(body)})


def test_corrupted_upload_is_detected_and_nothing_is_registered(s3_client, tmp_path):
    from dlpipe.errors import IntegrityError

    bucket = _bucket(s3_client)
    store = S3Store(f"s3://{bucket}/registry", _CorruptingClient(s3_client))
    model = _model_dir(tmp_path, os.urandom(20 * 1024 * 1024), "model.bin")
    with pytest.raises(IntegrityError, match="upload was corrupted"):
        registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    good = S3Store(f"s3://{bucket}/registry", s3_client)
    assert registry.list_versions(good, "eta") == []
    # the retry uploads again (the bad blob was removed) and the result verifies
    rec, created = registry.register(good, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert created
    registry.download(good, "eta", rec["version"], tmp_path / "dl")


def test_large_file_changed_after_commit_is_refused_by_its_committed_part_checksums(s3_client, tmp_path):
    """The committed part digests go to S3 as checksums; S3's answer must match the commit."""
    from dlpipe.commit import describe_files
    from dlpipe.errors import IntegrityError

    bucket = _bucket(s3_client)
    store = S3Store(f"s3://{bucket}/registry", s3_client)
    model = _model_dir(tmp_path, os.urandom(40 * 1024 * 1024), "model.bin")
    committed = {f["path"]: f for f in describe_files(model, with_parts=True)}
    assert len(committed["model.bin"]["parts_sha256"]) == 3
    data = bytearray((model / "model.bin").read_bytes())
    data[30 * 1024 * 1024] ^= 1  # one bit in the second part, same size
    (model / "model.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed after it was hashed"):
        registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext(),
                          committed_files=committed)
    assert registry.list_versions(store, "eta") == []
    assert not [o for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
                if "/blobs/" in o["Key"]], "the wrong bytes stayed under their content address"
    # the untouched file registers with the same committed checksums
    data[30 * 1024 * 1024] ^= 1
    (model / "model.bin").write_bytes(bytes(data))
    rec, created = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext(),
                                     committed_files=committed)
    assert created
    registry.download(store, "eta", rec["version"], tmp_path / "dl")


def _lossy_store(s3_server, s3_client):
    """A store whose requests pass a proxy that can drop a success reply (boto3 then retries)."""
    import boto3
    from botocore.config import Config

    bucket = _bucket(s3_client)
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1])).start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing-secret",
                          config=Config(retries={"mode": "standard", "max_attempts": 5}))
    return S3Store(f"s3://{bucket}/registry", client), proxy


def test_a_lost_reply_to_a_stored_version_record_still_counts_as_committed(s3_server, s3_client, tmp_path):
    """The record is stored, its reply lost, and boto3's retry of the create-only write is refused
    (412): that refusal is this registration's own write, not a concurrent one's."""
    store, proxy = _lossy_store(s3_server, s3_client)
    proxy.lose_reply("PUT", "/versions/")
    run = RunContext(dag_id="d", run_id="lost-reply")
    rec, created = registry.register(store, "eta", _safetensors_dir(tmp_path, 1), metrics={}, lineage={}, run=run)
    assert len(proxy.replies_lost) == 1, "no reply was dropped: the test did not test anything"
    assert created and rec["version"] == 1
    assert [r["version"] for r in registry.list_versions(store, "eta")] == [1]
    assert [(e["event"], e["manifest_id"]) for e in audit.read() if e["stage"] == "registry"] == [
        ("committed", "eta@1")]
    proxy.stop()


def test_a_lost_reply_to_an_alias_move_is_not_reported_as_a_concurrent_move(s3_server, s3_client, tmp_path):
    store, proxy = _lossy_store(s3_server, s3_client)
    run = RunContext(dag_id="d", run_id="lost-reply")
    for value in (1, 2):
        registry.register(store, "eta", _safetensors_dir(tmp_path, value), metrics={}, lineage={"v": value}, run=run)
    for version in (1, 2):  # the first creates the alias (If-None-Match), the second moves it (If-Match)
        proxy.lose_reply("PUT", "/aliases/production.json")
        doc = registry.promote(store, "eta", "production", version, run=run, reason=f"to {version}")
        assert doc["version"] == version
    assert len(proxy.replies_lost) == 2, "no reply was dropped: the test did not test anything"
    history = registry.get_alias(store, "eta", "production")["history"]
    assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2)]
    assert [e["event"] for e in audit.read() if e["stage"] == "alias"] == ["committed", "committed"]
    proxy.stop()


NO_SUCH_UPLOAD = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchUpload</Code><Message>The "
                  b"specified upload does not exist. The upload ID may be invalid, or the upload may have been "
                  b"aborted or completed.</Message></Error>")


def _reply(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            f"x-amz-request-id: proxy\r\n\r\n").encode() + body


def test_a_repeated_complete_answered_no_such_upload_registers_what_was_stored(s3_server, s3_client, tmp_path):
    """Some S3-compatible stores forget an upload once it is complete, and answer boto3's repeat of
    a CompleteMultipartUpload whose reply was lost with NoSuchUpload (404). moto answers the repeat
    with the object, so the proxy plays that store for the repeat: the object is there, with our
    parts' checksum, and the registration goes on."""
    store, proxy = _lossy_store(s3_server, s3_client)
    proxy.lose_reply("POST", "uploadId=", then=_reply("404 Not Found", NO_SUCH_UPLOAD))
    model = _model_dir(tmp_path, os.urandom(20 * 1024 * 1024), "model.bin")  # 2 parts
    rec, created = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert len(proxy.replies_lost) == 1 and len(proxy.replies_answered) == 1, "the fault was not injected"
    assert created and rec["version"] == 1
    registry.download(store, "eta", 1, tmp_path / "dl")
    assert (tmp_path / "dl" / "model.bin").read_bytes() == (model / "model.bin").read_bytes()
    proxy.stop()


def test_no_such_upload_with_no_object_stored_still_fails(s3_server, s3_client, tmp_path):
    """NoSuchUpload also means an upload aborted or expired before it completed: with no object
    stored under the key, the upload fails and nothing is registered."""
    store, proxy = _lossy_store(s3_server, s3_client)
    proxy.lose_reply("POST", "uploadId=", then=_reply("404 Not Found", NO_SUCH_UPLOAD))
    # the first Complete's reply is lost after moto stored the object; delete it before the repeat
    # so that the store's answer is the truth: no upload and no object
    real_complete = store.client.complete_multipart_upload

    def complete_then_lose_object(**kwargs):
        try:
            return real_complete(**kwargs)
        finally:
            s3_client.delete_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"])

    store.client.complete_multipart_upload = complete_then_lose_object
    model = _model_dir(tmp_path, os.urandom(20 * 1024 * 1024), "model.bin")
    with pytest.raises(Exception, match="NoSuchUpload"):
        registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert len(proxy.replies_answered) == 1, "the fault was not injected"
    assert registry.list_versions(store, "eta") == []
    proxy.stop()


def test_a_lost_reply_to_a_completed_multipart_upload_still_registers(s3_server, s3_client, tmp_path):
    """boto3 repeats CompleteMultipartUpload after the object was made (moto answers the repeat
    with the object); the upload is still checked against its parts' checksums and kept."""
    store, proxy = _lossy_store(s3_server, s3_client)
    proxy.lose_reply("POST", "uploadId=")
    model = _model_dir(tmp_path, os.urandom(20 * 1024 * 1024), "model.bin")  # 2 parts
    rec, created = registry.register(store, "eta", model, metrics={}, lineage={}, run=RunContext())
    assert len(proxy.replies_lost) == 1, "no reply was dropped: the test did not test anything"
    assert created and rec["version"] == 1
    registry.download(store, "eta", 1, tmp_path / "dl")
    assert (tmp_path / "dl" / "model.bin").read_bytes() == (model / "model.bin").read_bytes()
    proxy.stop()


def test_an_endpoint_that_ignores_conditional_writes_is_refused_before_any_record(s3_client, tmp_path):
    """Some S3-compatible stores drop If-None-Match/If-Match: every version race would be lost
    silently. Simulated by removing the headers from this client's PutObject calls."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_client.meta.endpoint_url, region_name="us-east-1")
    bucket = new_bucket(client)

    def drop_conditions(params, **_):
        params.pop("IfNoneMatch", None)
        params.pop("IfMatch", None)

    client.meta.events.register("provide-client-params.s3.PutObject", drop_conditions)
    store = S3Store(f"s3://{bucket}/registry", client)
    with pytest.raises(ConfigError, match=r"ignored a conditional write \(IfNoneMatch, IfMatch\)"):
        registry.register(store, "eta", _model_dir(tmp_path, b"w"), metrics={}, lineage={}, run=RunContext())
    left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert left == ["registry/.dlpipe-probe"], left  # refused before any upload: no blob, no record
    # the same server through a client that sends the headers passes the probe and registers
    honest = S3Store(f"s3://{bucket}/registry", s3_client)
    rec, created = registry.register(honest, "eta", _model_dir(tmp_path, b"w"), metrics={}, lineage={},
                                     run=RunContext())
    assert (rec["version"], created) == (1, True)


def test_the_probe_needs_no_delete_permission_and_leaves_one_key(s3_client, tmp_path):
    """A write-once policy suits an immutable registry: the probe key is made once and kept."""
    bucket = new_bucket(s3_client)

    def no_deletes(**_):
        raise AssertionError("the registry deleted an object")

    s3_client.meta.events.register("before-call.s3.DeleteObject", no_deletes)
    try:
        for i in range(2):  # a second store (another task) checks again, reusing the key
            store = S3Store(f"s3://{bucket}/registry", s3_client)
            registry.register(store, "eta", _model_dir(tmp_path, b"w%d" % i), metrics={}, lineage={}, run=RunContext())
    finally:
        s3_client.meta.events.unregister("before-call.s3.DeleteObject", no_deletes)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys.count("registry/.dlpipe-probe") == 1
    assert [r["version"] for r in registry.list_versions(store, "eta")] == [1, 2]


def test_a_registration_into_a_missing_bucket_names_it_and_is_audited(s3_server, tmp_path, monkeypatch, capsys):
    """The bucket comes from DLPIPE_REGISTRY_ROOT, not --root: the error says which, and the
    refused registration leaves a failed event like any other failed registry change."""
    from dlpipe import cli

    monkeypatch.setenv("DLPIPE_REGISTRY_ROOT", "s3://no-such-bucket-dlpipe/reg")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    before = len(list(audit.read()))
    code = cli.main(["registry", "register", "eta", str(_model_dir(tmp_path, b"w")), "--endpoint-url", s3_server])
    err = capsys.readouterr().err
    assert code == 2 and "NoSuchBucket" in err
    assert "the bucket does not exist: check the bucket in s3://no-such-bucket-dlpipe/reg (DLPIPE_REGISTRY_ROOT)" in err
    [event] = list(audit.read())[before:]
    assert event["event"] == "failed" and event["stage"] == "registry" and "NoSuchBucket" in event["error"]


class _SilentServer:
    """A TCP server that accepts connections and never answers (``close=True``: closes each one
    at once, before any reply): what a hung or crashing S3 endpoint looks like to the client."""

    def __init__(self, close: bool = False) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port, self.close, self.held = self.sock.getsockname()[1], close, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.close:
                conn.recv(65536)
                conn.close()
            else:
                self.held.append(conn)

    def client(self, read_timeout: float = 0.5):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing-secret",
                            config=Config(connect_timeout=0.5, read_timeout=read_timeout,
                                          retries={"mode": "standard", "max_attempts": 1}))

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("close", [False, True], ids=["read-timeout", "connection-closed"])
def test_an_unreachable_server_is_named_with_the_key_not_an_attribute_error(close, tmp_path):
    """botocore's connection errors carry ``response = None``: every store call must still say
    which key it was at and what to do, never AttributeError."""
    from dlpipe.storage import StoreUnreachable

    server = _SilentServer(close=close)
    try:
        store = S3Store("s3://bucket/reg", server.client())
        store._conditional_checked = True  # the probe itself is covered by put_new below
        model = _model_dir(tmp_path, b"w")
        calls = {"get": lambda: store.get("eta/versions/000001.json"),
                 "get_versioned": lambda: store.get_versioned("eta/versions/000001.json"),
                 "exists": lambda: store.exists("eta/versions/000001.json"),
                 "holds": lambda: store.holds("eta/blobs/ab", model / "model.safetensors", "ab" * 32),
                 "put_new": lambda: store.put_new("eta/versions/000001.json", b"{}"),
                 "put_if_match": lambda: store.put_if_match("eta/versions/000001.json", b"{}", '"x"'),
                 "list": lambda: store.list("eta/versions/")}
        for what, call in calls.items():
            with pytest.raises(StoreUnreachable) as caught:
                call()
            key = "eta/versions/" if what == "list" else "eta/blobs/ab" if what == "holds" else "eta/versions/000001.json"
            assert f"s3://bucket/reg/{key}: S3 unreachable" in str(caught.value), what
            assert "retry, or check the endpoint" in str(caught.value)
        store._conditional_checked = False
        with pytest.raises(StoreUnreachable, match=r"reg/\.dlpipe-probe: S3 unreachable"):
            store.check_conditional_writes()
    finally:
        server.stop()


def test_a_promotion_cut_off_says_whether_it_was_applied(s3_client, tmp_path):
    """A fault before the alias write: "not moved", certain. A fault during it: the request may
    have been stored, so the message sends the user to the history instead."""
    from dlpipe.storage import StoreUnreachable

    bucket, run = _bucket(s3_client), RunContext()
    store = S3Store(f"s3://{bucket}/registry", s3_client)
    registry.register(store, "eta", _model_dir(tmp_path, b"w1"), metrics={}, lineage={}, run=run)
    server = _SilentServer(close=True)
    try:
        dead = S3Store(f"s3://{bucket}/registry", server.client())
        dead._conditional_checked = True
        with pytest.raises(StoreUnreachable, match=r"eta:production was not moved \(nothing was written\)"):
            registry.promote(dead, "eta", "production", 1, run=run)

        class _WriteFails:  # reads reach the server, the compare-and-swap does not
            uri = store.uri

            def __getattr__(self, name):
                return getattr(dead if name == "put_if_match" else store, name)

        with pytest.raises(StoreUnreachable, match=r"may or may not have been applied; check "
                                                   r"`dlpipe registry history eta:production`"):
            registry.promote(_WriteFails(), "eta", "production", 1, run=run)
    finally:
        server.stop()
    assert registry.get_alias(store, "eta", "production") is None


def test_a_registration_against_a_server_that_never_answers_fails_in_seconds(tmp_path, monkeypatch, capsys):
    """The CLI's client has the deadlines: exit 2 with the key and the hint, not minutes of silence."""
    from dlpipe import cli

    monkeypatch.setenv("DLPIPE_S3_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("DLPIPE_S3_READ_TIMEOUT_S", "0.5")
    monkeypatch.setenv("DLPIPE_S3_MAX_ATTEMPTS", "2")
    server = _SilentServer()
    try:
        started = time.monotonic()
        code = cli.main(["registry", "register", "eta", str(_model_dir(tmp_path, b"w")), "--root", "s3://bucket/reg",
                         "--endpoint-url", f"http://127.0.0.1:{server.port}"])
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 10, elapsed
    assert "dlpipe: error: s3://bucket/reg/" in err and "S3 unreachable" in err and "after 2 attempt(s)" in err


def test_a_task_refused_by_s3_names_the_bucket_and_connection_and_is_not_retried(s3_server, monkeypatch):
    """NoSuchBucket (like a wrong secret or AccessDenied) cannot change on a retry: the task
    fails at once, naming what to fix, instead of a raw ClientError retried to no purpose."""
    import json
    from types import SimpleNamespace

    from operators import PromoteModelOperator
    from operators.base import AirflowFailException
    from tests.conftest import ROOT

    monkeypatch.setenv("AIRFLOW_CONN_DLPIPE_S3_TEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing-secret",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}))
    promote = PromoteModelOperator(task_id="promote_staging", model_ref="eta@1", alias="staging",
                                   registry_root="s3://dlpipe-no-such-bucket/reg", aws_conn_id="dlpipe_s3_test",
                                   pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="promote_staging", try_number=1)
    with pytest.raises(AirflowFailException) as caught:
        promote.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})
    message = str(caught.value)
    assert "registry bucket='dlpipe-no-such-bucket'" in message and "NoSuchBucket" in message
    assert "aws_conn_id='dlpipe_s3_test'" in message and "the bucket does not exist" in message


@pytest.mark.parametrize("code, fix", [("SignatureDoesNotMatch", "secret key is wrong"),
                                       ("InvalidAccessKeyId", "access key id is not known"),
                                       ("AccessDenied", "may not use this bucket")])
def test_s3_refusals_a_retry_cannot_change_become_config_errors(s3_client, code, fix):
    from botocore.exceptions import ClientError

    from operators.registry import s3_refusals

    store = S3Store("s3://models/reg", s3_client)
    with pytest.raises(ConfigError, match=rf"registry bucket='models'.*{code}, using aws_conn_id='aws_ml': .*{fix}"):
        with s3_refusals(store, "aws_ml"):
            raise ClientError({"Error": {"Code": code, "Message": "refused"}}, "PutObject")
    with pytest.raises(ClientError):  # anything else stays as it is (retried)
        with s3_refusals(store, "aws_ml"):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "busy"}}, "PutObject")


def test_the_conditional_write_probe_sends_two_puts_once_the_probe_exists(s3_client):
    """As its docstring and design.md say: three PUTs only for the check that creates the probe."""
    bucket, sent = _bucket(s3_client), []

    def count(params, **kwargs):
        if params["Key"] == "registry/.dlpipe-probe":
            sent.append(params)

    s3_client.meta.events.register("provide-client-params.s3.PutObject", count)
    try:
        S3Store(f"s3://{bucket}/registry", s3_client).check_conditional_writes()
        assert len(sent) == 3
        sent.clear()
        S3Store(f"s3://{bucket}/registry", s3_client).check_conditional_writes()  # the next command's
        assert len(sent) == 2
    finally:
        s3_client.meta.events.unregister("provide-client-params.s3.PutObject", count)
