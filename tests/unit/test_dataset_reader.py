"""Readers open a dataset only while its directory holds what its manifest lists: a file deleted
early, a stray file and a rewritten metadata file (Petastorm unpickles it) are refused by name,
and a batch reader is not handed codec fields it would return as raw bytes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dlpipe import commit, datasets
from dlpipe.errors import ConfigError, IntegrityError, NotCommittedError
from dlpipe.runctx import RunContext

KEY = commit.StageKey("datasets", "eta", "window_end=2026-01-04")


def _dataset(seed: int = 0, schema: list | None = None) -> dict:
    def produce(attempt):
        for split in ("train", "validation"):
            (attempt / split).mkdir()
            pq.write_table(pa.table({"x": [seed, 1]}), attempt / split / "part-00000.parquet")
            pq.write_metadata(pa.schema([("x", pa.int64())]), attempt / split / "_common_metadata")
        return {"splits": ["train", "validation"], "schema": schema or [], "rows": {"train": 2, "validation": 2}}

    return commit.run_stage(KEY, inputs=[], config={"seed": seed}, code={"sources_hash": "x"}, run=RunContext(),
                            produce=produce).manifest


def test_an_intact_split_opens():
    ds = _dataset()
    assert datasets.split_url(ds, "train") == f"file://{commit.location(ds)}/train"


def test_a_listed_file_that_is_gone_is_refused_by_name():
    ds = _dataset()
    (commit.location(ds) / "train" / "part-00000.parquet").unlink()
    with pytest.raises(IntegrityError, match=r"train/part-00000.parquet is missing") as e:
        datasets.split_url(ds, "train")
    assert f"manifests/{ds['fingerprint']}.json" in str(e.value)  # how to recompute it
    assert datasets.split_url(ds, "validation")  # the other split is whole


def test_a_stray_data_file_is_refused_and_spark_side_files_are_not():
    ds = _dataset()
    split = commit.location(ds) / "train"
    (split / "._SUCCESS.crc").write_text("")
    (split / "_SUCCESS").write_text("")
    (split / ".nfs000000001").write_text("")  # hidden: no reader opens it
    datasets.split_url(ds, "train")
    (split / "_metadata").write_bytes((split / "_common_metadata").read_bytes())  # Petastorm reads this one
    with pytest.raises(IntegrityError, match=r"train/_metadata is in the dataset's directory but not in its manifest"):
        datasets.split_url(ds, "train")
    (split / "_metadata").unlink()
    (split / "part-00001.parquet").write_bytes((split / "part-00000.parquet").read_bytes())
    with pytest.raises(IntegrityError, match=r"train/part-00001.parquet is in the dataset's directory but not in its manifest"):
        datasets.split_url(ds, "train")


def test_rewritten_metadata_of_the_same_size_is_refused():
    """The metadata file holds the pickled Unischema: same length, other bytes, still refused."""
    ds = _dataset()
    meta = commit.location(ds) / "validation" / "_common_metadata"
    data = bytearray(meta.read_bytes())
    data[-9] ^= 0xFF
    meta.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"validation/_common_metadata .*its SHA-256 differs"):
        datasets.split_url(ds, "validation")


def test_a_batch_reader_is_not_handed_codec_fields():
    ds = _dataset(schema=[{"name": "image_id", "codec": "ScalarCodec"}, {"name": "image", "codec": "NdarrayCodec"}])
    with pytest.raises(ConfigError) as e:
        datasets.open_reader(ds["id"], "train")
    assert e.value.field == "batch" and "['image']" in e.value.fix and "batch=False" in e.value.fix
    datasets._refuse_undecoded(ds, ["image_id"])  # fields chosen without it: allowed
    with pytest.raises(ConfigError):
        datasets._refuse_undecoded(ds, ["im.*"])  # Petastorm's schema_fields take patterns too


def test_a_partition_without_a_version_lists_its_committed_versions():
    old, new = _dataset(seed=1), _dataset(seed=2)
    for ref in (str(KEY.dir()), f"{KEY.relpath}", str(KEY.dir() / "manifests")):
        with pytest.raises(NotCommittedError) as e:
            datasets.resolve(ref)
        assert f"pass one of its committed versions (newest first): {new['id']}, {old['id']}" in str(e.value), ref


def test_dataset_show_lists_the_gates_that_judged_it_not_those_that_compared_against_it(capsys):
    """A data gate with drift checks takes the previous version as a second input."""
    from dlpipe import cli

    old, new = _dataset(seed=1), _dataset(seed=2)
    gate = commit.run_stage(commit.StageKey("gates", "eta_data", KEY.partition), inputs=[new, old], config={},
                            code={"sources_hash": "x"}, run=RunContext(),
                            produce=lambda attempt: {"verdict": "passed", "expectations": 3}).manifest
    assert cli.main(["dataset", "show", new["id"]]) == 0
    assert f"  {gate['id']}: passed (3 expectations)" in capsys.readouterr().out
    assert cli.main(["dataset", "show", old["id"]]) == 0
    out = capsys.readouterr().out
    assert gate["id"] not in out and "(none committed" in out


def test_dataset_show_escapes_manifest_text(capsys):
    """A run id with a newline and an escape sequence must not forge a line of the output."""
    import json

    from dlpipe import cli

    ds = _dataset()
    mfile = KEY.dir() / "manifests" / f"{ds['fingerprint']}.json"
    forged = json.loads(mfile.read_text())
    forged["run"]["run_id"] = "r1\ngates\n  gates/eta_data/x@y: passed (99 expectations)\x1b[2J"
    mfile.write_text(json.dumps(forged))
    assert cli.main(["dataset", "show", ds["id"]]) == 1  # the edit is caught by the seal, and the text escaped
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\n  gates/eta_data/x@y" not in out and "r1\\ngates\\n" in out
    assert "edited after its commit" in out
    forged["seal"] = commit.content_seal(forged)  # resealed (a seal is no signature): still escaped
    mfile.write_text(json.dumps(forged))
    assert cli.main(["dataset", "show", ds["id"]]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\n  gates/eta_data/x@y" not in out and "r1\\ngates\\n" in out
