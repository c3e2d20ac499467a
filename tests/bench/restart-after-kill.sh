#!/usr/bin/env bash
# Restart after a crash under sustained writes: one node takes SET load (64-byte values
# over KEYS random keys, -P 16 -c 50) for LOAD_SECONDS, is killed with SIGKILL, and is
# started again on the same data. Printed: the write buffer and the log at the kill, the
# time from the restart to the first PONG, what the node logged about its replay, and the
# keys it then holds.
#
#   NODE_BIN=<release build> tests/bench/restart-after-kill.sh
#   LOAD_SECONDS=60 KEYS=4000000 tests/bench/restart-after-kill.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
LOAD_SECONDS=${LOAD_SECONDS:-25}
KEYS=${KEYS:-2000000}
need_tools redis-benchmark redis-cli curl jq
setup_run
port=$(free_port); admin=$(free_port)
start_node() {
  "$NODE" --dev --data-dir "$WORK/data" --client-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" \
    --gossip-addr "" --rpc-addr "" --log-level info >"$WORK/$1.log" 2>&1 &
  PIDS+=($!); NODE_PID=$!
}
start_node first
wait_ping "$port"
timeout "$LOAD_SECONDS" redis-benchmark -p "$port" -t set -n 1000000000 -d 64 -P 16 -c 50 -r "$KEYS" -q \
  >/dev/null 2>&1 || true
echo "write buffer at the kill: $(curl -s "127.0.0.1:$admin/v1/status" | jq -c .store.write_buffer)"
kill -9 "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
echo "log on disk: $(du -sh "$WORK/data/wal" | cut -f1)"
t0=$(date +%s%N)
start_node second
wait_ping "$port" 600
echo "restart to PONG: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
grep -o 'replayed the write-ahead log.*' "$WORK/second.log" || true
echo "keys held: $(redis-cli -p "$port" dbsize)"
