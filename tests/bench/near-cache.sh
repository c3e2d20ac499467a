#!/usr/bin/env bash
# What the near cache buys, in one run on one machine:
#
# 1. GET of a hot key through its owner, through a non-owner with the near cache (n3),
#    and through a non-owner without it (n4, cache.enabled = false), -P 1 and -P 16.
# 2. Invalidation lag under a steady write load: 2 writers SET a 1,000-key working set
#    through n1 while readers GET the same keys through n3 (so n3 holds leases on the
#    ones it does not own); the lag of each invalidation, from the owner applying
#    the write (its wall clock) to the entry being dropped on n3, is n3's
#    opencluster_cache_invalidation_lag_seconds histogram.
# 3. Memory: 200,000 keys of 1 KiB read through n3 with cache.max_bytes = 16MiB; the
#    cache's own count of its bytes, and n3's RSS against n4's (no cache).
#
#   tests/bench/near-cache.sh                        # 200000 requests per test, 3 rounds
#   REQUESTS=50000 ROUNDS=1 LAG_WRITES=10000 tests/bench/near-cache.sh
#
# Four nodes, two replicas: the hot key is chosen so that neither n3 nor n4 owns it.
# Needs redis-benchmark, redis-cli and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
LAG_WRITES=${LAG_WRITES:-30000}
need_tools redis-benchmark redis-cli curl
setup_run

declare -A CLIENT ADMIN
SEED=""
for n in n1 n2 n3 n4; do
  CLIENT[$n]=$(free_port)
  ADMIN[$n]=$(free_port)
  gossip=$(free_port)
  join=()
  [ -n "$SEED" ] && join=(--join "$SEED")
  extra=()
  [ "$n" = n3 ] && extra=(--cache-max-bytes 16MiB)
  [ "$n" = n4 ] && extra=(--cache-enabled false)
  "$NODE" --dev --node-name "$n" --data-dir "$WORK/$n" --client-addr "127.0.0.1:${CLIENT[$n]}" \
    --admin-addr "127.0.0.1:${ADMIN[$n]}" --gossip-addr "127.0.0.1:$gossip" --rpc-addr 127.0.0.1:0 \
    --cluster-replicas 2 --log-level warn "${extra[@]}" "${join[@]}" >"$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  [ -n "$SEED" ] || SEED="127.0.0.1:$gossip"
  wait_ping "${CLIENT[$n]}"
