"""Where the embedded default keeps its state, and how to override it.

Everything lives under one root, ``DLPIPE_HOME`` (default ``./.dlpipe``):

    raw/ features/ datasets/ training/ gates/   stage outputs (attempts + committed manifests)
    registry/                                   model registry (unless DLPIPE_REGISTRY_ROOT is set)
    audit/events.jsonl                          append-only audit log
    airflow/                                    AIRFLOW_HOME of the embedded Airflow
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The dlpipe root directory (created on first use)."""
    root = Path(os.environ.get("DLPIPE_HOME", ".dlpipe")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def registry_root() -> str:
    """Registry root: a local directory (default) or an ``s3://bucket/prefix`` URI."""
    return os.environ.get("DLPIPE_REGISTRY_ROOT") or str(home() / "registry")


def audit_log_path() -> Path:
    return home() / "audit" / "events.jsonl"
