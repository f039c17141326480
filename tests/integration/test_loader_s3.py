"""ShardLoader reading a dataset from a real S3-compatible server process (moto server mode) on
loopback: the same batches as from local files, on threads and on worker processes."""

from __future__ import annotations

import io
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import new_bucket
from training.loader import ShardLoader

pytestmark = pytest.mark.integration

COLUMNS = ["a", "b", "c"]


def _files() -> dict[str, bytes]:
    """2 files x 3 row groups of 200 rows; row i has a=i, b=2i, c=-i, label=i+0.5."""
    files = {}
    for k in range(2):
        i = np.arange(k * 600, (k + 1) * 600, dtype=np.float32)
        sink = io.BytesIO()
        pq.write_table(pa.table({"a": i, "b": 2 * i, "c": -i, "label": i + 0.5}), sink, row_group_size=200)
        files[f"part-{k:05d}.parquet"] = sink.getvalue()
    return files


def _drain(loader: ShardLoader) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy().copy(), y.numpy().copy()) for x, y in loader.epoch(3)))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials from the environment, as on a deployment (worker processes inherit them);
    the URLs name only the server, so they hold no secret."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.parametrize("processes", [False, True])
def test_batches_from_s3_are_the_batches_from_local_files(s3_server, s3_client, aws_env, tmp_path, monkeypatch,
                                                           processes):
    monkeypatch.setenv("DLPIPE_DECODE_CHUNK_BYTES", "800")  # local files: one column per read; S3: whole groups
    bucket = new_bucket(s3_client)
    for name, data in _files().items():
        s3_client.put_object(Bucket=bucket, Key=f"ds/train/{name}", Body=data)
        (tmp_path / name).write_bytes(data)
    server = urlparse(s3_server).netloc
    url = f"s3://{bucket}/ds/train?endpoint_override={server}&scheme=http&region=us-east-1"

    args = dict(batch_size=128, seed=5, shuffle_window=2, workers=2, processes=processes)
    with ShardLoader(url, COLUMNS, "label", **args) as remote, \
            ShardLoader(f"file://{tmp_path}", COLUMNS, "label", **args) as local:
        assert len(remote.groups) == 6
        x, y = _drain(remote)
        want_x, want_y = _drain(local)
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(x[:, 0] + 0.5, y)  # rows stay whole
    assert sorted(y.tolist()) == [i + 0.5 for i in range(1200)]  # every row once


def test_a_prefix_without_parquet_files_is_named(s3_server, s3_client, aws_env):
    bucket = new_bucket(s3_client)
    s3_client.put_object(Bucket=bucket, Key="ds/train/_SUCCESS", Body=b"")
    url = f"s3://{bucket}/ds/train?endpoint_override={urlparse(s3_server).netloc}&scheme=http&region=us-east-1"
    with pytest.raises(FileNotFoundError, match=f"no .parquet files under s3://{bucket}/ds/train"):
        ShardLoader(url, COLUMNS, "label")


def test_credentials_in_the_url_stay_out_of_the_message(s3_server, s3_client):
    """pyarrow takes ``s3://KEY:SECRET@bucket/...``; the error names the prefix without them."""
    bucket = new_bucket(s3_client)
    url = (f"s3://testing:not-for-logs@{bucket}/nothing"
           f"?endpoint_override={urlparse(s3_server).netloc}&scheme=http&region=us-east-1")
    with pytest.raises(FileNotFoundError) as err:
        ShardLoader(url, COLUMNS, "label")
    assert f"s3://{bucket}/nothing:" in str(err.value)
    assert "not-for-logs" not in str(err.value) and "endpoint_override" not in str(err.value)
