"""Dependencies point one way: dags -> operators -> {feature_jobs, training, dlpipe} -> dlpipe."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

# package -> top-level packages it must never import (at any depth of the module)
FORBIDDEN = {
    "dlpipe": {"airflow", "operators", "feature_jobs", "training", "dags"},
    "feature_jobs": {"airflow", "operators", "training", "dags"},
    "training": {"airflow", "operators", "dags"},
    "operators": {"dags"},
}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upward(package):
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[package])
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
