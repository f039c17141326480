"""OpenLineage from the registry operators: like every stage, they report what they read.

RegisterModelOperator reads the training run and the gate verdicts it registers on;
PromoteModelOperator reads the registered version it points the alias at. Without these inputs a
lineage backend would show registry versions and aliases that come from nowhere."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlpipe import commit, registry
from dlpipe.errors import ConfigError
from dlpipe.gates import ModelGateConfig, run_model_gate
from dlpipe.runctx import RunContext
from dlpipe.storage import open_store
from operators import PromoteModelOperator, RegisterModelOperator
from tests.conftest import ROOT
from tests.dags.test_register_gates import _training
from tests.unit.test_gate_reruns import _evaluation

PIPELINE = str(ROOT / "pipelines" / "eta_training.yaml")


def _context(task_id: str, reason: str = "") -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id=task_id, try_number=1)
    return {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {"reason": reason}}


def _names(datasets) -> list[tuple[str, str, str | None]]:
    """(namespace, name, version) of OpenLineage datasets, as a lineage backend would key them."""
    out = []
    for d in datasets:
        version = d.facets.get("version")
        out.append((d.namespace, d.name, version.datasetVersion if version else None))
    return out


def _stage(home, manifest: dict) -> tuple[str, str, str]:
    """A committed stage partition as OpenLineage names it: its directory, its fingerprint."""
    name, _, version = manifest["id"].partition("@")
    return "file", f"{home}/{name}", version


def _passed_data_gate(dataset: dict) -> dict:
    """A committed data-gate verdict on ``dataset`` (the verdict is what registering checks)."""
    return commit.run_stage(commit.StageKey("gates", "eta_data", dataset["partition"]), inputs=[dataset],
                            config={}, code={"sources_hash": "test"}, run=RunContext(),
                            produce=lambda attempt: {"verdict": "passed"}).manifest


def test_register_and_promote_report_their_inputs_to_openlineage(dlpipe_home):
    training = _training(3.0)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    data_gate = _passed_data_gate(dataset)
    model_gate = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0),
                                champion=None).manifest
    root = str(dlpipe_home / "registry")

    register = RegisterModelOperator(task_id="register_model", training_id=training["id"],
                                     gate_ids=[data_gate["id"], model_gate["id"]], registry_root=root,
                                     pipeline_config=PIPELINE)
    ref = register.execute(_context("register_model"))
    assert ref == "eta@1"
    lineage = register.get_openlineage_facets_on_complete(None)
    assert _names(lineage.outputs) == [("file", f"{root}/eta", "1")]
    assert _names(lineage.inputs) == [_stage(dlpipe_home, m) for m in (training, data_gate, model_gate)]

    promote = PromoteModelOperator(task_id="promote_staging", model_ref=ref, alias="staging",
                                   registry_root=root, pipeline_config=PIPELINE)
    assert promote.execute(_context("promote_staging", reason="retrain after the label fix")) == "eta:staging"
    [move] = registry.get_alias(open_store(root), "eta", "staging")["history"]
    assert move["reason"] == "eta_training r: retrain after the label fix"  # the run's reason reaches the history
    lineage = promote.get_openlineage_facets_on_complete(None)
    assert _names(lineage.inputs) == [("file", f"{root}/eta", "1")]
    assert _names(lineage.outputs) == [("file", f"{root}/eta:staging", None)]

    # a model gate judged against a champion reports it as an input too (a registry version, in
    # the verdict's config rather than its fingerprinted inputs)
    from operators import ModelGateOperator

    judged = run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0),
                            champion={"ref": "eta@1", **_evaluation(3.1)}).manifest
    gate = ModelGateOperator(task_id="model_gate", training_id=training["id"], pipeline_config=PIPELINE)
    gate._committed = judged
    assert _names(gate.get_openlineage_facets_on_complete(None).inputs) == [
        _stage(dlpipe_home, training), ("file", f"{root}/eta", "1")]


def test_lineage_checks_every_link_and_reports_what_was_tampered_with(dlpipe_home, capsys, monkeypatch):
    """`dlpipe lineage` is evidence: a manifest edited after its commit, a changed file (with
    --verify), a torn manifest or an edited version record must show, with exit 1, never a
    confident tree."""
    import hashlib
    import json

    from dlpipe import cli

    training, gates, _ = _registered(dlpipe_home, monkeypatch)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    root = dlpipe_home / "registry"

    def lineage(*flags: str) -> tuple[int, str]:
        code = cli.main(["lineage", "eta@1", *flags])
        return code, capsys.readouterr().out

    code, out = lineage("--verify")
    assert code == 0 and "every link checked: fingerprints match, seals match, files re-hashed" in out
    assert f"gate {gates[0]}: passed" in out

    def only_verify_finds(path, found: str) -> None:
        """``path`` overwritten: only --verify reads the data, and names what it found."""
        original = path.read_bytes()
        path.write_bytes(b"other bytes")
        assert lineage()[0] == 0
        code, out = lineage("--verify")
        assert code == 1 and found in out and "cannot be trusted" in out
        path.write_bytes(original)
        assert lineage("--verify")[0] == 0

    only_verify_finds(commit.files(training)[0], "the stored data was modified after commit")

    # the dataset's manifest edited after its commit (its config), then torn
    mfile = next((commit.location(dataset).parent.parent / "manifests").glob("*.json"))
    text = mfile.read_text()
    edited = json.loads(text)
    edited["config"] = {**edited["config"], "edited": True}
    mfile.write_text(json.dumps(edited))
    code, out = lineage()
    assert code == 1 and f"{dataset['id']}  [" in out and "edited after its commit" in out
    mfile.write_text(text[: len(text) // 2])
    code, out = lineage("--json")
    problems = json.loads(out)["problems"]
    assert code == 1 and any(p.startswith(f"{dataset['id']}: manifest unreadable") for p in problems)
    mfile.write_text(text)
    assert lineage()[0] == 0

    # the gate evidence the record carries is outside its fingerprint: checked against the gates
    rfile = root / "eta" / "versions" / "000001.json"
    original_record = rfile.read_text()
    record = json.loads(original_record)
    record["lineage"]["gate_verdicts"][gates[1]]["verdict"] = "failed"
    rfile.write_text(json.dumps(record))
    code, out = lineage()
    assert code == 1 and f"!! {gates[1]}: the record's copy of its verdict and evidence is not the gate's " \
                         f"(verdict: the gate has 'passed', the record 'failed')" in out
    record = json.loads(original_record)
    record["lineage"]["gate_verdicts"][gates[1]]["evidence"] = "edited"  # the verdict kept, its evidence not
    rfile.write_text(json.dumps(record))
    code, out = lineage()
    assert code == 1 and "(evidence: the gate has " in out and "the record 'edited')" in out
    rfile.write_text(original_record)
    gate_file = next((commit.location(commit.load_manifest(gates[0])).parent.parent / "manifests").glob("*.json"))
    gate_text = gate_file.read_text()
    gate_file.unlink()
    code, out = lineage()
    assert code == 1 and f"!! {gates[0]}: no committed manifest" in out
    gate_file.write_text(gate_text)
    assert lineage()[0] == 0

    # metrics (outside the model fingerprint; `registry list` shows them) and who registered it
    record = json.loads(original_record)
    record["metrics"]["val_mae"] = 0.5
    record["registered_by"]["run_id"] = "r\n  gate forged: passed"
    rfile.write_text(json.dumps(record))
    code, out = lineage()
    assert code == 1 and f"!! eta@1: its metrics are not the ones {training['id']} committed" in out
    assert "\n  gate forged" not in out and "r\\n  gate forged" in out  # escaped, on its own line
    rfile.write_text(original_record)
    assert lineage()[0] == 0

    # a file replaced and its hash and size rewritten in the manifest with it: the files match
    # the list, but the list is not the one committed (the seal) nor the one registered
    tfile = next((commit.location(training).parent.parent / "manifests").glob("*.json"))
    ttext = tfile.read_text()
    (path,) = commit.files(training, "model.safetensors")
    weights = path.read_bytes()
    path.write_bytes(b"poisoned weights")
    forged = json.loads(ttext)
    for f in forged["outputs"]["files"]:
        if f["path"].endswith("model.safetensors"):
            f["sha256"], f["size"] = hashlib.sha256(b"poisoned weights").hexdigest(), len(b"poisoned weights")
    tfile.write_text(json.dumps(forged))
    code, out = lineage("--verify")
    assert code == 1 and "do not give its seal" in out and "the stored data was modified" not in out
    forged["seal"] = commit.content_seal(forged)  # resealed too: the record still holds the old seal
    tfile.write_text(json.dumps(forged))
    code, out = lineage("--verify")
    assert code == 1 and f"{training['id']} is not the manifest it was registered on" in out
    path.write_bytes(weights)
    tfile.write_text(ttext)
    # the dataset's summary (its row counts) edited and resealed: its consumer recorded the old seal
    forged = json.loads(text)
    forged["summary"]["rows"]["train"] = 10**6
    forged["seal"] = commit.content_seal(forged)
    mfile.write_text(json.dumps(forged))
    code, out = lineage()
    assert code == 1 and f"{dataset['id']}: its seal" in out and "its consumer recorded" in out
    mfile.write_text(text)
    assert lineage("--verify")[0] == 0
    # a false code version in the training manifest's record of it
    forged = json.loads(ttext)
    forged["code"]["git_commit"] = "deadbeef" * 5
    tfile.write_text(json.dumps(forged))
    code, out = lineage()
    assert code == 1 and "do not give its seal" in out and "lineage's code is not the one" in out
    tfile.write_text(ttext)
    # the registry's own copy of an artifact
    only_verify_finds(root / "eta" / "blobs" / json.loads(original_record)["artifacts"][0]["sha256"],
                      "the stored artifact model.safetensors has sha256")

    # a record's carried verdict that is not an object is reported, not a traceback
    record = json.loads(original_record)
    record["lineage"]["gate_verdicts"][gates[1]] = "passed"
    rfile.write_text(json.dumps(record))
    code, out = lineage()
    assert code == 1 and "the record's copy of its verdict" in out
    rfile.write_text(original_record)

    # damaged records and manifests are reported, not tracebacks
    record = json.loads(original_record)
    del record["lineage"]
    rfile.write_text(json.dumps(record))
    assert cli.main(["lineage", "eta@1"]) == 2 and "missing field(s) lineage); it was damaged or edited" in \
        capsys.readouterr().err
    rfile.write_text(original_record[: len(original_record) // 2])
    assert cli.main(["lineage", "eta@1"]) == 2 and "its version record in" in capsys.readouterr().err
    rfile.write_text(original_record)
    tfile.write_text('{"id": "x"}')
    code, out = lineage()
    assert code == 1 and "its record or its training's manifest is not what dlpipe writes" in out
    tfile.write_text(ttext)
    assert lineage()[0] == 0

    # the version record edited: its artifacts no longer give its model fingerprint
    record = json.loads(rfile.read_text())
    record["artifacts"][0]["sha256"] = "0" * 64
    rfile.write_text(json.dumps(record))
    code, out = lineage()
    assert code == 1 and "edited after registration" in out and "is not the file" in out


def test_lineage_accepts_records_and_manifests_written_under_earlier_rules(dlpipe_home):
    """A version record whose model fingerprint still covered its gate verdicts, and a manifest
    whose fingerprint covered its sources only though its code recorded more (the digits
    dataset before scikit-learn's version counted), are intact, not tampered with."""
    from dlpipe import registry
    from dlpipe.hashing import fingerprint
    from dlpipe.lineage import manifest_problems

    record = {"name": "eta", "version": 1, "artifacts": [{"name": "m", "sha256": "a" * 64, "size": 1}],
              "lineage": {"training": "t", "gates": ["g"], "gate_verdicts": {"g": {"verdict": "passed"}}}}
    record["model_fingerprint"] = fingerprint({"artifacts": record["artifacts"], "lineage": record["lineage"]})
    assert registry.record_is_intact(record)
    record["model_fingerprint"] = registry.model_identity(record["artifacts"], record["lineage"])
    assert registry.record_is_intact(record)
    record["artifacts"][0]["size"] = 2
    assert not registry.record_is_intact(record)

    key = commit.StageKey("datasets", "digits", "all")
    old_fp = commit.stage_fingerprint(key, [], {"validation_percent": 20}, {"sources_hash": "s"})
    manifest = {"id": f"{key.relpath}@{old_fp[:16]}", "stage": "datasets", "name": "digits", "partition": "all",
                "fingerprint": old_fp, "inputs": [], "config": {"validation_percent": 20},
                "code": {"sources_hash": "s", "scikit_learn": "1.5.2", "dlpipe_version": "0.1.0"}}
    assert manifest_problems(manifest, manifest["id"], None, False) == []
    forged = {**manifest, "code": {**manifest["code"], "torch": "9.9"}}  # the legacy form covers scikit-learn only
    assert "edited after its commit" in manifest_problems(forged, forged["id"], None, False)[0]
    manifest["config"] = {"validation_percent": 30}
    assert "edited after its commit" in manifest_problems(manifest, manifest["id"], None, False)[0]


@pytest.mark.parametrize("root, fix", [("tmp/registry", "another registry on every worker"),
                                       ("s3:/ml-models/reg", "(two slashes)"),
                                       ("s3://AKIAX:secret@ml-models/reg", "credentials do not belong")])
def test_a_bad_registry_root_argument_is_refused_when_the_dag_is_parsed(root, fix):
    """It was refused only when the task ran, after training."""
    from operators import ModelGateOperator

    kw = {"registry_root": root, "pipeline_config": PIPELINE}
    for make in (lambda: RegisterModelOperator(task_id="r", training_id="t", gate_ids=["g"], **kw),
                 lambda: PromoteModelOperator(task_id="p", model_ref="eta@1", **kw),
                 lambda: ModelGateOperator(task_id="m", training_id="t", **kw)):
        with pytest.raises(ConfigError) as refused:
            make()
        assert refused.value.field.endswith("argument registry_root") and fix in refused.value.fix
        assert "secret" not in str(refused.value)
    # a templated root is checked once rendered, when the task runs
    PromoteModelOperator(task_id="p", model_ref="eta@1", registry_root="{{ var.value.registry_root }}",
                         pipeline_config=PIPELINE)


def _registered(dlpipe_home, monkeypatch) -> tuple[dict, list[str], Path]:
    """eta@1 registered on a training, its data gate and model gate; (training, gate ids, record file)."""
    training = _training(3.0)
    dataset = commit.load_manifest(training["inputs"][0]["id"])
    gates = [_passed_data_gate(dataset)["id"],
             run_model_gate(training, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0),
                            champion=None).manifest["id"]]
    root = dlpipe_home / "registry"
    RegisterModelOperator(task_id="register_model", training_id=training["id"], gate_ids=gates,
                          registry_root=str(root), pipeline_config=PIPELINE).execute(_context("register_model"))
    monkeypatch.setenv("DLPIPE_REGISTRY_ROOT", str(root))
    return training, gates, root / "eta" / "versions" / "000001.json"


