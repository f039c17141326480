"""The ``dlpipe`` command on bad input: an error line that names the field, the value and the
fix (exit 2), never a traceback or a secret, and nothing already there changed."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

import pytest

from dlpipe import cli
from dlpipe.errors import ConfigError


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights")
    return d


def test_register_names_a_missing_or_broken_metrics_file_and_a_missing_model_dir(capsys, tmp_path):
    model = _model_dir(tmp_path)
    code, _, err = _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(tmp_path / "no.json"))
    assert code == 2 and "invalid --metrics=" in err and "no such file" in err
    (tmp_path / "bad.json").write_text("{val_mae: 3")
    code, _, err = _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(tmp_path / "bad.json"))
    assert code == 2 and "not JSON" in err and '{"val_mae": 3.7}' in err
    code, _, err = _run(capsys, "registry", "register", "eta", str(tmp_path / "nowhere"))
    assert code == 2 and "invalid model_dir=" in err and "existing directory" in err
    code, out, _ = _run(capsys, "registry", "register", "eta", str(model))
    assert code == 0 and "eta@1 registered" in out


def test_registering_into_a_root_that_held_no_registry_says_it_is_a_new_one(capsys, tmp_path, dlpipe_home):
    """A misspelt --root made a second registry with its own eta@1, without a word."""
    model = _model_dir(tmp_path)
    code, out, _ = _run(capsys, "registry", "register", "eta", str(model))
    assert code == 0 and "held no registry before this: it is a new one" in out
    typo = tmp_path / "regsitry"
    code, out, _ = _run(capsys, "registry", "register", "eta", str(model), "--root", str(typo))
    assert code == 0 and f"note: {typo} held no registry before this" in out
    code, out, _ = _run(capsys, "registry", "register", "other", str(model))
    assert code == 0 and "note:" not in out  # a registry that holds versions already


def test_lineage_of_a_model_registered_from_outside_a_pipeline(capsys, tmp_path):
    assert _run(capsys, "registry", "register", "eta", str(_model_dir(tmp_path)))[0] == 0
    code, out, _ = _run(capsys, "lineage", "eta@1")
    assert code == 0 and "no pipeline lineage: " in out and "source=external" in out
    code, out, _ = _run(capsys, "lineage", "eta@1", "--json")
    assert code == 0 and json.loads(out)["chain"] is None


def test_a_failed_download_changes_nothing_in_the_destination(capsys, tmp_path, dlpipe_home):
    assert _run(capsys, "registry", "register", "eta", str(_model_dir(tmp_path)))[0] == 0
    [blob] = (dlpipe_home / "registry" / "eta" / "blobs").iterdir()
    blob.write_bytes(b"tampered")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"weights")  # a download of eta@1 made before the tampering
    code, _, err = _run(capsys, "registry", "download", "eta@1", str(dest))
    assert code == 2 and "modified" in err and "nothing in" in err
    assert [p.name for p in dest.iterdir()] == ["model.safetensors"]
    assert (dest / "model.safetensors").read_bytes() == b"weights"
    (dest / "model.safetensors").write_bytes(b"mine")  # another model's file under the same name
    code, _, err = _run(capsys, "registry", "download", "eta@1", str(dest))
    assert code == 2 and "holds other bytes under eta@1's file names (model.safetensors)" in err
    assert (dest / "model.safetensors").read_bytes() == b"mine"
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "registry", "download", "eta@1", str(tmp_path / "afile"))
    assert code == 2 and "invalid dest=" in err and "not a file" in err
    with pytest.raises(SystemExit):  # '' was the working directory, and its files were listed
        _run(capsys, "registry", "download", "eta@1", "")
    assert "DEST is empty" in capsys.readouterr().err


def test_credentials_in_a_root_or_endpoint_url_are_refused_without_being_shown(capsys, monkeypatch):
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    code, _, err = _run(capsys, "registry", "list", "--root", f"s3://AKIAEXAMPLE:{secret}@models/reg")
    assert code == 2 and "credentials do not belong in the URI" in err and "s3://***@models/reg" in err
    assert secret not in err and "AKIAEXAMPLE" not in err
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg",
                        "--endpoint-url", f"http://admin:{secret}@127.0.0.1:9000")
    assert code == 2 and "invalid --endpoint-url=" in err and "***@127.0.0.1:9000" in err
    assert secret not in err
    code, _, err = _run(capsys, "registry", "list", "--root", "s3:/models/reg")  # would be a folder 's3:'
    assert code == 2 and "invalid registry root='s3:/models/reg'" in err and "(two slashes)" in err
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg", "--endpoint-url", "notaurl")
    assert code == 2 and "invalid --endpoint-url='notaurl'" in err and "http(s)://HOST" in err
    monkeypatch.setenv("DLPIPE_REGISTRY_ROOT", f"ftp://u:{secret}@host/x")
    code, _, err = _run(capsys, "registry", "list")
    assert code == 2 and "registry root" in err and secret not in err


def test_a_token_in_an_endpoint_urls_query_is_refused_and_never_shown(capsys, monkeypatch):
    """botocore refused such an endpoint with the whole URL in its message, which reached stderr
    and the audit log of a promotion."""
    from dlpipe import audit

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    for query in ("?X-Amz-Signature=abc&token=TopSecretTok", "?token=TopSecretTok", "#TopSecretTok"):
        code, _, err = _run(capsys, "registry", "promote", "eta@1", "production", "--root", "s3://mlreg/reg",
                            "--endpoint-url", f"http://127.0.0.1:8099/{query}")
        assert code == 2 and "takes no query or fragment" in err and "TopSecret" not in err, err
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8099/?token=TopSecretTok")
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://mlreg/reg")
    assert code == 2 and "AWS_ENDPOINT_URL" in err and "TopSecret" not in err, err
    assert all("TopSecret" not in json.dumps(event) for event in audit.read())


def test_credential_values_in_any_urls_query_are_masked_in_messages():
    from dlpipe.errors import redacted

    shown = redacted("Custom endpoint `http://h:1/?X-Amz-Signature=abc&X-Amz-Security-Token=TOK&region=eu` "
                     "was not a valid URI; see https://x/y?api_key=K1&page=2#top")
    assert shown == ("Custom endpoint `http://h:1/?X-Amz-Signature=***&X-Amz-Security-Token=***&region=eu` "
                     "was not a valid URI; see https://x/y?api_key=***&page=2#top")
    # the fragment (OAuth's access_token) and pwd too; names that only contain such a word stay
    assert redacted("https://idp/cb#access_token=SEKRET2&state=1 and https://h/p?pwd=SEKRET3") == (
        "https://idp/cb#access_token=***&state=1 and https://h/p?pwd=***")
    kept = "https://h/x?design=a&max-keys=1000&author=bob&signed=1"
    assert redacted(kept) == kept


def test_a_login_whose_secret_holds_a_slash_is_refused_without_being_shown(capsys, tmp_path):
    """urlparse ends the host part at the first '/', and AWS secret keys hold '/'s: such a root
    got through every check, became a bucket named 'KEY:SEC', and botocore's error repeated it to
    stderr and the audit log. A misspelt scheme with a login is masked too."""
    from dlpipe import audit
    from dlpipe.pipeline_config import section
    from dlpipe.registry import RegistryConfig

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    roots = [f"s3://AKIAEXAMPLE:{secret}@models/reg", f"s3:AKIAEXAMPLE:{secret}@models/reg"]
    for root in roots:
        code, _, err = _run(capsys, "registry", "register", "eta", str(tmp_path), "--root", root)
        assert code == 2 and "***@models/reg" in err, err
        assert "AKIAEXAMPLE" not in err and "wJalr" not in err
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg",
                        "--endpoint-url", f"http://AKIAEXAMPLE:{secret}@127.0.0.1:9")
    assert code == 2 and "credentials do not belong in the endpoint URL" in err and "AKIAEXAMPLE" not in err
    with pytest.raises(ConfigError, match="credentials do not belong") as e:  # as a spec's section
        section({"_source": "p.yaml", "registry": {"root": roots[0]}}, "registry", RegistryConfig)
    assert "AKIAEXAMPLE" not in str(e.value) and "wJalr" not in str(e.value)
    assert all("AKIAEXAMPLE" not in json.dumps(event) for event in audit.read())
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://KEY:not_a_bucket/reg")
    assert code == 2 and "a bucket name is" in err  # refused before botocore repeats it


@pytest.mark.parametrize("var", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_endpoint_with_a_login_from_the_environment_is_refused_everywhere(capsys, monkeypatch, var):
    """boto3 reads the endpoint from either variable (and from profiles and connection extras);
    botocore repeats it in connection errors, so the store refuses a client whose endpoint has a
    login, for the CLI and the operators alike."""
    from operators.registry import registry_store

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    for other in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(var, f"http://AKIAEXAMPLE:{secret}@127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg")
    assert code == 2 and f"invalid {var}=" in err and "***@127.0.0.1:1" in err
    assert secret not in err and "AKIAEXAMPLE" not in err
    with pytest.raises(ConfigError, match="credentials do not belong in the endpoint URL") as caught:
        registry_store("s3://models/reg", None)
    assert secret not in str(caught.value)
    monkeypatch.setenv(var, "127.0.0.1:9000")  # no scheme: boto3 raised a bare ValueError
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg")
    assert code == 2 and f"invalid {var}='127.0.0.1:9000'" in err and "http(s)://HOST" in err


def test_a_failure_audited_with_a_url_login_in_its_message_is_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    error = ConnectionError('Could not connect to the endpoint URL: "http://AKIAEXAMPLE:s3cr3tKEY/x@10.0.0.1/b"')
    audit.failed(error, stage="registry", run=RunContext())
    [event] = [e for e in audit.read() if e["event"] == "failed"]
    assert "s3cr3tKEY" not in event["error"] and "AKIAEXAMPLE" not in event["error"]
    assert "http://***@10.0.0.1/b" in event["error"]


def test_a_started_event_masks_a_login_or_a_credential_in_the_config_it_records(tmp_path, monkeypatch):
    """A second guard behind the configs' validators: the audit log outlives every task log."""
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    config = {"spark_master": "k8s://https://admin:Kube/Pass@api:6443", "db_password": "hunter2",
              "model": "s3://bucket/eta@3/model.pt", "epochs": 3}
    audit.record("started", stage="gates/eta", run=RunContext(), config=config)
    [event] = audit.read()
    assert event["config"] == {"spark_master": "k8s://***@api:6443", "db_password": "***",
                               "model": "s3://bucket/eta@3/model.pt", "epochs": 3}


