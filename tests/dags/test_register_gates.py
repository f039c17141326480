"""RegisterModelOperator registers a model only on passed verdicts about that model: a passed
model gate of another training (a stale XCom after `train` was cleared without its gate, or a
miswired DAG) is refused, without retry, and nothing is registered."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dlpipe import commit, registry
from dlpipe.gates import ModelGateConfig, run_model_gate
from dlpipe.runctx import RunContext
from dlpipe.storage import LocalStore
from operators import RegisterModelOperator
from tests.conftest import ROOT
from tests.unit.test_gate_reruns import _evaluation


def _training(val_mae: float) -> dict:
    """A committed dataset and training of their own (the config tells them apart)."""
    def stage(name: str, inputs: list[dict], produce) -> dict:
        return commit.run_stage(commit.StageKey(name, "eta", "window_end=2026-01-03"), inputs=inputs,
                                config={"val_mae": val_mae}, code={"sources_hash": "test"}, run=RunContext(),
                                produce=produce).manifest

    def train(attempt):
        (attempt / "model").mkdir()
        (attempt / "model" / "model.safetensors").write_bytes(f"weights {val_mae}".encode())
        return {"metrics": {"val_mae": val_mae, "baseline_mae": 8.0}, "model_dir": "model"}

    return stage("training", [stage("datasets", [], lambda attempt: {"rows": {"train": 1, "validation": 1}})], train)


def _register(training: dict, gate_ids: list[str], root) -> str:
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="register_model", try_number=1)
    context = {"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}}
    op = RegisterModelOperator(task_id="register_model", training_id=training["id"], gate_ids=gate_ids,
                               registry_root=str(root), pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
    return op.execute(context)


def _day4_gated_with_day3_as_baseline() -> tuple[dict, dict, dict]:
    """Datasets of days 3 and 4, and a passed data gate on day 4 whose drift baseline is day 3."""
    def dataset(day: str) -> dict:
        return commit.run_stage(commit.StageKey("datasets", "eta", f"window_end={day}"), inputs=[],
                                config={"day": day}, code={"sources_hash": "test"}, run=RunContext(),
                                produce=lambda attempt: {"rows": {"train": 1}}).manifest

    day3, day4 = dataset("2026-01-03"), dataset("2026-01-04")
    gate4 = commit.run_stage(commit.StageKey("gates", "eta_data", day4["partition"]), inputs=[day4, day3],
                             config={}, code={"sources_hash": "test"}, run=RunContext(),
                             produce=lambda attempt: {"verdict": "passed", "dataset": day4["id"]}).manifest
    return day3, day4, gate4


def test_a_passed_gate_of_another_training_does_not_register_this_one(dlpipe_home):
    good, bad = _training(3.0), _training(99.0)
    gate = run_model_gate(good, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0), champion=None)
    root = dlpipe_home / "registry"
    with pytest.raises(AirflowFailException, match=rf"gate {gate.id} judged .*not training {bad['id']} or its dataset"):
        _register(bad, [gate.id], root)
    assert registry.list_versions(LocalStore(root), "eta") == []
    assert _register(good, [gate.id], root).endswith("@1")  # the model it judged registers


def test_a_training_of_another_pipelines_model_is_not_registered_under_this_ones_name(dlpipe_home):
    """Two specs with one dag_id: the run's train task loaded the other spec and trained model
    'maps'; the register task, loading the ETA spec, registered it as eta@N."""
    day3, _, _ = _day4_gated_with_day3_as_baseline()

    def train(attempt):
        (attempt / "model").mkdir()
        (attempt / "model" / "model.safetensors").write_bytes(b"weights")
        return {"metrics": {"val_mae": 3.0, "baseline_mae": 8.0}, "model_dir": "model"}

    maps = commit.run_stage(commit.StageKey("training", "maps", day3["partition"]), inputs=[day3], config={},
                            code={"sources_hash": "test"}, run=RunContext(), produce=train).manifest
    gate = run_model_gate(maps, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0), champion=None)
    root = dlpipe_home / "registry"
    with pytest.raises(AirflowFailException, match=r"model_name='eta'.*trained model 'maps', not this pipeline's"):
        _register(maps, [gate.id], root)
    assert registry.list_versions(LocalStore(root)) == []


def test_a_data_gate_whose_drift_baseline_is_this_dataset_does_not_vouch_for_it(dlpipe_home):
    """A data gate with drift lists the previous dataset after the one it judged. Day 4's gate
    must not let day 3's training through: it judged day 4's dataset, not day 3's."""
    day3, day4, gate4 = _day4_gated_with_day3_as_baseline()

    def train(attempt):
        (attempt / "model").mkdir()
        (attempt / "model" / "model.safetensors").write_bytes(b"weights")
        return {"metrics": {"val_mae": 3.0}, "model_dir": "model"}

    training3 = commit.run_stage(commit.StageKey("training", "eta", day3["partition"]), inputs=[day3], config={},
                                 code={"sources_hash": "test"}, run=RunContext(), produce=train).manifest
    root = dlpipe_home / "registry"
    with pytest.raises(AirflowFailException, match=rf"judged {day4['id']}, not training"):
        _register(training3, [gate4["id"]], root)
    assert registry.list_versions(LocalStore(root), "eta") == []


