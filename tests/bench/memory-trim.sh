#!/usr/bin/env bash
# What giving freed heap memory back costs and saves, and what the store cache setting
# does to memory: three --dev nodes, one after the other, given the same writes and reads
# of 4 KiB values by redis-benchmark, their resident memory read after each phase, in the
# same run:
#   trim-off   memory_trim_interval = 0s, store.cache_bytes = 64MiB (the default)
#   trim-1s    memory_trim_interval = 1s (the default), store.cache_bytes = 64MiB
#   cache-4m   memory_trim_interval = 1s, store.cache_bytes = 4MiB
#
#   tests/bench/memory-trim.sh                 # 70,000 SETs (about 180 MB of values)
#   KEYS=20000 tests/bench/memory-trim.sh
#
# Phases: KEYS SETs of random keys among KEYS (redis-benchmark -r, 20 clients; about 63%
# of the keys get written), then as many GETs; after each, 3 s for the trimmer to run.
# The ops/s of each phase show what the trimming costs. Needs redis-benchmark and
# redis-cli.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

KEYS=${KEYS:-70000}
need_tools redis-benchmark redis-cli
setup_run

# run_node LABEL TRIM CACHE: starts a node, loads it, prints
# "LABEL set_ops get_ops rss_idle rss_set rss_get" (kB).
run_node() {
  local label=$1 trim=$2 cache=$3 port admin pid idle set_ops get_ops after_set after_get
  port=$(free_port)
  admin=$(free_port)
  "$NODE" --dev --node-name "$label" --data-dir "$WORK/$label" --client-addr "127.0.0.1:$port" \
    --admin-addr "127.0.0.1:$admin" --gossip-addr "" --memory-trim-interval "$trim" --store-cache-bytes "$cache" --log-level warn \
    >"$WORK/$label.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_ping "$port"
  idle=$(rss_kb "$pid")
  set_ops=$(redis-benchmark -p "$port" -c 20 -n "$KEYS" -r "$KEYS" -d 4096 -t set --csv 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2)
  sleep 3
  after_set=$(rss_kb "$pid")
  get_ops=$(redis-benchmark -p "$port" -c 20 -n "$KEYS" -r "$KEYS" -t get --csv 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2)
  sleep 3
  after_get=$(rss_kb "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$label $set_ops $get_ops $idle $after_set $after_get"
}

off=$(run_node trim-off 0s 64MiB)
on=$(run_node trim-1s 1s 64MiB)
small=$(run_node cache-4m 1s 4MiB)
printf '%-10s %12s %12s %14s %14s %14s\n' node 'SET ops/s' 'GET ops/s' 'RSS idle kB' 'RSS after SET' 'RSS after GET'
for r in "$off" "$on" "$small"; do
  # shellcheck disable=SC2086 # fields
  printf '%-10s %12s %12s %14s %14s %14s\n' $r
done
read -r _ s0 g0 _ a0 b0 <<<"$off"
read -r _ s1 g1 _ a1 b1 <<<"$on"
read -r _ _ _ _ a2 b2 <<<"$small"
awk -v s0="$s0" -v g0="$g0" -v a0="$a0" -v b0="$b0" -v s1="$s1" -v g1="$g1" -v a1="$a1" -v b1="$b1" \
  -v a2="$a2" -v b2="$b2" 'BEGIN {
  printf "trimming: RSS after SET %.2fx, after GET %.2fx of untrimmed; SET ops/s %.2fx, GET ops/s %.2fx\n",
    a1 / a0, b1 / b0, s1 / s0, g1 / g0
  printf "cache 4MiB instead of 64MiB: RSS after SET %.2fx, after GET %.2fx\n", a2 / a1, b2 / b1 }'
