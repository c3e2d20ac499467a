#!/usr/bin/env bash
# What adding a node costs the clients: DATA_MB of data on a 3-node cluster with 3 replicas
# (every node holds everything), a steady write load through n1, then a 4th node joins and
# copies in the 3/4 of the partitions it gains (throttled by rebalance.max_bytes_per_sec).
# The load's latency and rate while the 4th node copies are printed beside the same load's
# figures in a steady window before it started (STEADY s) and after it finished (AFTER s),
# in the same run.
#
#   tests/bench/rebalance.sh                          # 1 GiB of 16 KiB values, 64MiB/s
#   DATA_MB=64 STEADY=10 tests/bench/rebalance.sh     # a quick run
#   THROTTLE=16MiB PARALLEL=4 CHUNK=1MiB tests/bench/rebalance.sh   # rebalance.* settings
#
# The load is the example app's `load` (one connection, RATE SETs per second of
# LOAD_VALUE_BYTES values, every acknowledged write read back at the end) with
# `--latencies`: a fixed rate, so that the figure is the latency a client sees at the same
# offered load before and during the move, not the queueing of a saturating client on two
# shared cores; latency counts from when a write was due, so a stall also shows in the
# writes queued behind it. "Balanced" is the 4th node's rebalance worker (`/v1/status`,
# workers) idle after it has moved bytes, with all 4 nodes in its placement, for SETTLE_IDLE
# seconds; its bytes_moved / the time from the start of the 4th node is the rate.
# Needs redis-cli, curl, jq and cargo (or NODE_BIN and APP_BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

DATA_MB=${DATA_MB:-1024}
VALUE_BYTES=${VALUE_BYTES:-16384}
RATE=${RATE:-500}
LOAD_VALUE_BYTES=${LOAD_VALUE_BYTES:-1024}
WARMUP=${WARMUP:-5}
STEADY=${STEADY:-20}
SETTLE_IDLE=${SETTLE_IDLE:-2}
AFTER=${AFTER:-10}
THROTTLE=${THROTTLE:-64MiB}
PARALLEL=${PARALLEL:-2}
CHUNK=${CHUNK:-256KiB}
KEYS=$((DATA_MB * 1024 * 1024 / VALUE_BYTES))
need_tools redis-cli curl jq
setup_run
if [ -n "${APP_BIN:-}" ]; then
  APP=$APP_BIN
else
  cargo build --release -q -p opencluster-example-app
  APP=${CARGO_TARGET_DIR:-target}/release/opencluster-example-app
fi

now_us() { echo "${EPOCHREALTIME/./}"; }
status() { curl -sf "127.0.0.1:${ADMIN[$1]}/v1/status"; }
rebalance() { status "$1" | jq -c '.workers[] | select(.name == "rebalance")'; }