def test_one_gate_given_without_a_list_is_one_gate(dlpipe_home):
    """gate_ids=gate.output renders as the id itself, a string; it used to be read a character
    at a time ("malformed gate_ids 'g'")."""
    good = _training(3.0)
    gate = run_model_gate(good, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0), champion=None)
    assert _register(good, gate.id, dlpipe_home / "registry").endswith("@1")


@pytest.mark.parametrize("root", ["models/registry", "s3:/ml-models/registry"])
def test_an_operator_registry_root_that_would_be_a_worker_local_folder_is_refused(dlpipe_home, root, monkeypatch):
    good = _training(3.0)
    gate = run_model_gate(good, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0), champion=None)
    monkeypatch.chdir(dlpipe_home)
    from dlpipe.errors import ConfigError

    # refused when the DAG is parsed (the operator is built), not only when the task runs
    with pytest.raises(ConfigError, match=rf"argument registry_root='{root}'"):
        _register(good, [gate.id], root)
    # a templated root is checked when the task runs, once rendered
    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="register_model", try_number=1)
    op = RegisterModelOperator(task_id="register_model", training_id=good["id"], gate_ids=[gate.id],
                               registry_root="{{ params.root }}", pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
    op.registry_root = root  # as Airflow renders it
    with pytest.raises(AirflowFailException, match=rf"invalid registry_root='{root}'"):
        op.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})
    assert not (dlpipe_home / root).exists() and not (dlpipe_home / "s3:").exists()


def test_promote_arguments_are_checked_when_the_dag_is_parsed():
    from dlpipe.errors import ConfigError
    from operators import PromoteModelOperator

    with pytest.raises(ConfigError, match=r"task_id='p'\) argument only_forward='false': pass True or False"):
        PromoteModelOperator(task_id="p", model_ref="eta@1", only_forward="false", pipeline_config="x.yaml")
    with pytest.raises(ConfigError, match=r"argument alias='Production': use 1-32 lowercase"):
        PromoteModelOperator(task_id="p", model_ref="eta@1", alias="Production", pipeline_config="x.yaml")
    templated = PromoteModelOperator(task_id="p", model_ref="eta@1", alias="{{ params.alias }}",
                                     pipeline_config="x.yaml")
    assert templated.alias == "{{ params.alias }}"  # checked once rendered, when the task runs


def test_registration_without_gates_is_refused_when_the_dag_is_parsed():
    """A hand-written DAG that forgets gate_ids must not register ungated models."""
    from dlpipe.errors import ConfigError

    spec = str(ROOT / "pipelines" / "eta_training.yaml")
    with pytest.raises(TypeError, match=r"missing keyword argument 'gate_ids'"):
        RegisterModelOperator(task_id="register_model", training_id="t", pipeline_config=spec)
    for empty in ([], ""):
        with pytest.raises(ConfigError, match=r"argument gate_ids=.*: name the gates .*gate_ids=\[data_gate.output"):
            RegisterModelOperator(task_id="register_model", training_id="t", pipeline_config=spec, gate_ids=empty)


