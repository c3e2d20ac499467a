#!/usr/bin/env bash
# Idle memory: redis-server, a `--dev` node in standard mode and one in lean mode, started
# side by side, empty, then left idle for IDLE seconds (5). Printed per process: RSS, its
# anonymous and file-backed parts, and its thread count. Goal (issue 16): a lean node
# idles under 10 MiB.
#
#   tests/bench/idle-rss.sh
#   IDLE=30 tests/bench/idle-rss.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
IDLE=${IDLE:-5}
need_tools redis-server redis-cli
setup_run
declare -A PID
port=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes --appendfsync everysec \
  --save "" >"$WORK/redis.log" 2>&1 &
PIDS+=($!); PID[redis-server]=$!
wait_ping "$port"
for mode in standard lean; do
  port=$(free_port); admin=$(free_port)
  mkdir -p "$WORK/$mode"
  # Each from its own copy of the executable, as one node per host runs: the kernel does not
  # page out pages that two processes map, which lean mode does with its executable's
  # pages once started (node/src/heap.rs).
  cp "$NODE" "$WORK/$mode/opencluster-node"
  "$WORK/$mode/opencluster-node" --dev --mode "$mode" --data-dir "$WORK/$mode" --client-addr "127.0.0.1:$port" \
    --admin-addr "127.0.0.1:$admin" --gossip-addr "" --rpc-addr "" --log-level warn >"$WORK/$mode.log" 2>&1 &
  PIDS+=($!); PID["node $mode"]=$!
  wait_ping "$port"
done
sleep "$IDLE" # idle on purpose: what the processes hold when nothing happens
field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
echo "idle ${IDLE}s after start, load average $(cut -d' ' -f1 /proc/loadavg)"
printf '%-16s %10s %10s %10s %8s\n' process "RSS kB" "anon kB" "file kB" threads
for p in redis-server "node standard" "node lean"; do
  printf '%-16s %10s %10s %10s %8s\n' "$p" "$(field "${PID[$p]}" VmRSS)" "$(field "${PID[$p]}" RssAnon)" \
    "$(field "${PID[$p]}" RssFile)" "$(field "${PID[$p]}" Threads)"
done