declare -A CLIENT ADMIN
SEED=""
start_node() {
  local n=$1 gossip join=()
  CLIENT[$n]=$(free_port)
  ADMIN[$n]=$(free_port)
  gossip=$(free_port)
  [ -n "$SEED" ] && join=(--join "$SEED")
  "$NODE" --dev --node-name "$n" --data-dir "$WORK/$n" --client-addr "127.0.0.1:${CLIENT[$n]}" \
    --admin-addr "127.0.0.1:${ADMIN[$n]}" --gossip-addr "127.0.0.1:$gossip" --rpc-addr 127.0.0.1:0 \
    --cluster-replicas 3 --rebalance-max-bytes-per-sec "$THROTTLE" --rebalance-max-parallel "$PARALLEL" \
    --rebalance-chunk-bytes "$CHUNK" \
    --log-level "${2:-warn}" "${join[@]}" >"$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  [ -n "$SEED" ] || SEED="127.0.0.1:$gossip"
  wait_ping "${CLIENT[$n]}"
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || { echo "timed out waiting for $what" >&2; tail -n 5 "$WORK"/*.log >&2; exit 1; }
    sleep 0.2
  done
}
sees_nodes() { [ "$(status "$1" | jq '.placement.nodes')" = "$2" ]; }
# Every node holds every key and has applied its write buffer to the engine.
settled() {
  local n
  for n in n1 n2 n3; do
    status "$n" | jq -e --argjson k "$KEYS" '.store.keys >= $k and .store.write_buffer.records == 0' >/dev/null || return 1
  done
}

for n in n1 n2 n3; do start_node "$n"; done
for n in n1 n2 n3; do wait_for 30 "$n to see 3 nodes" sees_nodes "$n" 3; done
store=$(status n1 | jq -c '{cache_bytes: .store.cache_bytes, write_buffer: .store.write_buffer.limit_bytes, partitions: .store.partitions}')
echo "machine: $(nproc) cores; $KEYS keys of $VALUE_BYTES bytes ($DATA_MB MiB) on 3 nodes, cluster.replicas 3"
echo "rebalance.max_bytes_per_sec $THROTTLE, rebalance.max_parallel $PARALLEL, rebalance.chunk_bytes $CHUNK; store $store"

# The data: distinct keys written through n1 as one pipelined stream.
started=$SECONDS
awk -v n="$KEYS" -v size="$VALUE_BYTES" 'BEGIN {
  v = "x"; while (length(v) < size) v = v v; v = substr(v, 1, size)
  for (i = 1; i <= n; i++) { k = "data:" i; printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, size, v }
}' | redis-cli -p "${CLIENT[n1]}" --pipe >"$WORK/pipe.out"
grep -q 'errors: 0,' "$WORK/pipe.out" || { echo "loading failed: $(tail -n 1 "$WORK/pipe.out")" >&2; exit 1; }
loaded=$((SECONDS - started))
wait_for 600 "every node to hold the $KEYS keys" settled
echo "loaded in ${loaded}s, every node settled after $((SECONDS - started))s; $(for n in n1 n2 n3; do
  status "$n" | jq -r --arg n "$n" '"\($n) \(.store.bytes_on_disk / 1048576 | floor) MiB on disk"'; done | paste -sd, | sed 's/,/, /g')"

# The steady load, a warm-up, then the window before.
"$APP" --url "redis://127.0.0.1:${CLIENT[n1]}" load --rate "$RATE" --duration forever --prefix steady \
  --value-bytes "$LOAD_VALUE_BYTES" --latencies "$WORK/latencies.tsv" >/dev/null 2>"$WORK/load.out" &
LOAD=$!
PIDS+=("$LOAD")
sleep "$WARMUP"
BEFORE_FROM=$(now_us)
sleep "$STEADY"
BEFORE_TO=$(now_us)
LOADAVG_BEFORE=$(cut -d' ' -f1 /proc/loadavg)

# The 4th node, and its rebalance worker polled until it is idle for SETTLE_IDLE seconds
# after having moved bytes, with 4 nodes in its placement.
DURING_FROM=$(now_us)
start_node n4 info
FIRST_BYTE=""
IDLE_SINCE=""
deadline=$((SECONDS + 600 + DATA_MB))
: >"$WORK/rebalance.tsv"
while :; do
  [ $SECONDS -lt $deadline ] || { echo "n4 did not finish rebalancing: $(rebalance n4)" >&2; exit 1; }
  t=$(now_us)
  if r=$(rebalance n4) && nodes=$(status n4 | jq '.placement.nodes'); then
    bytes=$(jq '.bytes_moved' <<<"$r")
    echo "$t $bytes" >>"$WORK/rebalance.tsv"
    [ "$bytes" -gt 0 ] && [ -z "$FIRST_BYTE" ] && FIRST_BYTE=$t
    if [ "$bytes" -gt 0 ] && [ "$nodes" = 4 ] && [ "$(jq -r '.state' <<<"$r")" = idle ]; then
      IDLE_SINCE=${IDLE_SINCE:-$t}
      [ $((t - IDLE_SINCE)) -lt $((SETTLE_IDLE * 1000000)) ] || break
    else
      IDLE_SINCE=""
    fi
  fi
  sleep 0.2
done
DURING_TO=$IDLE_SINCE
LOADAVG_DURING=$(cut -d' ' -f1 /proc/loadavg)
# The window after: the same load on the 4-node cluster, once the copy is over (1/4 of the
# keys now have primaries other than n1), to tell the cost of the move from that of the
# new placement.
AFTER_FROM=$(now_us)
sleep "$AFTER"
AFTER_TO=$(now_us)
kill -TERM "$LOAD"
load_status=0
wait "$LOAD" || load_status=$?

# Figures of the load's writes due in [FROM, TO) µs: ok count, errors, p50, p99, max (ms).
window() {
  awk -F'\t' -v a="$1" -v b="$2" '$1 >= a && $1 < b { if ($3 == "ok") print $2; else print "error" }' \
    "$WORK/latencies.tsv" | sort -n | awk '
      $1 == "error" { e++; next } { v[++n] = $1 }
      function q(p,  i) { i = int(n * p + 0.999999); if (i < 1) i = 1; return v[i] / 1000 }
      END { printf "%d %d %.3f %.3f %.3f\n", n, e, q(0.5), q(0.99), q(1) }'
}
read -r b_ok b_err b_p50 b_p99 b_max < <(window "$BEFORE_FROM" "$BEFORE_TO")
read -r d_ok d_err d_p50 d_p99 d_max < <(window "$DURING_FROM" "$DURING_TO")
read -r a_ok a_err a_p50 a_p99 a_max < <(window "$AFTER_FROM" "$AFTER_TO")
b_secs=$(awk -v a="$BEFORE_FROM" -v b="$BEFORE_TO" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')
d_secs=$(awk -v a="$DURING_FROM" -v b="$DURING_TO" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')
a_secs=$(awk -v a="$AFTER_FROM" -v b="$AFTER_TO" 'BEGIN { printf "%.3f", (b - a) / 1e6 }')
r=$(rebalance n4)
moved=$(jq '.bytes_moved' <<<"$r")
throttle_bytes=$(numfmt --from=iec-i "${THROTTLE%B}" 2>/dev/null || numfmt --from=iec "${THROTTLE%iB}")

echo
echo "timeline (t = seconds since n4 started; the load's writes due in each 2 s; MiB = n4's bytes_moved at its end)"
awk -v t0="$DURING_FROM" -v from="$BEFORE_FROM" -v to="$AFTER_TO" -v step=2000000 '
  FNR == NR { rt[++m] = $1; rb[m] = $2; next }
  $1 >= from && $1 < to { x = ($1 - t0) / step; w = int(x); if (w > x) w--; if ($3 == "ok") { c[w]++; l[w, c[w]] = $2 } else e[w]++
    if (!(w in seen)) { seen[w] = 1; ws[++nw] = w } }
  END {
    printf "%6s %8s %7s %9s %9s %8s\n", "t", "ops/s", "errors", "p99 ms", "max ms", "MiB"
    for (j = 1; j <= nw; j++) {
      w = ws[j]; n = c[w]; delete s
      for (i = 1; i <= n; i++) s[i] = l[w, i]
      asort_n(s, n)
      start = t0 + w * step; end = start + step; mb = 0
      for (i = 1; i <= m; i++) if (rt[i] <= end) mb = rb[i]
      if (start < from) start = from
      if (end > to) end = to
      printf "%6d %8.0f %7d %9.3f %9.3f %8.0f\n", w * step / 1e6, n / ((end - start) / 1e6), e[w], s[int(n * 0.99 + 0.999999)] / 1000, s[n] / 1000, mb / 1048576
    }
  }
  function asort_n(a, n,  i, j, x) { for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j > 0 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x } }
' "$WORK/rebalance.tsv" "$WORK/latencies.tsv"

echo
awk -v moved="$moved" -v thr="$throttle_bytes" -v ds="$d_secs" -v t0="$DURING_FROM" -v f="$FIRST_BYTE" -v t1="$DURING_TO" 'BEGIN {
  printf "balanced %.1f s after n4 started (first byte after %.1f s); moved %.0f MiB, %s keys\n", ds, (f - t0) / 1e6, moved / 1048576, "'"$(jq '.keys_moved' <<<"$r")"'"
  printf "MiB/s moved: %.1f over the whole time, %.1f from the first byte; throttle %.1f MiB/s (%.2fx, %.2fx of it)\n",
    moved / 1048576 / ds, moved / 1048576 / ((t1 - f) / 1e6), thr / 1048576, moved / ds / thr, moved / ((t1 - f) / 1e6) / thr
}'
grep -o 'rebalance finished.*' "$WORK/n4.log" | sed 's/\x1b\[[0-9;]*m//g' | sed 's/^/n4 log: /' || true
printf '\nload: %s SET/s of %s bytes through n1, one connection; 1-minute load average at the end of before %s, of during %s\n' \
  "$RATE" "$LOAD_VALUE_BYTES" "$LOADAVG_BEFORE" "$LOADAVG_DURING"
printf '%-8s %8s %8s %8s %10s %10s %10s\n' window secs ops/s errors "p50 ms" "p99 ms" "max ms"
printf '%-8s %8s %8.0f %8d %10s %10s %10s\n' before "$b_secs" "$(awk -v n="$b_ok" -v s="$b_secs" 'BEGIN { print n / s }')" "$b_err" "$b_p50" "$b_p99" "$b_max"
printf '%-8s %8s %8.0f %8d %10s %10s %10s\n' during "$d_secs" "$(awk -v n="$d_ok" -v s="$d_secs" 'BEGIN { print n / s }')" "$d_err" "$d_p50" "$d_p99" "$d_max"
printf '%-8s %8s %8.0f %8d %10s %10s %10s\n' after "$a_secs" "$(awk -v n="$a_ok" -v s="$a_secs" 'BEGIN { print n / s }')" "$a_err" "$a_p50" "$a_p99" "$a_max"
awk -v bo="$b_ok" -v bs="$b_secs" -v do_="$d_ok" -v ds="$d_secs" -v bp="$b_p99" -v dp="$d_p99" -v ap="$a_p99" -v thr="$throttle_bytes" \
  -v moved="$moved" -v f="$FIRST_BYTE" -v t1="$DURING_TO" -v errs="$((b_err + d_err + a_err))" 'BEGIN {
  ratio = dp / bp; rate = moved / ((t1 - f) / 1e6) / thr
  printf "during/before: ops/s %.2fx, p99 %.2fx (after/before p99 %.2fx)\n", (do_ / ds) / (bo / bs), ratio, ap / bp
  printf "goal: copy at the throttle (>= 0.9x): %s; p99 during <= 2x before: %s; no client errors: %s\n",
    (rate >= 0.9) ? "met" : "NOT met", (ratio <= 2) ? "met" : "NOT met", (errs == 0) ? "met" : "NOT met" }'
grep -E '^(load|verify):' "$WORK/load.out" | sed 's/^/app /'
echo "app exit status: $load_status (0: every acknowledged write read back)"
for n in n1 n2 n3 n4; do
  pulls=$(curl -s "127.0.0.1:${ADMIN[$n]}/metrics" | awk '/^opencluster_rpc_(served|calls)_total\{[^}]*kind="pull"/ { printf "%s%s %s", sep, $1, $2; sep = ", " }')
  status "$n" | jq -r --arg n "$n" --arg pulls "${pulls:-none}" '"\($n): \(.store.keys) keys, \(.store.bytes_on_disk / 1048576 | floor) MiB on disk, RSS \(.memory.rss_bytes / 1048576 | floor) MiB; rebalance \(.workers[] | select(.name == "rebalance") | "\(.state), \(.bytes_moved / 1048576 | floor) MiB moved, \(.failed_attempts) failed attempts"); pull RPCs: \($pulls)"'
done
# A lost acknowledged write fails the run, whatever the figures.
[ "$load_status" = 0 ]
