"""Bad input is refused where it is given, naming the field, the value and the fix: a data_gate
typo when the spec is loaded (DAG parse time), not as a failed gate; a negative demo-data seed
as an error line, not a numpy traceback; an unknown run id as such, not as seven missing stages."""

from __future__ import annotations

import json
import re

import pytest

from dlpipe import audit, cli
from dlpipe.errors import ConfigError
from dlpipe.gates import GX_EXPECTATIONS, ColumnRule, DataGateConfig, ExpectationSpec, _gx_expectation
from dlpipe.pipeline_config import section
from dlpipe.runctx import RunContext
from tests.dags.test_factory import _spec


def _gate(**data_gate) -> DataGateConfig:
    return section({"_source": "p.yaml", "data_gate": data_gate}, "data_gate", DataGateConfig)


def test_a_misspelt_column_type_is_refused_on_load():
    with pytest.raises(ConfigError) as e:
        _gate(columns={"distance_km": {"type": "floot"}})
    assert e.value.field == "p.yaml: data_gate.columns.distance_km.type" and e.value.value == "floot"
    assert "did you mean float" in e.value.fix and "float32" in e.value.fix
    # every name GX's pandas type check resolves still loads: numpy, pandas and Python type names
    for name in ("float32", "float16", "datetime64[ns]", "StringDtype", "int", "object", "string"):
        assert ColumnRule(type=name).type == name


def test_a_min_above_max_is_refused_on_load():
    with pytest.raises(ConfigError) as e:
        _gate(columns={"distance_km": {"min": 5, "max": 1}})
    assert e.value.field == "p.yaml: data_gate.columns.distance_km.max" and e.value.value == 1
    assert "below min=5" in e.value.fix and "swap min and max" in e.value.fix
    assert ColumnRule(min=1, max=1).max == 1.0  # one allowed value is a bound, not a typo
    assert ColumnRule(min=5).min == 5.0 and ColumnRule(max=1).max == 1.0


