"""The README's example DAG, built as a team would: it must parse and wire what the text says."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_the_readme_example_dag_builds():
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    [code] = [b for b in blocks if 'DAG("fraud_training"' in b]
    scope: dict = {}
    exec(compile(code, "README.md example", "exec"), scope)  # noqa: S102 - our own README
    dag = scope["dag"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["extract_features", "materialize_dataset", "data_gate", "train", "model_gate",
                     "register_model", "promote_staging"]
    roots = {t.task_id: getattr(t, "registry_root", None) for t in dag.tasks}
    assert roots["model_gate"] == roots["register_model"] == roots["promote_staging"] == "s3://ml-models/registry"
    assert dag.get_task("materialize_dataset").depends_on_past and "reason" in dag.params
    assert dag.get_task("train").scale_overrides["hosts"] == "gpu-1:8,gpu-2:8"
