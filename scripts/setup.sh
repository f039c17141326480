#!/usr/bin/env bash
# Idempotent set-up of everything dlpipe needs, into .venv/ and .dlpipe/ at the repository root.
# Each step checks whether its work is already done and skips it: a second run takes seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
# Python 3.11.5 or later, below 3.13: a pinned package needs 3.11.5 (Debian 12's own 3.11 is
# 3.11.2). Without PYTHON, the first of these on PATH that fits is taken.
fits() { "$1" -c 'import sys; assert (3, 11, 5) <= sys.version_info[:3] < (3, 13)' 2>/dev/null; }
if [ -z "${PYTHON:-}" ]; then
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null && fits "$candidate"; then PYTHON=$candidate; break; fi
  done
  PYTHON=${PYTHON:-python3.11}
fi

say() { echo "[setup] $*"; }

# 1. Toolchain checks: fail early with the fix, not deep inside Spark.
fits "$PYTHON" \
  || { echo "[setup] error: Python 3.11.5 or later (below 3.13) is required; $PYTHON is $("$PYTHON" --version 2>&1)" \
            "(Debian 12's python3.11 is 3.11.2: install a newer one with pyenv or uv), then set PYTHON=/path/to/python3.11" >&2
       exit 1; }
if ! java -version >/dev/null 2>&1; then
  echo "[setup] error: Java (17 or newer) is required by Spark; on Debian: apt-get install -y openjdk-17-jre-headless" >&2
  exit 1
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || { echo "[setup] error: $PYTHON cannot create virtual environments; on Debian: apt-get install -y python3.11-venv" >&2; exit 1; }
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# 3. Python packages at the tested versions. The stamp holds a hash of the files that decide
#    what is installed, so editing pyproject.toml or the constraints re-runs this step.
want=$(cat pyproject.toml requirements/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.dlpipe-deps"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages (pinned by requirements/constraints.txt)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "pip>=24" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # torch first and exactly: pip takes the CPU build from this machine's wheel folder; an
  # unpinned torch pulled in by another package would download a multi-GB CUDA build.
  "$VENV/bin/pip" install -q -c requirements/constraints.txt "torch==2.13.0" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/pip" install -q -c requirements/constraints.txt -e ".[test]" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # petastorm 0.13.1 declares setuptools<70 while torch 2.13 needs setuptools>=77; on Python 3.11
  # petastorm runs fine with new setuptools (stdlib distutils still exists), so it is installed
  # without its dependency metadata. Its real runtime requirements are in pyproject.toml.
  "$VENV/bin/pip" install -q --no-deps "petastorm==0.13.1" 2>&1 | { grep -v "^WARNING: Location" || true; }
  # not `python -c "import ..."`: see dlpipe/import_check.py (such a check passed a broken install)
  "$VENV/bin/python" -m dlpipe.import_check torch airflow pyspark petastorm great_expectations boto3 >/dev/null \
    || { echo "[setup] error: the package install did not complete; see pip's output above" >&2; exit 1; }
  echo "$want" > "$stamp"
else
  say "Python packages up to date: skipping"
fi

# 3b. Debian's headless Chromium for the Airflow UI browser test (tests/dags/test_production_paths.py),
#     from this machine's package archive; skipped when it is there or when apt is not ours to use.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (for the UI browser test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
      || echo "[setup] warning: could not install chromium; the UI browser test will fail until it is installed" >&2
  else
    echo "[setup] warning: chromium is missing; install Debian's chromium package for the UI browser test" >&2
  fi
fi

# 4. Horovod (built once per machine, reused from a wheelhouse afterwards).
bash "$ROOT/scripts/build_horovod.sh" "$VENV"

# 5. The project-local Airflow home and its SQLite metadata database. A database this shell
#    names itself (a shared Airflow's, say) is not migrated behind its owner's back.
source "$ROOT/scripts/env.sh"
mkdir -p "$AIRFLOW_HOME"
if [ -n "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ]; then
  say "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is set in this shell: not touching that database (run 'airflow db migrate' yourself if it is yours)"
elif [ ! -f "$AIRFLOW_HOME/airflow.db" ] || ! airflow db check-migrations -t 0 >/dev/null 2>&1; then
  say "initialising the Airflow database in $AIRFLOW_HOME"
  airflow db migrate >/dev/null
else
  say "Airflow database up to date: skipping"
fi
say "ready (venv: $VENV, state: $DLPIPE_HOME)"
