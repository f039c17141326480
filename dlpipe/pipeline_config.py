"""Load a pipeline's YAML file. Each section is validated by the stage that owns it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from dlpipe.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_pipeline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("pipeline_config", str(path), "point at an existing YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("pipeline_config", str(path), f"fix the YAML syntax: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("pipeline_config", str(path), "the file must hold a mapping of sections")
    data["_source"] = str(path)
    return data


def section(pipeline: dict[str, Any], name: str, model: type[M]) -> M:
    """Validate one section; errors name the file, the field path, the value and the rule."""
    raw = pipeline.get(name) or {}
    try:
        return model(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in (name, *err["loc"]))
        if err["type"] == "missing":  # pydantic's input is then the whole section: not helpful
            raise ConfigError(f"{pipeline.get('_source', '?')}: {field}", "(missing)",
                              f"{err['msg']}: add {field}") from exc
        raise ConfigError(f"{pipeline.get('_source', '?')}: {field}", err.get("input"),
                          err["msg"]) from exc
