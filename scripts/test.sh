#!/usr/bin/env bash
# The test suite: unit tests (core, no Airflow/Spark), integration tests (real Spark, horovodrun,
# an S3 server process on loopback) and DAG tests (a real Airflow metadata database).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/env.sh"
# Tests never touch the developer's .dlpipe/: each test gets its own DLPIPE_HOME (tests/conftest.py).
unset DLPIPE_HOME AIRFLOW_HOME
cd "$ROOT"
set +e
python -m pytest -ra --durations=20 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