def _lineage(capsys, *flags: str) -> tuple[int, str]:
    from dlpipe import cli

    code = cli.main(["lineage", "eta@1", *flags])
    return code, capsys.readouterr().out


def test_a_record_whose_lineage_was_rewritten_and_refingerprinted_is_caught(dlpipe_home, monkeypatch, capsys):
    """The record's config and partition lists sit under its model fingerprint, which anyone can
    recompute: they are compared with the manifests they came from."""
    import json

    _, _, rfile = _registered(dlpipe_home, monkeypatch)
    original = rfile.read_text()
    for field, edit in (("config", lambda lin: lin["config"]["train"].update(learning_rate=0.5)),
                        ("raw_partitions", lambda lin: lin["raw_partitions"].append("raw/trips/dt=2026-01-01@0")),
                        ("dataset_fingerprint", lambda lin: lin.update(dataset_fingerprint="0" * 64))):
        record = json.loads(original)
        edit(record["lineage"])
        record["model_fingerprint"] = registry.model_identity(record["artifacts"], record["lineage"])
        rfile.write_text(json.dumps(record))
        code, out = _lineage(capsys, "--verify")
        assert code == 1 and f"eta@1: its lineage's {field} is not what" in out, out
    rfile.write_text(original)
    assert _lineage(capsys, "--verify")[0] == 0