def test_missing_s3_credentials_get_a_hint_not_a_traceback(capsys, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the credentials it found first
    code, _, err = _run(capsys, "registry", "list", "--root", "s3://models/reg",
                        "--endpoint-url", "http://127.0.0.1:9")
    assert code == 2 and "no AWS credentials" in err and "AWS_ACCESS_KEY_ID" in err


def test_demo_data_names_a_bad_start_date(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo-data", "--start", "junk"])
    assert exit_.value.code == 2
    assert "'junk' is not a date; use YYYY-MM-DD" in capsys.readouterr().err


def test_alias_references_and_metrics_are_checked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    for ref in ("eta", "eta@1", "eta:"):
        code, _, err = _run(capsys, "registry", "rollback", ref)
        assert code == 2 and f"invalid alias reference={ref!r}" in err and "NAME:ALIAS" in err
    code, _, err = _run(capsys, "registry", "history", "eta@1")
    assert code == 2 and "NAME:ALIAS" in err
    # a misspelt model is an error; a registered model whose alias was never set is not
    assert _run(capsys, "registry", "register", "eta", str(model))[0] == 0
    code, _, err = _run(capsys, "registry", "history", "etaa:production")
    assert code == 2 and "invalid model='etaa'" in err and "dlpipe registry list" in err
    assert _run(capsys, "registry", "history", "eta:production")[0] == 0
    # the list shows the validation metrics a version has, whichever its kind reports
    (tmp_path / "m.json").write_text('{"val_error": 0.031, "train_error": 0.01, "samples_per_s": 9}')
    (model / "model.safetensors").write_bytes(b"w2")
    assert _run(capsys, "registry", "register", "digits", str(model), "--metrics", str(tmp_path / "m.json"))[0] == 0
    code, out, _ = _run(capsys, "registry", "list")
    assert code == 0 and "val_error=0.031" in out and "train_error" not in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("eta@1")] == ["-"]
    (tmp_path / "nan.json").write_text('{"val_mae": NaN}')
    code, _, err = _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(tmp_path / "nan.json"))
    assert code == 2 and "invalid --metrics val_mae=nan" in err and "finite" in err


