"""The JSON file a stage hands to the program it launches (a Spark application, a Horovod job).

Arguments travel in a file written into the attempt directory, never through a shell: the
program gets ``--spec PATH`` and nothing else, so run-config values are plain data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec, indent=2, sort_keys=True))
    return path


def read_spec_from_argv(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True, help="JSON file written by the operator")
    args = parser.parse_args(argv)
    return json.loads(Path(args.spec).read_text())
