#!/usr/bin/env bash
# soak/fault.sh - the issue-8 fault tests at soak length, repeated; prints the counts of
# every run (one line each) and exits non-zero if any run failed.
#
#   cluster fault: a 3-node KRaft cluster (deploy/kafka/kafka-cluster.sh), `kaspwatch sense`
#                  publishing a steady stream of hits; SIGKILL the node leading every hits
#                  partition, once as the active controller too ("leader+controller") and once
#                  not ("leader"); every event id must arrive once, the sensor report no loss.
#   store crash:   SIGKILL `kaspwatch store` (SQLite, PostgreSQL) between a batch's database
#                  commit and its offset commit while hits stream in; every hit stored once.
#
# usage: soak/fault.sh [ROUNDS]                         (default 3)
# env:   KASPWATCH_FAULT_RATE     hits/s the sensor is fed    (default 2000; CI test: 1000)
#        KASPWATCH_FAULT_BEFORE_S published before the kill  (default 10;   CI test: 2)
#        KASPWATCH_FAULT_AFTER_S  streamed after failover    (default 30;   CI test: 2)
#        KASPWATCH_CRASH_CLIENTS  store crash: x20 hits       (default 3000; CI test: 600)
#        KASPWATCH_CRASH_KILLS    store kills per run         (default 3;    CI test: 1)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS="${1:-3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: soak/fault.sh [ROUNDS]" >&2; exit 2; }
export KASPWATCH_FAULT_RATE="${KASPWATCH_FAULT_RATE:-2000}"
export KASPWATCH_FAULT_BEFORE_S="${KASPWATCH_FAULT_BEFORE_S:-10}"
export KASPWATCH_FAULT_AFTER_S="${KASPWATCH_FAULT_AFTER_S:-30}"
export KASPWATCH_CRASH_CLIENTS="${KASPWATCH_CRASH_CLIENTS:-3000}"
export KASPWATCH_CRASH_KILLS="${KASPWATCH_CRASH_KILLS:-3}"
export KASPWATCH_FAULT_VICTIMS="leader+controller,leader"
export KASPWATCH_FAULT_TIMEOUT=900
PYTEST="${PYTEST:-.venv/bin/pytest}"
log="$(mktemp "${TMPDIR:-/tmp}/kaspwatch-soak.XXXXXX")"
trap 'rm -f "$log"' EXIT

failed=0
for ((round = 1; round <= ROUNDS; round++)); do
  for file in tests/test_cluster.py tests/test_store_crash.py; do
    start=$SECONDS
    if "$PYTEST" -q -s -p no:cacheprovider "$file" >"$log" 2>&1; then status=passed; else status=FAILED; failed=1; fi
    echo "round $round $file: $status in $((SECONDS - start))s"
    grep -E "^(cluster fault|store crash): " "$log" | sed 's/^/  /'
    if [[ $status == FAILED ]]; then tail -n 40 "$log" | sed 's/^/  | /'; fi
  done
done
exit "$failed"
