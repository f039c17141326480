"""Object storage for the registry: a local directory or S3 (through a boto3 client), alike.

Only the operations the registry needs, each with the same meaning on both backends:
``put_new`` is a create-only write (local: atomic exclusive link; S3: ``If-None-Match: *``) that
raises CommitConflict when the key exists, so two writers can never both "create" a record.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar
from urllib.parse import urlparse

from dlpipe.errors import CommitConflict, ConfigError, DlpipeError, IntegrityError, NotCommittedError, redacted
from dlpipe.fsutil import copy_temp, create_exclusive, fsync_path, write_temp
from dlpipe.hashing import S3_PART_SIZE, sha256_bytes, sha256_file

PART_SIZE = S3_PART_SIZE  # multipart threshold and part size for S3 uploads
UPLOAD_THREADS = 8  # parts in flight at once (boto3's upload_file uses 10)
log = logging.getLogger(__name__)


def s3_checksum(part_digests: list[bytes], multipart: bool) -> str:
    """The base64 SHA-256 checksum S3 reports: of the bytes, or of the parts' digests."""
    if not multipart:
        return base64.b64encode(part_digests[0]).decode()
    return base64.b64encode(hashlib.sha256(b"".join(part_digests)).digest()).decode()


def reported_checksum(response: dict) -> str:
    """The SHA-256 checksum in an S3 answer, without the ``-N`` part count of a multipart one
    ('' when the server gives none)."""
    return (response.get("ChecksumSHA256") or "").split("-")[0]


def file_part_digests(path: Path, part_size: int = 0) -> list[bytes]:
    """SHA-256 of each ``part_size`` slice of a file (to check an S3 object's checksum)."""
    part_size = part_size or PART_SIZE
    out = []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            out.append(hashlib.sha256(chunk).digest())
    return out or [hashlib.sha256(b"").digest()]