def test_a_training_committed_again_after_registration_is_named_as_such(dlpipe_home, monkeypatch, capsys):
    """Its outputs removed and the stage run again: the same id, another commit. The version
    said 'edited after the registration' five ways; it now says what happened, once, and the
    model gate that judged the first commit no longer vouches for it silently."""
    import json

    training, gates, _ = _registered(dlpipe_home, monkeypatch)
    capsys.readouterr()  # the registration's own log
    tfile = next((commit.location(training).parent.parent / "manifests").glob("*.json"))
    again = json.loads(tfile.read_text())
    again["committed_at"], again["run"] = "2026-12-07T12:00:00+00:00", {**again["run"], "run_id": "rerun"}
    again["seal"] = commit.content_seal(again)
    tfile.write_text(json.dumps(again))
    code, out = _lineage(capsys)
    assert code == 1 and "is not the manifest it was registered on" in out
    assert "committed again at 2026-12-07T12:00:00+00:00 by " in out and "/rerun (its outputs removed" in out
    assert "its metrics are not" not in out and "trained_by" not in out  # the consequences are not listed

    # the model gate recorded the seal of the commit it judged: a version registered on another
    # commit of the same training is not vouched for by that verdict
    record_file = dlpipe_home / "registry" / "eta" / "versions" / "000001.json"
    record = json.loads(record_file.read_text())
    record["lineage"]["seals"] = {training["id"]: again["seal"]}  # as if registered on the new commit
    record["model_fingerprint"] = registry.model_identity(record["artifacts"], record["lineage"])
    record_file.write_text(json.dumps(record))
    code, out = _lineage(capsys)
    assert code == 1 and f"!! {gates[1]}: judged another commit of {training['id']}" in out, out


