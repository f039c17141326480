# Environment shared by `make demo`, `make test` and `make airflow` (sourced, not executed).
# Everything lives under DLPIPE_HOME; Airflow gets a project-local home and SQLite database.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DLPIPE_HOME=${DLPIPE_HOME:-$ROOT/.dlpipe}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$DLPIPE_HOME/airflow}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW__CORE__DAGS_FOLDER:-$ROOT/dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=${AIRFLOW__CORE__UNIT_TEST_MODE:-False}
# The Spark master used by SparkSubmitHook; point it at spark://HOST:7077 for a cluster.
export AIRFLOW_CONN_DLPIPE_SPARK=${AIRFLOW_CONN_DLPIPE_SPARK:-'{"conn_type": "spark", "host": "local[*]"}'}
export PATH="$ROOT/.venv/bin:$PATH"
export SPARK_HOME=${SPARK_HOME:-$("$ROOT/.venv/bin/python" -c 'import importlib.util as u; print(list(u.find_spec("pyspark").submodule_search_locations)[0])' 2>/dev/null)}
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
# Kept from the shell, another checkout's DAGs would run this checkout's packages on its DAG files
# and specs (sourcing two checkouts' env.sh in one shell does it): say so.
case "$AIRFLOW__CORE__DAGS_FOLDER" in
  "$ROOT"/*) ;;
  *) [ -f "$AIRFLOW__CORE__DAGS_FOLDER/../scripts/env.sh" ] && echo "env.sh: note: AIRFLOW__CORE__DAGS_FOLDER is" \
       "$AIRFLOW__CORE__DAGS_FOLDER, another checkout's (kept from your shell); unset it, and AIRFLOW_HOME and" \
       "DLPIPE_HOME if they are that checkout's too, to use $ROOT/dags" >&2 ;;
esac
true
