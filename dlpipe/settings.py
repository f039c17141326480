"""Where the embedded default keeps its state, and how to override it.

Everything lives under one root, ``DLPIPE_HOME`` (default ``./.dlpipe``):

    raw/ features/ datasets/ training/ gates/   stage outputs (attempts + committed manifests)
    registry/                                   model registry (unless DLPIPE_REGISTRY_ROOT is set)
    audit/events.jsonl                          append-only audit log
    airflow/                                    AIRFLOW_HOME of the embedded Airflow
"""

from __future__ import annotations

import os
import re
from pathlib import Path


# what a file:// URL carries unchanged through pyarrow's FileSystem.from_uri (a space, '%', '[' or
# a non-ASCII letter fails to parse; '#' and '?' cut the path short)
_URL_SAFE = re.compile(r"[A-Za-z0-9._\-/+=,:@~]")


def home() -> Path:
    """The dlpipe root directory (created on first use). An empty ``DLPIPE_HOME`` means the
    default, as an empty ``DLPIPE_REGISTRY_ROOT`` does."""
    value = os.environ.get("DLPIPE_HOME") or ".dlpipe"
    root = Path(value).expanduser().resolve()
    unsafe = sorted(set(_URL_SAFE.sub("", str(root))))
    if unsafe:  # readers and training open datasets through file:// URLs, which these break
        from dlpipe.errors import ConfigError

        raise ConfigError("DLPIPE_HOME", str(root), f"Petastorm and pyarrow read datasets through file:// "
                                                    f"URLs, which break on {unsafe}; use a path of ASCII letters, "
                                                    f"digits and . _ - / + = , : @ ~ only")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        from dlpipe.errors import ConfigError

        raise ConfigError("DLPIPE_HOME", value, "point it at a directory (created if missing), "
                                                "not at a file") from exc
    return root


def registry_root() -> str:
    """Registry root: a local directory (default) or an ``s3://bucket/prefix`` URI."""
    return os.environ.get("DLPIPE_REGISTRY_ROOT") or str(home() / "registry")


def audit_log_path() -> Path:
    return home() / "audit" / "events.jsonl"