def test_names_with_a_trailing_newline_and_control_characters_in_output(capsys, tmp_path, monkeypatch):
    """'demo\\n' passed a ^...$ check (match() and $ take a final newline) and made a look-alike
    model; a reason with a newline or an escape sequence could forge lines of `dlpipe audit`."""
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"w")
    code, _, err = _run(capsys, "registry", "register", "demo\n", str(model))
    assert code == 2 and "invalid model name" in err
    assert _run(capsys, "registry", "register", "demo", str(model))[0] == 0
    code, _, err = _run(capsys, "registry", "promote", "demo@1", "production\n")
    assert code == 2 and "invalid alias" in err
    audit.record("started", stage="s", run=RunContext(run_id="r1", reason="ok\x1b[2K\rrun r0: approved\nforged"))
    code, out, _ = _run(capsys, "audit")
    assert code == 0 and "\x1b" not in out and "\\x1b[2K\\rrun r0: approved\\nforged" in out
    (tmp_path / "nested.json").write_text('{"val_mae": 3.0, "eval": {"mae": NaN}}')
    code, _, err = _run(capsys, "registry", "register", "demo", str(model), "--metrics", str(tmp_path / "nested.json"))
    assert code == 2 and "invalid --metrics eval.mae=nan" in err


def test_a_refused_promotion_by_hand_leaves_a_failed_event(capsys, tmp_path):
    """Production moves are made by hand: a refused one (no such version, a compare-and-swap
    that lost) is in the audit log beside the ones that went through."""
    from dlpipe import audit

    model = _model_dir(tmp_path)
    assert _run(capsys, "registry", "register", "eta", str(model))[0] == 0
    code, _, err = _run(capsys, "registry", "promote", "eta@7", "production")
    assert code == 2 and "not registered" in err
    assert _run(capsys, "registry", "promote", "eta@1", "production")[0] == 0
    code, _, err = _run(capsys, "registry", "promote", "eta@1", "production", "--expect-version", "3")
    assert code == 2
    failed = [e for e in audit.read() if e["event"] == "failed"]
    assert [(e["stage"], e["manifest_id"], e["run"]["task_id"]) for e in failed] == [
        ("registry", "eta:production", "registry promote")] * 2
    assert "eta@7 is not registered" in failed[0]["error"]


