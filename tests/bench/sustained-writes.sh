#!/usr/bin/env bash
# Sustained writes: SET over a keyspace much larger than the node's write buffer, for
# minutes, so that the buffer fills and backpressure makes the storage engine's own speed
# the limit. redis-server (appendonly yes, appendfsync everysec) and opencluster-node in
# standard and lean mode (each with its default engine) side by side: same run, same
# machine, same client load (redis-benchmark -t set -P 16 -c 50 -d 64 -r KEYS).
#
#   tests/bench/sustained-writes.sh                  # 5 minutes each over 2,000,000 keys
#   SECONDS_EACH=60 KEYS=500000 MODES="standard standard:lmdb" tests/bench/sustained-writes.sh
#
# MODES lists the nodes: a mode, or MODE:ENGINE for another engine than the mode's default,
# each optionally followed by @BINARY to run another build of the node (e.g. the build
# before a change, MODES="standard standard@/tmp/opencluster-node.before": two builds, one run).
# NODE_LIMIT_MIB runs each node inside a memory cgroup of that size (needs root), e.g. the
# RSS redis-server reaches: the node's memory, its page cache included, cannot exceed it.
#
# Each server has the load for SECONDS_EACH seconds in one go, in the order listed (redis
# first), and is then frozen (SIGSTOP) until the end. An earlier version took turns in
# chunks of about 20 s; that overstated the node (0.65x-0.81x against 0.50x in one go, same
# day): between its chunks its applier emptied the write buffer while the others ran, so
# each chunk started with a buffer's worth of room, and a second node's chunks ran while
# the first one's applier still took CPU. redis-benchmark has no time limit, so the load
# is a run of back-to-back chunks of about CHUNK seconds (each chunk's request count is the
# previous chunk's rate times the time wanted). Printed per server: ops/s over all its
# chunks, the p50 and p99 of its last chunk and the worst p99 of any chunk, its peak RSS
# (sampled between chunks) and its RSS when its turn ended, with its anonymous part (RSS
# less mapped file pages: LMDB's data file is mapped, and its resident pages are page cache
# the kernel reclaims) at its peak and at the end, and the keys it held; then the ratios.
# With NODE_LIMIT_MIB, also the most each node's cgroup was charged and its OOM kills.
# The key space is the same for all; a slower server has written fewer of its keys in the
# same time.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh
SECONDS_EACH=${SECONDS_EACH:-300}
KEYS=${KEYS:-2000000}
CHUNK=${CHUNK:-20}
MODES=${MODES:-standard lean}
need_tools redis-server redis-benchmark redis-cli
setup_run
declare -A PORT PID ELAPSED_MS DONE P50 P99 WORST PEAK PEAK_ANON CG
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
  --appendfsync everysec --save "" >"$WORK/redis.log" 2>&1 &