done
deadline=$((SECONDS + 30))
for n in n1 n2 n3 n4; do
  until curl -s "127.0.0.1:${ADMIN[$n]}/v1/status" | grep -q '"nodes":4'; do
    [ $SECONDS -lt $deadline ] || { echo "the cluster did not form" >&2; cat "$WORK"/*.log >&2; exit 1; }
    sleep 0.2
  done
done
pid_of() { echo "${PIDS[$(( ${1#n} - 1 ))]}"; }

HOT=""
for i in $(seq 0 200); do
  placement=$(curl -s "127.0.0.1:${ADMIN[n1]}/v1/placement?key=hot:$i")
  if ! echo "$placement" | grep -q '"name":"n3"' && ! echo "$placement" | grep -q '"name":"n4"'; then
    HOT="hot:$i"
    OWNER=$(echo "$placement" | grep -o '"name":"n[0-9]"' | head -1 | cut -d'"' -f4)
    break
  fi
done
[ -n "$HOT" ] || { echo "no key owned by neither n3 nor n4" >&2; exit 1; }
redis-cli -p "${CLIENT[n1]}" set "$HOT" "$(head -c 64 /dev/zero | tr '\0' v)" >/dev/null
echo "machine: $(nproc) cores; requests $REQUESTS, clients $CLIENTS, one hot key $HOT of 64 bytes"
echo "owner $OWNER; n3 non-owner with the near cache; n4 non-owner with cache.enabled = false"

bench_rounds "GET $HOT" owner "${CLIENT[$OWNER]}" cached "${CLIENT[n3]}" uncached "${CLIENT[n4]}"
TEST="GET $HOT"
printf '\n1. GET of a hot key, median of %s rounds\n%-3s %12s %14s %16s %9s %9s   %s\n' "$ROUNDS" P "owner ops/s" "n3 (cache)" "n4 (no cache)" "n3/owner" "n4/owner" "p50/p99 ms owner, n3, n4"
for pipeline in 1 16; do
  o=$(fig owner "$pipeline" "$TEST" 4)
  c=$(fig cached "$pipeline" "$TEST" 4)
  u=$(fig uncached "$pipeline" "$TEST" 4)
  printf '%-3s %12.0f %14.0f %16.0f %8sx %8sx   %s %s %s\n' "$pipeline" "$o" "$c" "$u" \
    "$(awk -v a="$c" -v b="$o" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$u" -v b="$o" 'BEGIN { printf "%.2f", a / b }')" \
    "$(fig owner "$pipeline" "$TEST" 7)/$(fig owner "$pipeline" "$TEST" 9)" \
    "$(fig cached "$pipeline" "$TEST" 7)/$(fig cached "$pipeline" "$TEST" 9)" \
    "$(fig uncached "$pipeline" "$TEST" 7)/$(fig uncached "$pipeline" "$TEST" 9)"
done
curl -s "127.0.0.1:${ADMIN[n3]}/metrics" | grep -E '^opencluster_cache_(hits|misses)_total' | tr '\n' ' '
echo

# 2. Invalidation lag: readers keep the working set cached on n3 while writers change it.
lag_before=$(curl -s "127.0.0.1:${ADMIN[n3]}/metrics" | grep -E '^opencluster_cache_invalidation_lag_seconds_count' | awk '{print $2}')
redis-benchmark -p "${CLIENT[n3]}" -c 8 -n 100000000 -r 1000 -t get -d 64 -q >/dev/null 2>&1 &
readers=$!
redis-benchmark -p "${CLIENT[n1]}" -c 2 -n "$LAG_WRITES" -r 1000 -t set -d 64 --csv >"$WORK/writes.csv" 2>/dev/null
kill "$readers" 2>/dev/null || true
wait "$readers" 2>/dev/null || true
metrics=$(curl -s "127.0.0.1:${ADMIN[n3]}/metrics")
# Quantiles from the histogram's cumulative buckets (upper bounds).
quantile() {
  echo "$metrics" | grep -E '^opencluster_cache_invalidation_lag_seconds_bucket' |
    sed -E 's/.*le="([^"]+)"\} ([0-9.e+]+)/\1 \2/' |
    awk -v q="$1" -v base="${lag_before:-0}" '{ le[NR] = $1; c[NR] = $2 } END {
      total = c[NR] - base; for (i = 1; i <= NR; i++) if (c[i] - base >= q * total) { print le[i]; exit } }'
}
count=$(echo "$metrics" | grep -E '^opencluster_cache_invalidation_lag_seconds_count' | awk '{print $2}')
sum=$(echo "$metrics" | grep -E '^opencluster_cache_invalidation_lag_seconds_sum' | awk '{print $2}')
printf '\n2. invalidation lag over %s steady writes (2 writers through n1, 8 readers through n3, 1000 keys)\n' "$LAG_WRITES"
printf '   invalidations %s, mean %.2f ms, p50 <= %s s, p99 <= %s s (histogram bucket bounds)\n' \
  "$((count - ${lag_before:-0}))" "$(awk -v s="$sum" -v c="$count" 'BEGIN { if (c > 0) printf "%f", s / c * 1000 }')" \
  "$(quantile 0.5)" "$(quantile 0.99)"
echo "   writes (test, ops/s, avg, min, p50, p95, p99, max ms): $(tail -1 "$WORK/writes.csv" | tr -d '"')"

# 3. Memory: many keys read through n3 with a 16 MiB cache.
redis-benchmark -p "${CLIENT[n1]}" -c 20 -n 200000 -r 200000 -t set -d 1024 -q >/dev/null 2>&1
for n in n3 n4; do
  redis-benchmark -p "${CLIENT[$n]}" -c 20 -n 400000 -r 200000 -t get -d 1024 -q >/dev/null 2>&1
done
status=$(curl -s "127.0.0.1:${ADMIN[n3]}/v1/status")
bytes=$(echo "$status" | grep -o '"cache":{[^}]*' | grep -o '"bytes":[0-9]*' | head -1 | cut -d: -f2)
entries=$(echo "$status" | grep -o '"cache":{[^}]*' | grep -o '"entries":[0-9]*' | head -1 | cut -d: -f2)
printf '\n3. memory after 400,000 GETs over 200,000 keys of 1 KiB through each of n3 and n4\n'
printf '   n3 cache: %s entries, %s bytes (cache.max_bytes 16777216)\n' "$entries" "$bytes"
printf '   RSS: n3 (16 MiB cache) %s kB, n4 (no cache) %s kB, n1 (owner) %s kB\n' \
  "$(rss_kb "$(pid_of n3)")" "$(rss_kb "$(pid_of n4)")" "$(rss_kb "$(pid_of n1)")"