def test_alias_history_names_the_person_or_the_dag_run_that_moved_it(capsys, tmp_path):
    from dlpipe import registry, settings
    from dlpipe.runctx import RunContext
    from dlpipe.storage import open_store

    model = _model_dir(tmp_path)
    assert _run(capsys, "registry", "register", "eta", str(model))[0] == 0
    store = open_store(str(settings.registry_root()))
    registry.promote(store, "eta", "staging", 1, reason="nightly", run=RunContext(
        dag_id="eta_training", run_id="scheduled__x", task_id="promote_staging", triggered_by="scheduled"))
    assert _run(capsys, "registry", "promote", "eta@1", "production", "--reason", "launch")[0] == 0
    _, staging, _ = _run(capsys, "registry", "history", "eta:staging")
    _, production, _ = _run(capsys, "registry", "history", "eta:production")
    assert "eta_training.promote_staging (scheduled)" in staging
    assert RunContext().user in production


def test_an_empty_registry_list_says_which_registry_it_read(capsys, tmp_path):
    """A wrong working directory or DLPIPE_HOME reads another (empty) registry: say where."""
    code, out, _ = _run(capsys, "registry", "list", "--root", str(tmp_path / "reg"))
    assert code == 0 and out.strip() == (f"(no registry at {tmp_path / 'reg'}: the directory does not exist, so "
                                         f"nothing was ever registered there; check --root and DLPIPE_REGISTRY_ROOT)")
    (tmp_path / "reg").mkdir()
    code, out, _ = _run(capsys, "registry", "list", "--root", str(tmp_path / "reg"))
    assert code == 0 and out.strip() == f"(no versions in the registry {tmp_path / 'reg'})"
    code, out, _ = _run(capsys, "registry", "list", "eta", "--root", str(tmp_path / "reg"), "--json")
    assert code == 0 and out.strip() == "[]"


def test_promote_says_whether_it_moved_and_rollback_says_what_to_do_instead(capsys, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for weights in (b"w1", b"w2"):
        (model / "model.safetensors").write_bytes(weights)
        assert _run(capsys, "registry", "register", "eta", str(model))[0] == 0
    code, _, err = _run(capsys, "registry", "rollback", "eta:production")
    assert code == 2 and "it was never set" in err and "dlpipe registry promote eta@VERSION production" in err
    assert _run(capsys, "registry", "promote", "eta@1", "production")[1].strip() == "eta:production -> version 1 (set)"
    code, _, err = _run(capsys, "registry", "rollback", "eta:production")
    assert code == 2 and "pointed only at version 1" in err
    out = _run(capsys, "registry", "promote", "eta@1", "production")[1]
    assert out.strip() == "eta:production -> version 1 (already there: nothing changed)"
    code, out, err = _run(capsys, "registry", "promote", "eta@2", "production")
    assert out.strip() == "eta:production -> version 2 (moved from version 1)"
    # a version registered from outside a pipeline passed no gate: the promotion says so
    assert code == 0 and "warning: eta@2 passed no gate" in err and "When a gate fails" in err


def test_a_path_of_the_wrong_kind_is_an_error_not_a_traceback(capsys, tmp_path, dlpipe_home):
    model = _model_dir(tmp_path)
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(model))
    assert code == 2 and "invalid --metrics=" in err and "a directory" in err
    code, _, err = _run(capsys, "registry", "register", "eta", str(model), "--root", str(tmp_path / "afile/reg"))
    assert code == 2 and "Not a directory" in err and "afile" in err and "--root" in err
    root = str(tmp_path / "reg")
    assert _run(capsys, "registry", "register", "eta", str(model), "--root", root)[0] == 0
    code, _, err = _run(capsys, "registry", "download", "eta@1", str(tmp_path / "afile/sub"), "--root", root)
    assert code == 2 and "Not a directory" in err and "Traceback" not in err


def test_operators_refuse_a_relative_registry_root_from_the_environment(monkeypatch, tmp_path):
    """Each worker would resolve it against its own working directory: a registry per worker."""
    from operators.registry import registry_store

    monkeypatch.setenv("DLPIPE_REGISTRY_ROOT", "models/registry")
    with pytest.raises(ConfigError, match=r"invalid DLPIPE_REGISTRY_ROOT='models/registry'.*absolute directory"):
        registry_store(None, None)
    monkeypatch.setenv("DLPIPE_REGISTRY_ROOT", str(tmp_path / "registry"))
    assert registry_store(None, None).uri == str(tmp_path / "registry")