PIDS+=($!); PID[redis]=$!; PORT[redis]=$REDIS_PORT
TARGETS=(redis)
for spec in $MODES; do
  port=$(free_port); admin=$(free_port)
  bin=$NODE; run=$spec
  if [ "${spec#*@}" != "$spec" ]; then bin=${spec#*@}; run=${spec%%@*}; fi
  dir=$WORK/${spec//[^A-Za-z0-9_-]/-}
  mkdir -p "$dir"
  engine=()
  [ "${run#*:}" = "$run" ] || engine=(--store-engine "${run#*:}")
  cmd=("$bin" --dev --mode "${run%%:*}" "${engine[@]}" --data-dir "$dir" --client-addr "127.0.0.1:$port"
    --admin-addr "127.0.0.1:$admin" --gossip-addr "" --rpc-addr "" --log-level warn)
  if [ -n "${NODE_LIMIT_MIB:-}" ]; then
    CG[$spec]=$(cg_make "$(basename "$dir")" $((NODE_LIMIT_MIB << 20))); CGROUPS+=("${CG[$spec]}")
    cg_run "${CG[$spec]}" "${cmd[@]}" >"$dir.log" 2>&1
  else
    "${cmd[@]}" >"$dir.log" 2>&1 &
  fi
  PIDS+=($!); PID[$spec]=$!; PORT[$spec]=$port
  TARGETS+=("$spec")
done
for t in "${TARGETS[@]}"; do
  wait_ping "${PORT[$t]}"
  ELAPSED_MS[$t]=0; DONE[$t]=0; WORST[$t]=0; PEAK[$t]=0; PEAK_ANON[$t]=0
done
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A END_RSS END_ANON HELD
# One server at a time, its chunks back to back; then it is frozen (SIGSTOP), so that what it
# still does in the background (a node's applier emptying its write buffer) takes no CPU
# from the servers after it.
for t in "${TARGETS[@]}"; do
  n=200000
  while [ "${ELAPSED_MS[$t]}" -lt $((SECONDS_EACH * 1000)) ]; do
    t0=$(date +%s%N)
    IFS=, read -r _ _ _ _ p50 _ p99 _ < <(redis-benchmark -p "${PORT[$t]}" -t set -c 50 -n "$n" -d 64 -P 16 \
      -r "$KEYS" --csv 2>/dev/null | tail -1 | tr -d '"')
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    kill -0 "${PID[$t]}" 2>/dev/null || { echo "$t exited" >&2; exit 1; }
    ELAPSED_MS[$t]=$((ELAPSED_MS[$t] + ms)); DONE[$t]=$((DONE[$t] + n))
    P50[$t]=$p50; P99[$t]=$p99
    WORST[$t]=$(awk -v a="${WORST[$t]}" -v b="$p99" 'BEGIN { print (b > a) ? b : a }')
    rss=$(rss_kb "${PID[$t]}"); [ "$rss" -le "${PEAK[$t]}" ] || PEAK[$t]=$rss
    anon=$(anon_kb "${PID[$t]}"); [ "$anon" -le "${PEAK_ANON[$t]}" ] || PEAK_ANON[$t]=$anon
    # The next chunk lasts about CHUNK seconds at this chunk's rate, and no longer than
    # the time left; it is at most four times this one, as the first chunks, into an
    # empty write buffer, run faster than the rest will.
    left=$((SECONDS_EACH * 1000 - ELAPSED_MS[$t]))
    [ "$left" -le $((CHUNK * 1000)) ] || left=$((CHUNK * 1000))
    next=$(( n * left / (ms > 0 ? ms : 1) ))
    [ "$next" -le $((4 * n)) ] || next=$((4 * n))
    n=$next
    [ "$n" -ge 10000 ] || n=10000
  done
  END_RSS[$t]=$(rss_kb "${PID[$t]}"); END_ANON[$t]=$(anon_kb "${PID[$t]}")
  HELD[$t]=$(redis-cli -p "${PORT[$t]}" dbsize 2>/dev/null || echo '?')
  kill -STOP "${PID[$t]}"
done
for t in "${TARGETS[@]}"; do kill -CONT "${PID[$t]}"; done
echo "sustained SET -P 16 -c 50, 64-byte values over $KEYS keys, $SECONDS_EACH s per server"
printf '%-22s %10s %12s %16s %12s %12s %13s %12s\n' server "ops/s" "p50/p99 ms" "worst p99 ms" "peak RSS kB" "end RSS kB" \
  "peak anon kB" "end anon kB"
declare -A RATE
for t in "${TARGETS[@]}"; do
  RATE[$t]=$(awk -v n="${DONE[$t]}" -v ms="${ELAPSED_MS[$t]}" 'BEGIN { printf "%.0f", n * 1000 / ms }')
  label=redis-server; [ "$t" = redis ] || label="node $t"
  printf '%-22s %10s %12s %16s %12s %12s %13s %12s\n' "$label" "${RATE[$t]}" "${P50[$t]}/${P99[$t]}" "${WORST[$t]}" \
    "${PEAK[$t]}" "${END_RSS[$t]}" "${PEAK_ANON[$t]}" "${END_ANON[$t]}"
done
for t in "${TARGETS[@]}"; do
  [ "$t" != redis ] || continue
  awk -v a="${RATE[$t]}" -v b="${RATE[redis]}" -v r="${END_RSS[$t]}" -v rr="${END_RSS[redis]}" -v t="$t" \
    'BEGIN { printf "node %s / redis: ops/s %.2fx, end RSS %.2fx\n", t, a / b, r / rr }'
done
for t in "${!CG[@]}"; do
  echo "node $t: cgroup limit $NODE_LIMIT_MIB MiB, most charged $(( $(cg_peak "${CG[$t]}") >> 20 )) MiB, OOM kills $(cg_oom_kills "${CG[$t]}")"
done
echo "keys held: $(for t in "${TARGETS[@]}"; do printf '%s %s, ' "$t" "${HELD[$t]}"; done | sed 's/, $//')"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