def test_dataset_show_checks_the_manifests_seal_and_verify_rehashes_its_files(dlpipe_home, capsys):
    import json

    from dlpipe import cli

    def produce(attempt):
        (attempt / "train").mkdir()
        (attempt / "train" / "part-0.parquet").write_bytes(b"PAR1 rows PAR1")
        return {"rows": {"train": 1, "validation": 0}, "splits": ["train"]}

    dataset = commit.run_stage(commit.StageKey("datasets", "eta", "window_end=2026-01-09"), inputs=[], config={},
                               code={"sources_hash": "test"}, run=RunContext(), produce=produce).manifest
    assert cli.main(["dataset", "show", dataset["id"], "--verify"]) == 0
    assert "every file re-hashed" in capsys.readouterr().out
    mfile = next((commit.location(dataset).parent.parent / "manifests").glob("*.json"))
    text = mfile.read_text()
    edited = json.loads(text)
    edited["summary"]["rows"]["train"] = 99999
    mfile.write_text(json.dumps(edited))
    assert cli.main(["dataset", "show", dataset["id"]]) == 1
    assert "edited after its commit" in capsys.readouterr().out
    mfile.write_text(text)
    path = commit.files(dataset, ".parquet")[0]
    path.write_bytes(path.read_bytes() + b"x")
    assert cli.main(["dataset", "show", dataset["id"]]) == 0  # the manifest holds; only --verify reads the files
    capsys.readouterr()
    assert cli.main(["dataset", "show", dataset["id"], "--verify", "--json"]) == 1
    assert "modified after commit" in json.loads(capsys.readouterr().out)["problems"][0]