class Store(Protocol):
    uri: str

    def check_conditional_writes(self) -> None: ...
    def put_new(self, key: str, data: bytes) -> None: ...
    def get_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def put_if_match(self, key: str, data: bytes, token: str | None) -> None: ...
    def put_file(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def holds(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def has_keys(self) -> bool: ...
    def download(self, key: str, dest: Path) -> None: ...


class LocalStore:
    """A directory; writes are atomic (temp file + fsync + link/rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        if self.root.exists() and not self.root.is_dir():  # would read as an empty registry
            raise ConfigError("registry root", str(root), "name a directory (created on first use), not a file")

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ConfigError("key", key, "registry keys must stay inside the registry root")
        return path

    def check_conditional_writes(self) -> None:
        """Nothing to check: exclusive links and a lock give create-only and compare-and-swap."""

    def put_new(self, key: str, data: bytes) -> None:
        try:
            create_exclusive(self._path(key), data)
        except FileExistsError as exc:
            raise CommitConflict(f"{self.uri}/{key} already exists") from exc

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """Current bytes and a version token (their SHA-256), or None if absent."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data, sha256_bytes(data)

    def put_if_match(self, key: str, data: bytes, token: str | None) -> None:
        """Compare-and-swap: replace only if the content still has ``token`` (None: create)."""
        if token is None:
            return self.put_new(key, data)
        path = self._path(key)
        lock = path.with_name(f".{path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.get_versioned(key)
            if current is None or current[1] != token:
                raise CommitConflict(f"{self.uri}/{key} changed since it was read")
            os.replace(write_temp(path, data), path)
            fsync_path(path.parent)  # a reported move must survive a power loss
        finally:
            os.close(fd)

    def put_file(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> None:
        """Copy a file that must have SHA-256 ``sha256`` (checked before it becomes visible)."""
        dest = self._path(key)
        tmp, actual = copy_temp(dest, Path(path))  # streamed: a model can be larger than memory
        if actual != sha256:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"{path}: sha256 differs from the expected {sha256[:12]}...; "
                                 f"it changed after it was hashed")
        os.replace(tmp, dest)
        fsync_path(dest.parent)  # the version record that names this blob is written next

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotCommittedError(f"{self.uri}/{key} does not exist") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def holds(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> bool:
        """Whether ``key`` holds bytes with SHA-256 ``sha256`` (read again: a file can rot)."""
        stored = self._path(key)
        return stored.is_file() and sha256_file(stored) == sha256

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def has_keys(self) -> bool:
        """Whether anything is stored under the root: one directory entry read, not a listing."""
        return self.root.is_dir() and any(not p.name.startswith(".") for p in self.root.iterdir())

    def download(self, key: str, dest: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotCommittedError(f"{self.uri}/{key} does not exist")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)  # streamed; the caller verifies the SHA-256


class StoreUnreachable(DlpipeError, ConnectionError):
    """The S3 server did not answer (refused, reset, timed out) after boto3's retries.

    A transient fault, not a wrong setting: operators leave it retryable. A write that failed
    this way may or may not have been stored, so callers say so rather than "not applied"."""


def _is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is botocore's "no answer": a refused or dropped connection, a timeout."""
    try:
        from botocore import exceptions as bc
    except ImportError:
        return False
    return isinstance(exc, (bc.HTTPClientError, bc.ConnectionError))


_F = TypeVar("_F", bound=Callable[..., Any])


def _naming_key(method: _F) -> _F:
    """Turn botocore's connection errors from an S3Store method into StoreUnreachable naming the
    key: botocore's own message names only the endpoint, and a task log needs both."""
    @functools.wraps(method)
    def wrapper(self: "S3Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not _is_unreachable(exc):
                raise
            key = args[0] if args else kwargs.get("key", kwargs.get("prefix", _PROBE))
            raise _unreachable(self, key, exc) from exc
    return wrapper  # type: ignore[return-value]


def _unreachable(store: "S3Store", key: str, exc: Exception) -> StoreUnreachable:
    return StoreUnreachable(
        f"{store.uri}/{key}: S3 unreachable ({redacted(str(exc))}) after {store.attempts} attempt(s); "
        f"retry, or check the endpoint (--endpoint-url, AWS_ENDPOINT_URL or the connection's "
        f"endpoint_url), that the server is up, and DLPIPE_S3_CONNECT_TIMEOUT_S / DLPIPE_S3_READ_TIMEOUT_S")


# Deadlines for every S3 call. boto3's own (60 s connect, 60 s read, legacy retries) let a server
# that never answers hold a command for minutes in silence. Override with the environment.
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 30.0
S3_MAX_ATTEMPTS = 3


def _env_number(var: str, default: float, kind: type = float) -> float:
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(var, text, f"give a positive {'whole ' if kind is int else ''}number "
                                     f"(default {kind(default)}), or unset it")
    return value


def s3_config() -> Any:
    """The botocore Config of every S3 client dlpipe builds: connect and read timeouts and a
    bounded number of attempts (standard retry mode), from DLPIPE_S3_CONNECT_TIMEOUT_S,
    DLPIPE_S3_READ_TIMEOUT_S and DLPIPE_S3_MAX_ATTEMPTS, else the defaults above."""
    from botocore.config import Config

    return Config(connect_timeout=_env_number("DLPIPE_S3_CONNECT_TIMEOUT_S", S3_CONNECT_TIMEOUT_S),
                  read_timeout=_env_number("DLPIPE_S3_READ_TIMEOUT_S", S3_READ_TIMEOUT_S),
                  retries={"mode": "standard",  # total_: botocore's max_attempts leaves out the first
                           "total_max_attempts": int(_env_number("DLPIPE_S3_MAX_ATTEMPTS", S3_MAX_ATTEMPTS, int))})


_PROBE = ".dlpipe-probe"  # the conditional-write probe's key under the prefix
_BUCKET = re.compile(r"[A-Za-z0-9._-]{3,255}")  # botocore's own check, which would echo the name

class S3Store:
    """``s3://bucket/prefix`` through a boto3 S3 client (any S3-compatible endpoint)."""

    def __init__(self, uri: str, client: Any) -> None:
        if has_login(uri):  # never echo it: the part before '@' is a key and a secret
            raise ConfigError("registry root", shown_url(uri),
                              "credentials do not belong in the URI; name an Airflow AWS connection "
                              "(registry.aws_conn_id) or use boto3's credential chain")
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError("registry root", uri, "use s3://BUCKET[/PREFIX]")
        if not _BUCKET.fullmatch(parsed.netloc):  # else botocore's message repeats it
            raise ConfigError("registry root", uri, "a bucket name is 3-255 letters, digits, '.', '-' or '_' "
                                                    "(3-63 lower-case for new buckets): use s3://BUCKET[/PREFIX]")
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), parsed.netloc, parsed.path.strip("/")
        # The client's endpoint may come from AWS_ENDPOINT_URL(_S3), a profile or a connection's
        # extras; botocore repeats it in connection errors, which reach task logs and the audit
        # log, so one with a login in it is refused here, whichever way it came.
        endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
        if isinstance(endpoint, str) and has_login(endpoint):
            endpoint_url(endpoint, "S3 endpoint URL (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 or the connection's "
                                   "endpoint_url)")
        self.client = client
        self._conditional_checked = False

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def attempts(self) -> int | str:
        """How many attempts the client makes per request, for a message ('?' if unknown)."""
        retries = getattr(getattr(getattr(self.client, "meta", None), "config", None), "retries", None) or {}
        if "total_max_attempts" in retries:
            return retries["total_max_attempts"]
        return retries["max_attempts"] + 1 if "max_attempts" in retries else "?"  # retries, not attempts

    @staticmethod
    def _code(exc: Exception) -> str:
        """The S3 error code of a ClientError; '' for anything else. botocore's connection
        errors carry ``response = None``, not a dict."""
        response = getattr(exc, "response", None)
        return str((response.get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""

    _REFUSED = ("PreconditionFailed", "412", "ConditionalRequestConflict")

    @_naming_key
    def check_conditional_writes(self) -> None:
        """Refuse an endpoint that ignores conditional PUTs, once per store, before its first write.

        Version numbers and alias moves are safe only because the server refuses a create-only
        write to an existing key (``If-None-Match: *``) and a replace of a changed one
        (``If-Match``). A store that silently drops those headers would let two registrations
        take one version number, the second overwriting the first, with both told they won.
        One probe key, ``.dlpipe-probe`` under the prefix, is created once (create-only) and
        kept: it needs no delete permission, leaves no versions behind in a versioned bucket,
        and every later check sends two PUTs the server must refuse: create-only (refused: the
        probe exists, so If-None-Match is honoured), and replace with an ETag it cannot hold.
        Only the check that creates the probe sends a third, a create-only PUT it must refuse."""
        if self._conditional_checked:
            return
        probe = self._key(_PROBE)
        ignored, tests = [], [("IfMatch", '"00000000000000000000000000000000"')]
        try:
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"dlpipe", IfNoneMatch="*")
            tests.insert(0, ("IfNoneMatch", "*"))  # created now: whether it is honoured is still unknown
        except Exception as exc:
            if self._code(exc) not in self._REFUSED:  # refused: it exists from an earlier check
                raise
        for header, value in tests:
            try:
                self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"dlpipe", **{header: value})
                ignored.append(header)
            except Exception as exc:
                if self._code(exc) not in self._REFUSED + ("409",):
                    raise
        if ignored:
            raise ConfigError("registry root", self.uri,
                              f"the S3 endpoint ignored a conditional write ({', '.join(ignored)}), so two "
                              f"registrations could take one version number; use AWS S3 or an S3-compatible "
                              f"store that answers 412 Precondition Failed to If-None-Match/If-Match PUTs")
        self._conditional_checked = True

    @_naming_key
    def put_new(self, key: str, data: bytes) -> None:
        self.check_conditional_writes()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   IfNoneMatch="*", ChecksumAlgorithm="SHA256")
        except Exception as exc:
            if self._code(exc) in self._REFUSED:
                raise CommitConflict(f"{self.uri}/{key} already exists") from exc
            raise

    @_naming_key
    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ETag"]

    @_naming_key
    def put_if_match(self, key: str, data: bytes, token: str | None) -> None:
        """Compare-and-swap on the ETag (``If-Match``); None creates (``If-None-Match: *``)."""
        if token is None:
            return self.put_new(key, data)
        self.check_conditional_writes()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   IfMatch=token, ChecksumAlgorithm="SHA256")
        except Exception as exc:
            if self._code(exc) in self._REFUSED + ("409",):
                raise CommitConflict(f"{self.uri}/{key} changed since it was read") from exc
            raise

    @_naming_key
    def put_file(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> None:
        """Upload a file that must have SHA-256 ``sha256``; nothing wrong is ever left stored.

        Every part goes with a SHA-256 checksum, which S3 recomputes on receipt. ``parts`` are
        the committed part digests (base64) of a large file: sent as they are, they make S3
        verify the bytes against the commit and the client hashes nothing. Without them the file
        is read once, in order, feeding both the whole-file hash (which must equal ``sha256``)
        and the parts, hashed by the threads that send them. At the end the checksum S3 reports
        must equal ours; otherwise the upload is aborted or the object deleted, and
        IntegrityError raised.
        """
        s3key = self._key(key)
        size = Path(path).stat().st_size
        if size < PART_SIZE:
            body = Path(path).read_bytes()
            whole, digests = hashlib.sha256(body), [hashlib.sha256(body).digest()]
            self._check_whole(key, whole.hexdigest(), sha256)
            resp = self.client.put_object(Bucket=self.bucket, Key=s3key, Body=body,
                                          Metadata={"sha256": sha256}, ChecksumAlgorithm="SHA256",
                                          ChecksumSHA256=base64.b64encode(digests[0]).decode())
        else:
            resp, digests = self._multipart(key, Path(path), sha256, parts)
        # S3 answers with the checksum it computed over what it stored; servers that leave it out
        # of the answer (moto, some S3-compatible stores) are asked for it explicitly.
        remote = reported_checksum(resp) or reported_checksum(self.client.head_object(
            Bucket=self.bucket, Key=s3key, ChecksumMode="ENABLED"))
        local = s3_checksum(digests, multipart=size >= PART_SIZE)
        if not remote:
            log.warning("%s/%s: the server reports no SHA-256 checksum; the upload is verified "
                        "only when downloaded", self.uri, key)
        elif remote != local:
            # never leave wrong bytes under a content address: a retry would trust them
            self.client.delete_object(Bucket=self.bucket, Key=s3key)
            raise IntegrityError(f"{self.uri}/{key}: S3 reports checksum {remote}, expected {local}; "
                                 f"the upload was corrupted or the file changed after it was hashed")

    def _check_whole(self, key: str, actual: str, expected: str) -> None:
        if actual != expected:
            raise IntegrityError(f"{self.uri}/{key}: the local file's sha256 is {actual[:12]}..., "
                                 f"expected {expected[:12]}...; it changed after it was hashed")

    def _multipart(self, key: str, path: Path, sha256: str,
                   parts: list[str] | None) -> tuple[dict, list[bytes]]:
        """Parallel multipart upload; returns S3's answer and each part's SHA-256 digest."""
        from concurrent.futures import ThreadPoolExecutor

        s3key = self._key(key)
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=s3key, ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256})["UploadId"]

        def send(number: int, body: bytes) -> tuple[dict, bytes]:
            digest = base64.b64decode(parts[number - 1]) if parts else hashlib.sha256(body).digest()
            checksum = base64.b64encode(digest).decode()
            etag = self.client.upload_part(Bucket=self.bucket, Key=s3key, UploadId=upload_id,
                                           PartNumber=number, Body=body, ChecksumSHA256=checksum)["ETag"]
            return {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum}, digest

        try:
            whole = hashlib.sha256()
            with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool, open(path, "rb") as f:
                futures = []
                while body := f.read(PART_SIZE):
                    if not parts:
                        whole.update(body)
                    futures.append(pool.submit(send, len(futures) + 1, body))
                    # bound memory: at most 2x the threads' worth of parts in flight
                    if len(futures) > 2 * UPLOAD_THREADS:
                        futures[-2 * UPLOAD_THREADS - 1].result()
                sent = [fut.result() for fut in futures]
            if parts is None:
                self._check_whole(key, whole.hexdigest(), sha256)
            elif len(parts) != len(sent):
                raise IntegrityError(f"{self.uri}/{key}: the file has {len(sent)} parts, its commit "
                                     f"recorded {len(parts)}; it changed after it was committed")
            resp = self._complete(s3key, upload_id, [p for p, _ in sent], [d for _, d in sent])
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3key, UploadId=upload_id)
            except Exception:  # the original error matters more; S3 lifecycle rules clean up
                log.warning("could not abort multipart upload %s of %s", upload_id, s3key)
            raise
        return resp, [d for _, d in sent]

    def _complete(self, s3key: str, upload_id: str, parts: list[dict], digests: list[bytes]) -> dict:
        """CompleteMultipartUpload, whose repeat may find the upload gone because it completed.

        boto3 repeats a Complete whose reply was lost. Some S3-compatible stores forget an upload
        once it is complete and answer that repeat with NoSuchUpload, which also means "aborted
        or expired". The object stored under the key tells the two apart: if it carries exactly
        these parts' checksum, it is this upload's, and the answer is its HEAD.
        """
        try:
            return self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=s3key, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except Exception as exc:
            if self._code(exc) != "NoSuchUpload":
                raise
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=s3key, ChecksumMode="ENABLED")
            except Exception:
                raise exc from None  # no object (or no answer): the upload's own error says more
            if reported_checksum(head) != s3_checksum(digests, multipart=True):
                raise
            log.info("s3://%s/%s: the upload was already complete (its repeated Complete found no upload)",
                     self.bucket, s3key)
            return head

    @_naming_key
    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                raise NotCommittedError(f"{self.uri}/{key} does not exist") from exc
            raise

    @_naming_key
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    @_naming_key
    def holds(self, key: str, path: Path, sha256: str, parts: list[str] | None = None) -> bool:
        """Whether ``key`` holds the bytes of ``path`` (SHA-256 ``sha256``; ``parts`` as for
        ``put_file``), judged by the checksum S3 computed when they were stored, without
        reading them back. An object replaced since, or stored with no checksum, does not
        count: uploading it again is cheap next to publishing bytes that never verify."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except Exception as exc:
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        size = Path(path).stat().st_size
        if size < PART_SIZE:
            local = s3_checksum([bytes.fromhex(sha256)], multipart=False)
        else:
            digests = [base64.b64decode(d) for d in parts] if parts else file_part_digests(Path(path))
            local = s3_checksum(digests, multipart=True)
        return head.get("ContentLength") == size and reported_checksum(head) == local

    @_naming_key
    def list(self, prefix: str) -> list[str]:
        keys = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)):
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
        return sorted(keys)

    def has_keys(self) -> bool:
        """Whether anything but the conditional-write probe is stored under the prefix: one
        request for at most two keys, not a listing."""
        try:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=2)
        except Exception as exc:
            if _is_unreachable(exc):
                raise _unreachable(self, "", exc) from exc
            raise
        return any(obj["Key"] != self._key(_PROBE) for obj in page.get("Contents", []))

    @_naming_key
    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except Exception as exc:  # boto3's transfer HEADs first: a missing key is a bare "404"
            if self._code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise NotCommittedError(f"{self.uri}/{key} does not exist") from exc
            raise


def shown_url(url: str) -> str:
    """``url`` fit for a message: a user and password in it replaced by ``***``.

    urlparse's host part ends at the first '/', and AWS secret keys hold '/'s, so the login runs
    to the last '@' (``errors.redacted``'s reading). A scheme misspelt without '//'
    (``s3:KEY:SECRET@bucket``) is masked up to its last '@' too."""
    if "://" in url:
        return str(redacted(url))
    head, at, tail = url.rpartition("@")
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/?", head)
    return f"{scheme.group(0)}***@{tail}" if at and scheme and misspelt_scheme(url) else url


def has_login(url: str) -> bool:
    """Whether ``url`` carries a user or password, or a parameter named like a credential
    (``?X-Amz-Signature=``, ``#access_token=``): whatever ``shown_url`` masks."""
    return shown_url(url) != url


def endpoint_url(url: str, field: str = "--endpoint-url") -> str:
    """An S3 endpoint URL, checked: http(s), a host, and no credentials in it."""
    parts = urlparse(url)
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):  # a query can carry a signature or token
        raise ConfigError(field, f"{parts.scheme}://{parts.netloc}{parts.path}?***",
                          "an endpoint URL takes no query or fragment; use http(s)://HOST[:PORT], "
                          "e.g. http://127.0.0.1:9000")
    if has_login(url):
        raise ConfigError(field, shown_url(url), "credentials do not belong in the endpoint URL; use "
                                                 "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(field, url, "use http(s)://HOST[:PORT], e.g. http://127.0.0.1:9000")
    return url


def misspelt_scheme(uri: str) -> bool:
    """Whether ``uri`` starts like a URL but not like one we read (``s3:/bucket``, ``s3:bucket``,
    ``S3://``): taken as a local path, it would make a folder named ``s3:`` and register there."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri)) and not uri.startswith(("s3://", "file://"))


def open_store(uri: str, client: Any = None) -> Store:
    """A Store for a local path or ``s3://`` URI; S3 clients come from boto3's usual chain
    (``AWS_ENDPOINT_URL`` selects an S3-compatible endpoint), with ``s3_config``'s deadlines,
    unless one is passed in."""
    if misspelt_scheme(uri) and "://" not in uri:
        raise ConfigError("registry root", shown_url(uri), "use s3://BUCKET[/PREFIX] (two slashes) or a directory")
    if uri.startswith("s3://"):
        if client is None:
            import boto3

            for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # boto3 reads both; say which is wrong
                if os.environ.get(var):
                    endpoint_url(os.environ[var], var)
            client = boto3.client("s3", config=s3_config())
        return S3Store(uri, client)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError("registry root", shown_url(uri), "use a local directory or an s3://BUCKET/PREFIX URI")
    return LocalStore(uri.removeprefix("file://"))