def test_gate_ids_that_render_to_nothing_at_run_time_are_refused(dlpipe_home):
    """A template or XCom can render to an empty list when the task runs, after the parse-time check."""
    from airflow.sdk.exceptions import AirflowFailException

    good = _training(3.0)
    root = dlpipe_home / "registry"
    # a gate task marked success by hand returns no id: said so, not blamed on the DAG's arguments
    for empty, said in (([], "rendered to no gate"), ([""], r"gate_ids\[0\] rendered empty"),
                        (["gates/eta_data/x@1", None], r"gate_ids\[1\] rendered empty: its gate task committed no "
                                                       r"verdict.*marked success by hand.*When a gate fails")):
        ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="register_model", try_number=1)
        op = RegisterModelOperator(task_id="register_model", training_id=good["id"], gate_ids=["placeholder"],
                                   registry_root=str(root), pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
        op.gate_ids = empty  # as rendered
        with pytest.raises(AirflowFailException, match=said):
            op.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})
    assert registry.list_versions(LocalStore(root), "eta") == []


def test_a_promotion_whose_registration_returned_nothing_fails_without_retry(dlpipe_home):
    """register_model marked success by hand: promote_staging got None and crashed with an
    AttributeError, which Airflow retried."""
    from operators import PromoteModelOperator

    ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="promote_staging", try_number=1)
    op = PromoteModelOperator(task_id="promote_staging", model_ref="eta@1", registry_root=str(dlpipe_home / "registry"),
                              pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
    op.model_ref = None  # as rendered from a task that returned nothing
    with pytest.raises(AirflowFailException, match=r"model_ref=None: rendered to no model version.*marked success "
                                                   r"by hand"):
        op.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})


def test_registration_records_what_follows_it_in_its_dag(dlpipe_home):
    """`dlpipe summary` expects a promotion only in a DAG that has one (promote_to: null has none)."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from dlpipe import audit

    good = _training(3.0)
    gate = run_model_gate(good, ModelGateConfig(), run=RunContext(), candidate=_evaluation(3.0), champion=None)
    for dag_id, follows in (("with_promotion", ["promote_staging"]), ("without", [])):
        with DAG(dag_id, schedule=None):
            op = RegisterModelOperator(task_id="register_model", training_id=good["id"], gate_ids=[gate.id],
                                       registry_root=str(dlpipe_home / "registry"),
                                       pipeline_config=str(ROOT / "pipelines" / "eta_training.yaml"))
            if follows:
                op >> EmptyOperator(task_id="promote_staging")
        ti = SimpleNamespace(dag_id=dag_id, run_id="r", task_id="register_model", try_number=1)
        op.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})
        [started] = [e for e in audit.read() if e["run"]["dag_id"] == dag_id and e["event"] == "started"
                     and e["stage"] == "registry"]
        assert started["downstream"] == follows


def test_training_starts_only_on_a_passed_data_gate_about_its_dataset(dlpipe_home):
    """A data gate marked success by hand let `train` spend its compute on data the gate had
    refused (only registration stopped it). With data_gate_id, the training task refuses first,
    before horovodrun starts."""
    from operators import HorovodTrainOperator

    day3, day4, gate4 = _day4_gated_with_day3_as_baseline()
    spec = str(ROOT / "pipelines" / "eta_training.yaml")
    for dataset_id, gate_id, said in ((day3["id"], None, r"data_gate_id=None: rendered empty: the data gate task "
                                                          r"committed no verdict.*marked success by hand"),
                                      (day3["id"], gate4["id"], rf"verdict is 'passed' on {day4['id']}, not 'passed' "
                                                                rf"on {day3['id']}")):
        op = HorovodTrainOperator(task_id="train", dataset_id="placeholder", data_gate_id="placeholder",
                                  pipeline_config=spec)
        op.dataset_id, op.data_gate_id = dataset_id, gate_id  # as rendered
        ti = SimpleNamespace(dag_id="eta_training", run_id="r", task_id="train", try_number=1)
        with pytest.raises(AirflowFailException, match=said):
            op.execute({"ti": ti, "dag_run": SimpleNamespace(run_type="manual"), "params": {}})
    assert not (dlpipe_home / "training").exists()  # no attempt was started