def test_the_audit_table_shows_who_triggered_a_run_and_how(capsys, dlpipe_home):
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    audit.record("committed", stage="training", manifest_id="m",
                 run=RunContext(dag_id="d", run_id="backfill__x", task_id="train", try_number=1,
                                triggered_by="ana", run_type="backfill"))
    audit.record("committed", stage="training", manifest_id="m",
                 run=RunContext(dag_id="d", run_id="scheduled__x", task_id="train", try_number=1,
                                triggered_by="scheduled", run_type="scheduled"))
    code, out, _ = _run(capsys, "audit", "--dag-id", "d")
    assert code == 0 and "ana (backfill)" in out and " scheduled " in out and "triggered" in out


def test_the_audit_table_of_a_run_id_two_dags_share_names_each_dag_and_keeps_both_reasons(capsys, dlpipe_home):
    """backfill__<date> is every DAG's run id for that date: the table could not tell the teams'
    rows apart, and one team's reason replaced the other's in the header."""
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    for dag, why in (("fraud_eta", "FRAUD: relabel"), ("maps_training", "MAPS: quarterly audit")):
        audit.record("committed", stage="training", manifest_id=f"{dag}@1",
                     run=RunContext(dag_id=dag, run_id="backfill__2026-01-03", task_id="train", reason=why))
    code, out, _ = _run(capsys, "audit", "--run-id", "backfill__2026-01-03")
    assert code == 0 and "run backfill__2026-01-03 of fraud_eta: FRAUD: relabel" in out
    assert "run backfill__2026-01-03 of maps_training: MAPS: quarterly audit" in out
    assert " dag " in out and " fraud_eta " in out and " maps_training " in out
    code, out, _ = _run(capsys, "audit", "--dag-id", "fraud_eta")  # one DAG: no column for it
    assert "run backfill__2026-01-03: FRAUD: relabel" in out and " dag " not in out


def test_the_audit_table_tells_two_commits_of_one_id_apart(capsys, dlpipe_home):
    """Three commits of one training id, each after its outputs were removed, all read 'try 1,
    dag_test': only --json told them apart. The table shows the attempt and the seal."""
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    run = RunContext(dag_id="d", run_id="r", task_id="train", try_number=1)
    audit.record("committed", stage="training", manifest_id="m", attempt_id="aaaa1111bbbb", seal="5e41" * 16, run=run)
    audit.record("committed", stage="training", manifest_id="m", attempt_id="cccc2222dddd", seal="9f00" * 16, run=run)
    audit.record("skipped", stage="training", manifest_id="m", committed_attempt_id="cccc2222dddd", run=run,
                 reason="already committed")
    code, out, _ = _run(capsys, "audit", "--dag-id", "d")
    lines = out.splitlines()
    assert code == 0 and "attempt" in lines[0] and "seal" in lines[0]
    assert "aaaa1111" in lines[2] and "5e415e41" in lines[2] and "cccc2222" in lines[3] and "9f009f00" in lines[3]
    assert "cccc2222" in lines[4]  # the skip names the attempt that committed


def test_a_registry_change_is_not_made_when_its_audit_event_cannot_be_written(capsys, tmp_path, monkeypatch):
    """Before, the alias moved (and a version was registered) and the command then failed on the
    audit log, exit 2: the user retried a change that had been made, and it had no audit event."""
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path / "home"))
    root = str(tmp_path / "reg")
    assert _run(capsys, "registry", "register", "eta", str(_model_dir(tmp_path)), "--root", root)[0] == 0
    audit_dir = tmp_path / "home" / "audit"
    (audit_dir / "events.jsonl").unlink()
    audit_dir.rmdir()
    audit_dir.write_text("a file where the audit folder belongs")  # as unwritable as a read-only mount
    code, _, err = _run(capsys, "registry", "promote", "eta@1", "staging", "--root", root)
    assert code == 2 and "audit" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"other weights")
    assert _run(capsys, "registry", "register", "eta", str(other), "--root", root)[0] == 2
    audit_dir.unlink()
    _, out, _ = _run(capsys, "registry", "list", "eta", "--root", root, "--json")
    assert [v["version"] for v in json.loads(out)] == [1]  # nothing registered
    _, out, _ = _run(capsys, "registry", "history", "eta:staging", "--root", root)
    assert "eta:staging has never been set" in out  # nothing moved


def test_registry_answers_name_unset_aliases_wrong_expectations_and_ignored_metrics(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    model = _model_dir(tmp_path)
    (tmp_path / "a.json").write_text('{"val_mae": 3.1}')
    (tmp_path / "b.json").write_text('{"val_mae": 9.0}')
    assert _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(tmp_path / "a.json"))[0] == 0
    code, out, _ = _run(capsys, "registry", "register", "eta", str(model), "--metrics", str(tmp_path / "b.json"))
    assert code == 0 and "already registered (identical model); its recorded metrics and note are kept" in out
    code, out, _ = _run(capsys, "registry", "register", "eta", str(model))
    assert out.strip() == "eta@1 already registered (identical model)"
    assert _run(capsys, "registry", "promote", "eta@1", "staging")[0] == 0
    code, out, _ = _run(capsys, "registry", "history", "eta:stagng")  # printed '(none)' before
    assert code == 0 and out.strip() == "eta:stagng has never been set; the aliases of eta that are set: staging"
    for bad in ("0", "-5", "x"):
        with pytest.raises(SystemExit):
            _run(capsys, "registry", "promote", "eta@1", "production", "--expect-version", bad)
        assert "is not a version number" in capsys.readouterr().err
    code, _, err = _run(capsys, "registry", "promote", "eta@1", "production", "--expect-version", "2")
    assert code == 2 and "eta:production is not set, not at the expected version 2" in err  # 'version None'
    assert _run(capsys, "registry", "promote", "eta@1", "production", "--expect-unset")[0] == 0
    code, _, err = _run(capsys, "registry", "promote", "eta@1", "production", "--expect-unset")
    assert code == 2 and "eta:production is set (version 1), not unset as expected" in err


