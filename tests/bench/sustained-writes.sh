#!/usr/bin/env bash
# Sustained writes: SET over a keyspace much larger than the node's write buffer, long
# enough that the buffer fills and backpressure makes the storage engine's own speed the
# limit. Prints redis-server and opencluster-node side by side (same run, same machine).
#
#   tests/bench/sustained-writes.sh                  # 2,000,000 SETs over 1,000,000 keys
#   REQUESTS=500000 KEYS=250000 tests/bench/sustained-writes.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
REQUESTS=${REQUESTS:-2000000}
KEYS=${KEYS:-1000000}
need_tools redis-server redis-benchmark redis-cli
setup_run
REDIS_PORT=$(free_port); NODE_PORT=$(free_port); ADMIN_PORT=$(free_port)
mkdir -p "$WORK/redis" "$WORK/node"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
  --appendfsync everysec --save "" >"$WORK/redis.log" 2>&1 &
PIDS+=($!); REDIS_PID=$!
target/release/opencluster-node --dev --data-dir "$WORK/node" --client-addr "127.0.0.1:$NODE_PORT" \
  --admin-addr "127.0.0.1:$ADMIN_PORT" --log-level warn >"$WORK/node.log" 2>&1 &
PIDS+=($!); NODE_PID=$!
wait_ping "$REDIS_PORT"; wait_ping "$NODE_PORT"
run() { redis-benchmark -p "$1" -t set -c 50 -n "$REQUESTS" -d 64 -P 16 -r "$KEYS" --csv 2>/dev/null | tail -1 | tr -d '"'; }
IFS=, read -r _ rrps _ _ rp50 _ rp99 _ < <(run "$REDIS_PORT")
IFS=, read -r _ nrps _ _ np50 _ np99 _ < <(run "$NODE_PORT")
echo "sustained SET -P 16 -c 50, $REQUESTS requests over $KEYS keys, 64-byte values"
printf '%-18s %12s %17s %10s\n' server "ops/s" "p50/p99 ms" "RSS kB"
printf '%-18s %12.0f %17s %10s\n' redis-server "$rrps" "$rp50/$rp99" "$(rss_kb $REDIS_PID)"
printf '%-18s %12.0f %17s %10s\n' opencluster-node "$nrps" "$np50/$np99" "$(rss_kb $NODE_PID)"
awk -v a="$nrps" -v b="$rrps" 'BEGIN { printf "ratio node/redis: %.2fx\n", a / b }'
curl -s "127.0.0.1:$ADMIN_PORT/v1/status" | grep -o '"write_buffer":{[^}]*}' || true
