#!/usr/bin/env bash
# Runs the same redis-benchmark workloads against redis-server and an opencluster-node,
# started in this run on free loopback ports, and prints ops/s and p50/p99 side by side.
#
#   tests/bench/resp-vs-redis.sh                 # 200000 requests per test, 3 rounds
#   REQUESTS=50000 ROUNDS=1 tests/bench/resp-vs-redis.sh
#
# Each round runs every workload against Redis and then against the node; the table shows
# the median of the rounds for each figure (single runs on a 2-core machine vary by ±30%).
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools) and builds the
# node in release mode. Redis runs with appendonly yes / appendfsync everysec; the node with
# its default fsync = "interval" every 1s: the same durability promise.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set,get,incr}
need_tools redis-server redis-benchmark redis-cli
setup_run

REDIS_PORT=$(free_port)
NODE_PORT=$(free_port)
ADMIN_PORT=$(free_port)
mkdir -p "$WORK/redis" "$WORK/node"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
  --appendfsync everysec --save "" --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
"$NODE" --dev --data-dir "$WORK/node" --client-addr "127.0.0.1:$NODE_PORT" \
  --admin-addr "127.0.0.1:$ADMIN_PORT" --log-level warn >"$WORK/node.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
wait_ping "$REDIS_PORT"
wait_ping "$NODE_PORT"
sleep 1
echo "idle RSS: redis-server $(rss_kb $REDIS_PID) kB, opencluster-node $(rss_kb $NODE_PID) kB"
echo "machine: $(nproc) cores; redis $(redis-server --version | awk '{print $3}'); requests $REQUESTS, clients $CLIENTS, 64-byte values"

# Rounds: every figure of every workload, for both servers.
bench_rounds "-t $TESTS -r 100000" redis "$REDIS_PORT" node "$NODE_PORT"

printf '\nmedian of %s rounds\n%-6s %-4s %12s %12s %7s   %-17s %-17s\n' "$ROUNDS" test P "redis ops/s" "node ops/s" ratio "redis p50/p99 ms" "node p50/p99 ms"
for pipeline in 1 16; do
  for test in $(echo "$TESTS" | tr a-z A-Z | tr , ' '); do
    rps=$(fig redis "$pipeline" "$test" 4)
    nrps=$(fig node "$pipeline" "$test" 4)
    ratio=$(awk -v a="$nrps" -v b="$rps" 'BEGIN { printf "%.2f", a / b }')
    printf '%-6s %-4s %12.0f %12.0f %7s   %-17s %-17s\n' "$test" "$pipeline" "$rps" "$nrps" "${ratio}x" \
      "$(fig redis "$pipeline" "$test" 7)/$(fig redis "$pipeline" "$test" 9)" \
      "$(fig node "$pipeline" "$test" 7)/$(fig node "$pipeline" "$test" 9)"
  done
done
echo
echo "RSS after the run: redis-server $(rss_kb $REDIS_PID) kB, opencluster-node $(rss_kb $NODE_PID) kB"
echo "keys: redis $(redis-cli -p "$REDIS_PORT" dbsize), node $(redis-cli -p "$NODE_PORT" dbsize)"