def test_audit_filters_refuse_empty_values_and_say_when_nothing_matches(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    audit.record("started", stage="s", run=RunContext(dag_id="eta_training", run_id="r1"))
    for argv in (("audit", "--run-id", ""), ("audit", "--dag-id", " "), ("summary", "--run-id", "")):
        with pytest.raises(SystemExit):  # `--run-id "$UNSET"` selected every run before
            _run(capsys, *argv)
        assert "is empty; give a value or leave the option out" in capsys.readouterr().err
    code, out, err = _run(capsys, "audit", "--run-id", "r2")
    assert code == 1 and "no audit events for run 'r2'" in err and out == ""
    assert _run(capsys, "audit", "--run-id", "r1")[0] == 0


def test_demo_data_says_when_a_day_is_committed_again_with_other_settings(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    assert _run(capsys, "demo-data", "--days", "1", "--rows-per-day", "5")[0] == 0
    code, out, _ = _run(capsys, "demo-data", "--days", "1", "--rows-per-day", "6")
    assert code == 0 and "committed: supersedes the version of seed 7, 5 rows (readers take the newest)" in out
    code, out, _ = _run(capsys, "demo-data", "--days", "1", "--rows-per-day", "6")
    assert "skipped (exists)" in out
    # back to the first settings: they were skipped (and readers kept the 6-row version), now
    # they are the newest version again
    code, out, _ = _run(capsys, "demo-data", "--days", "1", "--rows-per-day", "5")
    assert code == 0 and "committed: supersedes the version of seed 7, 6 rows" in out
    from dlpipe import commit
    from feature_jobs.feature_stage import committed_days

    [day], _ = committed_days("trips", "raw", [date(2026, 1, 1)], required=True)
    assert day["summary"]["rows"] == 5 and len(commit.committed(commit.StageKey("raw", "trips", "dt=2026-01-01"))) == 3
    assert "skipped (exists)" in _run(capsys, "demo-data", "--days", "1", "--rows-per-day", "5")[1]
    code, _, err = _run(capsys, "demo-data", "--rows-per-day", "2000000000")  # a numpy MemoryError before
    assert code == 2 and "rows_per_day=2000000000: use 1 to 10,000,000 rows" in err
    code, _, err = _run(capsys, "demo-data", "--rows-per-day", "0")  # empty days the feature stage refuses
    assert code == 2 and "rows_per_day=0: use 1 to" in err


def test_the_summary_reports_the_training_of_a_kind_it_does_not_know():
    """A team's own kind (speeds in km/h): `dlpipe summary` failed with KeyError 'train_error'
    after a run where every stage committed."""
    from dlpipe.cli import _quality

    assert _quality({"train_mae": 1.0, "val_mae": 2.0, "baseline_mae": 4.0}).startswith("train MAE 1.000 min")
    assert _quality({"train_error": 0.01, "val_error": 0.02, "baseline_error": 0.9}).startswith("train error 1.00%")
    assert _quality({"train_mae_kmh": 3.25, "val_mae_kmh": 3.5, "baseline_mae_kmh": 9.0, "world_size": 2,
                     "samples_per_s": 10.0}) == "baseline_mae_kmh 9.000, train_mae_kmh 3.250, val_mae_kmh 3.500"


def test_manifest_show_answers_who_when_which_inputs_code_and_config_for_any_stage(capsys, dlpipe_home):
    """The audit questions of a raw, feature or gate manifest needed its JSON file: `dataset
    show` covers datasets only, and lineage showed dag, run, task and try."""
    from dlpipe import commit
    from dlpipe.commit import StageKey, run_stage
    from dlpipe.lineage import manifest_tree
    from dlpipe.runctx import RunContext

    def produce(attempt: Path) -> dict:
        (attempt / "part-0.txt").write_text("x\n")
        return {"rows": 1}

    run = RunContext(dag_id="fraud", run_id="r1", task_id="features", try_number=2, triggered_by="ana",
                     run_type="manual", reason="backfill \x1b[31mQ3")
    raw = run_stage(StageKey("raw", "trips", "dt=2026-01-01"), inputs=[], config={}, code={"sources_hash": "a" * 64},
                    run=RunContext(), produce=produce).manifest
    feat = run_stage(StageKey("features", "fraud", "dt=2026-01-01"), inputs=[raw], config={"lookback_days": 7},
                     code={"sources_hash": "b" * 64}, run=run, produce=produce).manifest
    assert cli.main(["manifest", "show", feat["id"]]) == 0
    out = capsys.readouterr().out
    assert f"manifest   {feat['id']}" in out and "fraud/r1 task features try 2" in out
    assert f"user {run.user} on {run.host}, triggered by ana (manual), reason: backfill \\x1b[31mQ3" in out
    assert "code       bbbbbbbbbbbb" in out and '"lookback_days": 7' in out and f"inputs     {raw['id']}" in out
    assert "part-0.txt" in out and "fingerprint and seal match" in out
    node = manifest_tree(feat["id"])  # lineage's --json carries the same
    assert node["run"]["user"] == run.user and node["config"] == {"lookback_days": 7}
    assert node["code"]["sources_hash"] == "b" * 64 and node["inputs"][0]["run"]["user"] == RunContext().user

    [path] = commit.files(feat)
    path.write_text("y\n")
    assert cli.main(["manifest", "show", feat["id"], "--verify"]) == 1
    assert "modified after commit" in capsys.readouterr().out
    assert cli.main(["manifest", "show", "features/fraud/dt=2026-01-01@" + "0" * 16, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["missing"] is True


def test_a_manifest_from_before_seals_is_not_said_to_match_its_seal(capsys, dlpipe_home):
    """An old manifest's summary and run were edited (rows 99999, user mallory): `manifest show`
    and `lineage --verify` said 'seal match(es)' of a manifest that has none."""
    from dlpipe import commit
    from dlpipe.commit import StageKey, run_stage
    from dlpipe.lineage import manifest_tree, unsealed
    from dlpipe.runctx import RunContext

    produce = lambda attempt: (attempt / "part-0.txt").write_text("x") and {"rows": 1}  # noqa: E731
    raw = run_stage(StageKey("raw", "trips", "dt=2026-01-01"), inputs=[], config={}, code={"sources_hash": "a" * 64},
                    run=RunContext(), produce=produce).manifest
    feat = run_stage(StageKey("features", "eta", "dt=2026-01-01"), inputs=[raw], config={},
                     code={"sources_hash": "b" * 64}, run=RunContext(), produce=produce).manifest
    path = commit._manifest_path(StageKey("raw", "trips", "dt=2026-01-01"), raw["fingerprint"])
    old = {k: v for k, v in raw.items() if k != "seal"}  # as an earlier release committed it
    path.write_text(json.dumps({**old, "summary": {"rows": 99999}}))
    assert cli.main(["manifest", "show", raw["id"]]) == 0
    out = capsys.readouterr().out
    assert "fingerprint matches; no seal (committed before seals)" in out and "seal match" not in out
    assert unsealed(manifest_tree(feat["id"])) == [raw["id"]]


def test_the_summary_shows_a_failed_gates_checks_and_what_to_do(capsys, dlpipe_home):
    """The 'why' column cut a gate's error inside its evidence path, before the failed checks
    (and showed its newline as a literal \\n); the checks were only in --json."""
    from dlpipe import audit
    from dlpipe.errors import GateFailed
    from dlpipe.gates import DATA_GATE_NEXT
    from dlpipe.runctx import RunContext

    run = RunContext(dag_id="d", run_id="r", task_id="extract_features", try_number=1, pipeline_stage="extract_features")
    audit.record("committed", stage="features", run=run, manifest_id="features/eta/dt=2026-01-03@1")
    gate = RunContext(dag_id="d", run_id="r", task_id="data_gate", try_number=1, pipeline_stage="data_gate")
    error = GateFailed("data gate on datasets/eta/window_end=2026-01-03@2 (evidence: /" + "x" * 120 + ")",
                       ["train.distance_km: expect_column_max_to_be_between {'max_value': 100.0} -> observed 560.2"],
                       DATA_GATE_NEXT)
    audit.failed(error, stage="gates", run=gate)
    code, out, _ = _run(capsys, "summary", "--dag-id", "d", "--run-id", "r")
    assert code == 1
    [row] = [line for line in out.splitlines() if line.startswith("data_gate  ")]  # the table row
    assert "GateFailed: data gate on datasets/eta" in row and row.rstrip().endswith("...") and "\\n" not in row
    assert "data_gate failed: GateFailed: data gate on" in out
    assert "  - train.distance_km: expect_column_max_to_be_between {'max_value': 100.0} -> observed 560.2" in out
    assert "next: the window's newest day" in out and "When a gate fails" in out
    code, out, _ = _run(capsys, "audit", "--run-id", "r")
    [row] = [line for line in out.splitlines() if " failed " in line]
    assert " None " not in row and " - " in row  # no manifest: a dash


def test_the_summary_marks_results_from_before_a_later_failure_as_stale(capsys, dlpipe_home):
    """A run whose model gate failed again after a clear showed register_model 'committed eta@2'
    from its earlier try, and its details (model registered, alias moved), as if the run had
    ended there."""
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    def event(kind: str, task: str, try_number: int, **fields) -> None:
        audit.record(kind, stage="x", run=RunContext(dag_id="d", run_id="r", task_id=task, try_number=try_number,
                                                     pipeline_stage=task), **fields)

    for task in ("extract_features", "materialize_dataset", "data_gate", "train", "model_gate"):
        event("committed", task, 1, manifest_id=f"{task}@1")
    event("committed", "register_model", 1, manifest_id="eta@2")
    event("committed", "promote_staging", 1, manifest_id="eta:staging")
    event("committed", "train", 2, manifest_id="train@2")  # cleared with a new train: config
    time.sleep(0.01)  # events are stamped to the millisecond; tasks of a run are seconds apart
    event("failed", "model_gate", 2, error="GateFailed: model gate on train@2 failed (1 check(s)):\n  - champion")
    code, out, _ = _run(capsys, "summary", "--dag-id", "d", "--run-id", "r")
    rows = {line.split()[0]: line for line in out.splitlines()[4:11]}
    assert code == 1 and " committed " in rows["train"] and " failed " in rows["model_gate"]
    for task in ("register_model", "promote_staging"):
        assert " stale " in rows[task] and "from before model_gate failed at" in rows[task], rows[task]


def test_the_summary_does_not_borrow_an_earlier_tries_results_when_the_run_is_run_again(capsys, dlpipe_home):
    """A backfill reprocessed a run (same run id): its first stages skipped again, its promotion
    waited, and the summary showed try 1's promotion as the run's, with exit 0."""
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    def event(kind: str, task: str, try_number: int, **fields) -> None:
        audit.record(kind, stage="x", run=RunContext(dag_id="d", run_id="r", task_id=task, try_number=try_number,
                                                     pipeline_stage=task), **fields)

    tasks = ("extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model",
             "promote_staging")
    for task in tasks:
        event("started", task, 1)
        event("committed", task, 1, manifest_id=f"{task}@1")
    assert _run(capsys, "summary", "--dag-id", "d", "--run-id", "r")[0] == 0
    time.sleep(0.01)  # events are stamped to the millisecond; tasks of a run are seconds apart
    for task in tasks[:5]:  # reprocessed: every stage so far skips, the registration is running
        event("started", task, 2)
        event("skipped", task, 2, manifest_id=f"{task}@1")
    event("started", "register_model", 2)
    code, out, _ = _run(capsys, "summary", "--dag-id", "d", "--run-id", "r")
    rows = {line.split()[0]: line for line in out.splitlines()[4:11]}
    assert code == 1 and " skipped " in rows["model_gate"]
    assert " running " in rows["register_model"] and "try 2 started at" in rows["register_model"]
    assert " stale " in rows["promote_staging"] and "from before" in rows["promote_staging"], rows["promote_staging"]
    assert "audit --dag-id d --run-id 'r'" in out


def test_audit_verify_reports_the_chain_and_exits_1_on_a_break(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DLPIPE_HOME", str(tmp_path))
    from dlpipe import audit
    from dlpipe.runctx import RunContext

    for stage in ("a", "b", "c"):
        audit.record("started", stage=stage, run=RunContext(dag_id="eta_training", run_id="r1"))
    code, out, _ = _run(capsys, "audit", "--verify")
    assert code == 0 and "2 event(s) linked to the line before them, 1 at the start" in out and "no break" in out
    assert _run(capsys, "audit", "--verify", "--run-id", "r1")[0] == 2
    path = audit.settings.audit_log_path()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[2])  # the 'b' event removed
    code, out, _ = _run(capsys, "audit", "--verify", "--json")
    assert code == 1 and json.loads(out)["problems"] == [
        "line 2 does not link to line 1: a line between them was changed, removed or inserted"]


def test_registry_list_says_which_dag_registered_each_version(capsys, tmp_path):
    """Run ids repeat across DAGs (backfill__<date>): the list named the run, not whose run it was."""
    from dlpipe import registry
    from dlpipe.runctx import RunContext
    from dlpipe.storage import LocalStore

    store = LocalStore(tmp_path / "reg")
    for name, dag in (("fraud_eta", "fraud_eta"), ("maps_eta", "maps_training")):
        (tmp_path / name).mkdir()
        registry.register(store, name, _model_dir(tmp_path / name), metrics={}, lineage={},
                          run=RunContext(dag_id=dag, run_id="backfill__2026-01-03"))
    code, out, _ = _run(capsys, "registry", "list", "--root", str(tmp_path / "reg"))
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert code == 0 and out.splitlines()[0].split()[-2:] == ["dag_id", "run_id"]
    assert rows["fraud_eta@1"][-2:] == ["fraud_eta", "backfill__2026-01-03"]
    assert rows["maps_eta@1"][-2:] == ["maps_training", "backfill__2026-01-03"]