def test_an_unknown_expectation_type_is_refused_on_load():
    with pytest.raises(ConfigError) as e:
        _gate(expectations=[{"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "x"}}])
    assert e.value.field == "p.yaml: data_gate.expectations.0.type"
    assert e.value.value == "expect_column_values_to_be_betwen"
    assert "did you mean expect_column_values_to_be_between?" in e.value.fix
    with pytest.raises(ConfigError, match=r"expectations.0.type.*not a Great Expectations 1.x expectation"):
        _gate(expectations=[{"type": "ExpectColumnToExist"}])  # the class name, not the type


def test_a_typo_in_a_spec_breaks_its_dag_at_parse_time(tmp_path):
    from operators.factory import load_spec

    bad = _spec(tmp_path, "typo", data_gate__columns={"distance_km": {"type": "floot"}})
    with pytest.raises(ConfigError, match=r"typo.yaml: data_gate.columns.distance_km.type='floot'"):
        load_spec(bad)


def test_the_expectation_list_is_the_one_of_the_installed_great_expectations():
    """GX_EXPECTATIONS spares DAG parsing the GX import; it must name exactly GX's expectations
    (a GX upgrade that adds or drops one fails here), and each must resolve to its class."""
    import great_expectations as gx
    from great_expectations.expectations.expectation import Expectation

    classes = {n for n in dir(gx.expectations) if n.startswith("Expect") and n != "Expectation"
               and isinstance(getattr(gx.expectations, n), type)
               and issubclass(getattr(gx.expectations, n), Expectation)}
    assert set(GX_EXPECTATIONS.values()) == classes
    for name, cls_name in GX_EXPECTATIONS.items():
        cls = getattr(gx.expectations, cls_name)
        declared = getattr(cls, "expectation_type", "")
        assert declared in (name, ""), (name, declared)  # "": a deprecated class declares none
    exp = _gx_expectation(0, ExpectationSpec(type="expect_column_kl_divergence_to_be_less_than",
                                             kwargs={"column": "x", "partition_object": None}))
    assert type(exp).__name__ == "ExpectColumnKLDivergenceToBeLessThan"


def test_demo_data_refuses_a_negative_seed(capsys):
    code = cli.main(["demo-data", "--seed", "-1", "--days", "1", "--rows-per-day", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid seed=-1" in err and "0 or a positive integer" in err
    assert "Traceback" not in err


def test_summary_of_an_unknown_run_names_the_runs_there_are(capsys):
    for run_id in ("manual__1", "manual__2", "manual__1"):
        audit.record("started", stage="training", run=RunContext(dag_id="eta_training", run_id=run_id,
                                                                  task_id="train", try_number=1))
    code = cli.main(["summary", "--dag-id", "eta_training", "--run-id", "no-such-run"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert "no run 'no-such-run' of dag 'eta_training' in the audit log" in err
    assert err.rstrip().endswith("newest first: manual__1, manual__2")
    assert cli.main(["summary", "--dag-id", "eta_training", "--run-id", "manual__2"]) == 1  # a real run
    assert "dlpipe run summary: dag eta_training, run manual__2" in capsys.readouterr().out


def test_a_wrong_split_name_is_refused_as_a_split_not_as_a_dataset(tmp_path):
    """'valid' for 'validation': the error names the split field, the value and the splits the
    committed dataset has. Before, it blamed the dataset id (NotCommittedError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlpipe import commit, datasets
    from dlpipe.errors import NotCommittedError

    def produce(attempt):
        for split in ("train", "validation"):
            (attempt / split).mkdir()
            pq.write_table(pa.table({"x": [1]}), attempt / split / "part-00000.parquet")
        return {"splits": ["train", "validation"]}

    ds = commit.run_stage(commit.StageKey("datasets", "eta", "window_end=2026-01-04"), inputs=[], config={},
                          code={"sources_hash": "x"}, run=RunContext(), produce=produce)
    with pytest.raises(ConfigError) as e:
        datasets.split_url(datasets.resolve(ds.id), "valid")
    assert e.value.field == "split" and e.value.value == "valid"
    assert "['train', 'validation']" in e.value.fix and ds.id in e.value.fix
    assert datasets.split_url(ds.manifest, "validation").endswith("/validation")
    with pytest.raises(NotCommittedError, match="not a committed dataset"):  # another stage's manifest
        datasets.split_url({**ds.manifest, "stage": "features"}, "train")


def _run_events(run_id: str, tasks: list[str], after_registration: list[str] | None = None) -> RunContext:
    """Each task's commit; ``register_model`` also says what follows it in the DAG, as the operator does."""
    for task in tasks:
        run = RunContext(dag_id="d", run_id=run_id, task_id=task, try_number=1)
        if task == "register_model" and after_registration is not None:
            audit.record("started", stage="registry", run=run, manifest_id="eta@?", downstream=after_registration)
        audit.record("committed", stage=task, run=run, manifest_id=f"{task}-output")
    return RunContext(dag_id="d", run_id=run_id, task_id="promote_staging", try_number=1)


def test_summary_shows_where_a_forward_only_promotion_left_the_alias(capsys, tmp_path):
    """A backfill of an older day does not move the alias back; the summary said the alias
    pointed at the backfilled version ('already there')."""
    from dlpipe import registry
    from dlpipe.storage import LocalStore

    store = LocalStore(tmp_path / "reg")
    for day in ("2026-01-03", "2026-01-02"):  # the older day registered later: version 2
        model = tmp_path / day
        model.mkdir()
        (model / "model.safetensors").write_bytes(day.encode())
        registry.register(store, "eta", model, metrics={}, lineage={"dataset": f"datasets/eta/window_end={day}@abc"},
                          run=RunContext())
    registry.promote_forward(store, "eta", "staging", 1, run=RunContext())
    run = _run_events("backfill__2026-01-02", ["materialize_dataset", "data_gate", "train", "model_gate",
                                               "register_model"], after_registration=["promote_staging"])
    registry.promote_forward(store, "eta", "staging", 2, run=run)
    assert cli.main(["summary", "--dag-id", "d"]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("alias:")]
    assert "eta:staging -> version 1 (eta:staging stays at version 1" in line and "version 2 has older data" in line

    # the same skip as a dlpipe before 2026-12-07 recorded it: the refused candidate as the version
    path = audit.settings.audit_log_path()
    old = [json.loads(x) for x in path.read_text().splitlines()]
    skip = next(e for e in old if e["event"] == "skipped" and e["stage"] == "alias")
    skip["fingerprint"] = str(skip.pop("candidate_version"))
    path.write_text("".join(json.dumps(e) + "\n" for e in old))
    assert cli.main(["summary", "--dag-id", "d"]) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("alias:")]
    assert "eta:staging -> version 1 (eta:staging stays at version 1" in line


def test_summary_expects_a_promotion_only_where_the_dag_has_one(capsys):
    """registry.promote_to: null builds no promote_staging task: registration records what follows
    it, so a whole run is not 'missing' a promotion, and a run whose promotion left no event is."""
    stages = ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model"]
    _run_events("manual__1", stages, after_registration=[])
    assert cli.main(["summary", "--dag-id", "d"]) == 0
    assert "promote_staging" not in capsys.readouterr().out
    _run_events("manual__2", stages[:-1], after_registration=[])
    assert cli.main(["summary", "--dag-id", "d"]) == 1  # no registration: still incomplete
    assert "register_model       missing" in capsys.readouterr().out
    _run_events("manual__3", stages, after_registration=["promote_staging"])  # promotion never started
    assert cli.main(["summary", "--dag-id", "d"]) == 1
    assert "promote_staging      missing" in capsys.readouterr().out
    _run_events("manual__4", stages)  # events from before registration said what follows: expected, as before
    assert cli.main(["summary", "--dag-id", "d"]) == 1


def test_summary_goes_by_each_tasks_newest_try_not_the_last_line(capsys):
    """A try Airflow gave up on (lost heartbeat) can log its 'failed' after the next try's commit:
    the run succeeded, and the summary must say so; a newer try's failure still fails it."""
    stages = ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate", "register_model"]
    _run_events("manual__1", stages, after_registration=[])
    late = RunContext(dag_id="d", run_id="manual__1", task_id="train", try_number=0)
    audit.record("failed", stage="train", run=late, error="killed: Airflow stopped the task (SIGTERM)")
    assert cli.main(["summary", "--dag-id", "d"]) == 0
    assert "killed" not in capsys.readouterr().out
    newer = RunContext(dag_id="d", run_id="manual__1", task_id="train", try_number=2)
    audit.record("failed", stage="train", run=newer, error="a newer try failed")
    assert cli.main(["summary", "--dag-id", "d"]) == 1
    assert "a newer try failed" in capsys.readouterr().out


def test_summary_survives_raw_partitions_deleted_by_retention(capsys):
    from dlpipe import commit

    def rows(n):
        return lambda attempt: {"rows": n}

    code = {"sources_hash": "x"}
    raw = [commit.run_stage(commit.StageKey("raw", "trips", f"dt=2026-01-0{d}"), inputs=[], config={}, code=code,
                            run=RunContext(), produce=rows(10 * d)).manifest for d in (1, 2)]
    feats = commit.run_stage(commit.StageKey("features", "eta", "dt=2026-01-02"), inputs=raw, config={}, code=code,
                             run=RunContext(), produce=rows(5))
    audit.record("committed", stage="features", manifest_id=feats.id,
                 run=RunContext(dag_id="d", run_id="r", task_id="extract_features", try_number=1))
    commit.StageKey("raw", "trips", "dt=2026-01-01").dir().joinpath("manifests", f"{raw[0]['fingerprint']}.json").unlink()
    assert cli.main(["summary", "--dag-id", "d"]) == 1  # the later stages are missing
    assert "raw rows read:      20 from 1 raw partition(s) (1 more since deleted)" in capsys.readouterr().out


def test_demo_data_refuses_days_past_the_calendar_before_committing_any(capsys):
    code = cli.main(["demo-data", "--start", "9999-12-30", "--days", "3", "--rows-per-day", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "invalid days=3" in err and "use --days 2 or fewer" in err and "Traceback" not in err
    assert list(audit.read()) == []  # nothing committed
    assert cli.main(["demo-data", "--start", "9999-12-31", "--days", "1", "--rows-per-day", "5"]) == 0


@pytest.mark.parametrize("ref", ["eta@²", "eta@１", "eta@1.0"])
def test_a_version_is_ascii_digits(ref):
    from dlpipe.registry import parse_ref

    with pytest.raises(ConfigError) as e:
        parse_ref(ref)
    assert e.value.field == "model reference" and "NAME@VERSION" in e.value.fix


def test_summary_knows_a_hand_written_dags_tasks_by_their_stage(capsys):
    """A team's DAG names its tasks as it likes: every stage was reported 'missing' and the run
    FAILED. Tasks record their operator's pipeline_stage (subclasses inherit it), which is what
    the summary goes by; two tasks of one stage are two rows, each judged."""
    tasks = {"features": "extract_features", "dataset": "materialize_dataset", "validate": "data_gate",
             "fit": "train", "judge": "model_gate", "register": "register_model", "promote": "promote_staging"}

    def run(run_id: str, names: list[str], downstream_stages: list[str], failed: tuple = ()) -> None:
        for task in names:
            ctx = RunContext(dag_id="fraud", run_id=run_id, task_id=task, try_number=1,
                             pipeline_stage=tasks.get(task, "promote_staging"))
            if task == "register":
                audit.record("started", stage="registry", run=ctx, manifest_id="fraud@?",
                             downstream=[], downstream_stages=downstream_stages)
            if task in failed:
                audit.record("failed", stage=task, run=ctx, error="boom")
            else:
                audit.record("committed", stage=task, run=ctx, manifest_id=f"{task}-output")

    run("manual__1", list(tasks), ["promote_staging"])
    assert cli.main(["summary", "--dag-id", "fraud"]) == 0
    out = capsys.readouterr().out
    assert all(f"{task} " in out for task in tasks) and "missing" not in out
    assert "register-output" in out and "promote-output" in out
    run("manual__2", list(tasks)[:-1], ["promote_staging"])  # its promotion never ran
    assert cli.main(["summary", "--dag-id", "fraud"]) == 1
    assert re.search(r"promote_staging +missing", capsys.readouterr().out)  # named by its stage: no task id known
    run("manual__3", list(tasks)[:-1], [])  # no promotion in this DAG
    assert cli.main(["summary", "--dag-id", "fraud"]) == 0
    capsys.readouterr()
    # two promotions (staging and canary): one failed is a failed run, whichever came last
    run("manual__4", [*list(tasks)[:-1], "promote", "promote_canary"], ["promote_staging"], failed=("promote",))
    assert cli.main(["summary", "--dag-id", "fraud"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"promote +failed", out) and re.search(r"promote_canary +committed", out)


def test_summary_of_a_training_resumed_at_its_last_epoch_has_no_speed_to_show():
    """A retry that resumed from the final checkpoint trained no epoch: samples_per_s is null."""
    from dlpipe import commit
    from dlpipe.cli import _summary_details

    metrics = {"train_mae": 3.0, "val_mae": 3.1, "baseline_mae": 8.0, "samples_per_s": None, "world_size": 2}
    tr = commit.run_stage(commit.StageKey("training", "eta", "window_end=2026-01-03"), inputs=[], config={},
                          code={"sources_hash": "t"}, run=RunContext(),
                          produce=lambda attempt: {"metrics": metrics}).manifest
    [line] = [x for x in _summary_details({"train": {"event": "committed", "manifest_id": tr["id"]}})
              if x.startswith("training:")]
    assert "validation MAE 3.100" in line and "no epoch trained in the committing try" in line
