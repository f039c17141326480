#!/usr/bin/env bash
# The main job: the ETA example pipeline end to end, through Airflow, on embedded defaults
# (local Spark, local files, SQLite, horovodrun -np 2 on Gloo). Safe to run again: every
# stage finds its committed output and skips.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/env.sh"

DAYS=${DEMO_DAYS:-4}
START=${DEMO_START:-2026-01-01}
echo "[demo] raw demo data: $DAYS days from $START under $DLPIPE_HOME/raw"
dlpipe demo-data --start "$START" --days "$DAYS"

# A run dated inside a day processes the last whole day before it: the run dated 06:00 the day
# after the last demo day processes that last day. Not midnight: a run dated at midnight takes
# the logical date of that day's own scheduled run, and the Spark stages refuse it.
RUN_DATE=$(python -c "import datetime as d; print(d.date.fromisoformat('$START') + d.timedelta(days=$DAYS))")T06:00:00+00:00
LOG="$DLPIPE_HOME/logs/demo-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p "$(dirname "$LOG")"
python -m operators.preflight eta_training "$RUN_DATE" >/dev/null || { echo "[demo] then run make demo again" >&2; exit 1; }
echo "[demo] airflow dags test eta_training $RUN_DATE (full log: $LOG)"
set +e
airflow dags test eta_training "$RUN_DATE" 2>&1 | tee "$LOG" \
  | grep --line-buffered -E "committed;|skipped \(already|registered|\[train rank 0\]|data gate|new_state=|ERROR|Error|Failed|Task failed" \
  | grep --line-buffered -vE "Pushing xcom|correlation_id" \
  | sed -E 's/^[0-9T:.-]+Z \[[a-z]+ *\] //; s/ \[[a-zA-Z_.]+\] loc=.*$//'
rc=${PIPESTATUS[0]}
set -e
RUN_ID=$(grep -o "run_id='[^']*'" "$LOG" | head -n 1 | cut -d"'" -f2)
echo
if [ -z "$RUN_ID" ]; then
  echo "[demo] error: the DAG did not start; see $LOG" >&2
  exit 1
fi
dlpipe summary --dag-id eta_training --run-id "$RUN_ID" || rc=1
exit "$rc"
