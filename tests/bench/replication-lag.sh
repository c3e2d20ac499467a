#!/usr/bin/env bash
# Replication between datacenters, against Redis replication through the same WAN, in
# one run on one machine:
#
# 1. Lag: two datacenters (NODES nodes and one connector each, customer keys made with
#    opencluster-pki) with the WAN between the connectors through opencluster-relay at
#    DELAY_MS one way; and a redis-server primary with a `replicaof` replica through the
#    relay's TCP mode at the same delay. Under the same background load (LOAD_RATE SETs/s
#    of random keys into dc1 / the primary), replication-probe writes SAMPLES distinct
#    keys, one every PROBE_MS, and polls dc2 / the replica for each: lag = from the write's
#    acknowledgement to the first read that returns it; p50/p99 side by side, and the ratio.
# 2. Throughput: THROUGHPUT_KEYS distinct keys written into dc1 / the primary as fast as
#    they are taken (THROUGHPUT_CONNS pipelined connections), and the time until every one
#    reads back in dc2 / the replica: writes/s reaching the other side, sustained.
# 3. Catch-up: the WAN is cut for CUT_SECONDS while CUT_RATE SETs/s of distinct keys go
#    into dc1, then healed; once dc2 has every key, the bytes the dc1 connector shipped
#    (its sent_bytes: keys and encoded records, compressed as sent) and the bytes the
#    relays carried (QUIC payloads both ways, TLS and acknowledgements included) over the
#    bytes of keys and values written during the cut. Once with connector.compression =
#    lz4, once with none (the dc1 connector restarted with the setting, same cursors).
#
#   tests/bench/replication-lag.sh
#   SAMPLES=300 CUT_SECONDS=10 THROUGHPUT_KEYS=50000 tests/bench/replication-lag.sh   # quick
#   APPLY_DELAY=20ms tests/bench/replication-lag.sh   # dc nodes with store.apply_delay=20ms
#   SECTIONS=lag NODES=1 tests/bench/replication-lag.sh  # only part 1, one node per datacenter
#
# Values are VALUE_BYTES bytes: a small JSON-like record padded with random hexadecimal
# (partly compressible). Redis runs with appendonly yes / appendfsync everysec, the nodes
# with their default fsync every 1s. Binaries are built in release mode (BIN_DIR skips
# the build). Needs redis-server, redis-cli, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

NODES=${NODES:-2}
DELAY_MS=${DELAY_MS:-20}
SAMPLES=${SAMPLES:-1000}
PROBE_MS=${PROBE_MS:-10}
LOAD_RATE=${LOAD_RATE:-2000}
VALUE_BYTES=${VALUE_BYTES:-256}
THROUGHPUT_KEYS=${THROUGHPUT_KEYS:-200000}
THROUGHPUT_CONNS=${THROUGHPUT_CONNS:-8}
CUT_SECONDS=${CUT_SECONDS:-60}
CUT_RATE=${CUT_RATE:-1000}
APPLY_DELAY=${APPLY_DELAY:-}
SECTIONS=${SECTIONS:-lag,throughput,catchup}
need_tools redis-server redis-cli curl jq

setup_datacenters_run replication-probe
PROBE=$BIN_DIR/replication-probe

# field LINE NAME: the value after NAME in a line of "name value" pairs.
field() { echo "$1" | awk -v f="$2" '{ for (i = 1; i < NF; i++) if ($i == f) print $(i + 1) }'; }
fail() { echo "replication-lag: $*" >&2; tail -n 20 "$WORK"/*.log >&2; exit 1; }

# --- keys and the two datacenters ---------------------------------------------------
declare -A CLIENT ADMIN GOSSIP
apply_flags=()
[ -n "$APPLY_DELAY" ] && apply_flags=(--store-apply-delay "$APPLY_DELAY")
start_datacenters "$NODES" "${apply_flags[@]}"

# The WAN: one UDP relay in front of each connector, both obeying one control file.
CTL=$WORK/wan.ctl
echo heal >"$CTL"
declare -A WAN RELAY_PORT CADMIN CPID
for dc in dc1 dc2; do
  WAN[$dc]=$(free_port)
  RELAY_PORT[$dc]=$(free_port)
  CADMIN[$dc]=$(free_port)
  "$RELAY" --udp --listen "127.0.0.1:${RELAY_PORT[$dc]}" --to "127.0.0.1:${WAN[$dc]}" --delay-ms "$DELAY_MS" \
    --control "$CTL" --stats "$WORK/relay-$dc.json" >"$WORK/relay-$dc.log" 2>&1 &
  PIDS+=($!)
done

# start_connector DC PEER_DC COMPRESSION: (re)starts DC's connector on its data dir.
start_connector() {
  local dc=$1 peer=$2
  "$CONNECTOR" --node-name "connector-$dc" --datacenter "$dc" --tls-dir "$WORK/tls-$dc" \
    --data-dir "$WORK/connector-$dc" --admin-addr "127.0.0.1:${CADMIN[$dc]}" \
    --gossip-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --wan-addr "127.0.0.1:${WAN[$dc]}" \
    --join "127.0.0.1:${GOSSIP[$dc-n1]}" --peer "$peer=127.0.0.1:${RELAY_PORT[$peer]}" \
    --compression "$3" --log-level warn >>"$WORK/connector-$dc.log" 2>&1 &
  CPID[$dc]=$!
  PIDS+=($!)
  wait_eval "curl -sf 127.0.0.1:${CADMIN[$dc]}/v1/health >/dev/null" 60
}
start_connector dc1 dc2 lz4
start_connector dc2 dc1 lz4
link() { curl -sf "127.0.0.1:${CADMIN[$1]}/v1/status" | jq -r ".links[0].$2"; }
relay_bytes() { jq -s 'map(.bytes_to_target + .bytes_back) | add' "$WORK/relay-dc1.json" "$WORK/relay-dc2.json"; }
# Waits (up to 30 s) until dc1's shipped bytes and the relays' byte counts stop moving
# (the same in two reads 200 ms apart): the last batch and its QUIC acknowledgements are
# counted before a measurement starts or ends.
wait_settled() {
  local deadline=$((SECONDS + 30)) before now
  before="$(link dc1 sent_bytes) $(relay_bytes)"
  while :; do
    sleep 0.2
    now="$(link dc1 sent_bytes) $(relay_bytes)"
    [ "$now" != "$before" ] || return 0
    [ $SECONDS -lt $deadline ] || fail "byte counters still moving after 30 s"
    before=$now
  done
}

# --- Redis: a primary and a replica through the TCP relay -----------------------------
RP=$(free_port)
RR=$(free_port)
RT=$(free_port)
RCTL=$WORK/redis.ctl
echo heal >"$RCTL"
mkdir -p "$WORK/redis-p" "$WORK/redis-r"
redis_flags=(--bind 127.0.0.1 --appendonly yes --appendfsync everysec --save "" --daemonize no)
redis-server --port "$RP" --dir "$WORK/redis-p" "${redis_flags[@]}" >"$WORK/redis-p.log" 2>&1 &
PIDS+=($!)
"$RELAY" --tcp --listen "127.0.0.1:$RT" --to "127.0.0.1:$RP" --delay-ms "$DELAY_MS" --control "$RCTL" \
  --stats "$WORK/relay-redis.json" >"$WORK/relay-redis.log" 2>&1 &
PIDS+=($!)
wait_ping "$RP"
redis-server --port "$RR" --dir "$WORK/redis-r" --replicaof 127.0.0.1 "$RT" "${redis_flags[@]}" \
  >"$WORK/redis-r.log" 2>&1 &
PIDS+=($!)
wait_ping "$RR"
wait_eval "redis-cli -p $RR info replication | grep -q 'master_link_status:up'" 60

DC1_WRITE=$(for i in $(seq "$NODES"); do printf '127.0.0.1:%s,' "${CLIENT[dc1-n$i]}"; done)
DC1_WRITE=${DC1_WRITE%,}
DC2_READ=127.0.0.1:${CLIENT[dc2-n$NODES]}

# The link carries a first write both ways before anything is measured.
redis-cli -p "${CLIENT[dc1-n1]}" set warm up >/dev/null
wait_eval "[ \"\$(redis-cli -p ${CLIENT[dc2-n1]} get warm)\" = up ]" 60

echo "machine: $(nproc) cores; redis $(redis-server --version | awk '{print $3}'); $NODES nodes per datacenter;" \
  "WAN ${DELAY_MS} ms one way; values $VALUE_BYTES bytes; store.apply_delay ${APPLY_DELAY:-default}"

section() { [[ ",$SECTIONS," == *",$1,"* ]]; }

# --- 1. lag --------------------------------------------------------------------------
if section lag; then
lag_args=(--samples "$SAMPLES" --probe-every-ms "$PROBE_MS" --load-rate "$LOAD_RATE" --value-bytes "$VALUE_BYTES")
log "lag: opencluster"
OURS=$("$PROBE" lag --write "$DC1_WRITE" --read "$DC2_READ" --run oc "${lag_args[@]}")
log "lag: redis"
REDIS=$("$PROBE" lag --write "127.0.0.1:$RP" --read "127.0.0.1:$RR" --run redis "${lag_args[@]}")
printf '\n1. replication lag, write acknowledged -> readable on the other side (%s probes, %s SETs/s of load)\n' \
  "$SAMPLES" "$LOAD_RATE"
printf '   %-12s %9s %9s %9s %9s %8s %10s %7s\n' "" p50_ms p90_ms p99_ms max_ms missing "load ops/s" errors
for who in redis ours; do
  line=$([ $who = ours ] && echo "$OURS" || echo "$REDIS")
  printf '   %-12s %9s %9s %9s %9s %8s %10s %7s\n' "$([ $who = ours ] && echo opencluster || echo redis)" \
    "$(field "$line" p50_ms)" "$(field "$line" p90_ms)" "$(field "$line" p99_ms)" "$(field "$line" max_ms)" \
    "$(field "$line" missing)" "$(field "$line" load_ops_per_sec)" "$(field "$line" errors)"
done
printf '   ratio opencluster/redis: p50 %sx, p99 %sx (goal: p99 within 1.2x)\n' \
  "$(awk -v a="$(field "$OURS" p50_ms)" -v b="$(field "$REDIS" p50_ms)" 'BEGIN { printf "%.2f", a / b }')" \
  "$(awk -v a="$(field "$OURS" p99_ms)" -v b="$(field "$REDIS" p99_ms)" 'BEGIN { printf "%.2f", a / b }')"

fi

# --- 2. throughput -------------------------------------------------------------------
if section throughput; then
# throughput LABEL WRITE_ADDRS READ_ADDR: prints "written_per_s replicated_per_s errors"
# (writes not acknowledged are not waited for).
throughput() {
  local -a targets
  local addrs="" i start mid end out
  IFS=, read -r -a targets <<<"$2"
  for i in $(seq 0 $((THROUGHPUT_CONNS - 1))); do addrs+=${targets[i % ${#targets[@]}]},; done
  start=$(date +%s.%N)
  # A rate no node takes: as fast as it goes, pipelined per connection.
  out=$("$PROBE" write --write "${addrs%,}" --prefix "tp-$1" --count "$THROUGHPUT_KEYS" --rate 10000000 \
    --value-bytes "$VALUE_BYTES")
  mid=$(date +%s.%N)
  errors=$(field "$out" errors)
  "$PROBE" check --read "$3" --prefix "tp-$1" --count "$THROUGHPUT_KEYS" --allow-missing "$errors" \
    --timeout-s 300 >/dev/null || fail "not every acknowledged key of the throughput run reached the other side of $1"
  end=$(date +%s.%N)
  awk -v n="$(field "$out" keys)" -v s="$start" -v m="$mid" -v e="$end" -v x="$errors" \
    'BEGIN { printf "%.0f %.0f %d", n / (m - s), n / (e - s), x }'
}
log "throughput: opencluster"
TP_OURS=$(throughput oc "$DC1_WRITE" "$DC2_READ")
log "throughput: redis"
TP_REDIS=$(throughput redis "127.0.0.1:$RP" "127.0.0.1:$RR")
printf '\n2. throughput: %s distinct keys written as fast as taken (%s connections), until all are readable on the other side\n' \
  "$THROUGHPUT_KEYS" "$THROUGHPUT_CONNS"
printf '   %-12s %16s %22s %8s\n' "" "written/s" "replicated/s sustained" errors
# shellcheck disable=SC2086 # three fields
printf '   %-12s %16s %22s %8s\n' redis $TP_REDIS
# shellcheck disable=SC2086
printf '   %-12s %16s %22s %8s\n' opencluster $TP_OURS
printf '   ratio opencluster/redis replicated: %sx (goal: >= 20000/s)\n' \
  "$(awk -v a="$(echo "$TP_OURS" | cut -d' ' -f2)" -v b="$(echo "$TP_REDIS" | cut -d' ' -f2)" 'BEGIN { printf "%.2f", a / b }')"

fi

# --- 3. catch-up after a cut ---------------------------------------------------------
if section catchup; then
printf '\n3. catch-up after a %s s cut with %s SETs/s of distinct keys into dc1\n' "$CUT_SECONDS" "$CUT_RATE"
printf '   %-12s %14s %14s %8s %14s %8s %10s %7s\n' compression "changed bytes" "shipped bytes" ratio "relay bytes" ratio "catch-up s" errors
cuts=0
for compression in lz4 none; do
  if [ "$compression" != lz4 ]; then
    kill "${CPID[dc1]}"
    wait "${CPID[dc1]}" 2>/dev/null || true
    start_connector dc1 dc2 "$compression"
  fi
  wait_eval "[ \"\$(link dc1 lag_records)\" = 0 ]" 120
  wait_settled
  sent0=$(link dc1 sent_bytes)
  relay0=$(relay_bytes)
  log "catch-up ($compression): cut"
  echo cut >"$CTL"
  # The relays read the control file every 20 ms: the writes start once both have cut
  # (each prints "cut"), or the first of them crosses before the cut (with a lag of about
  # one WAN delay, it does).
  cuts=$((cuts + 1))
  wait_eval "[ \$(grep -c '^cut\$' $WORK/relay-dc1.log) -ge $cuts ] && [ \$(grep -c '^cut\$' $WORK/relay-dc2.log) -ge $cuts ]" 10
  out=$("$PROBE" write --write "$DC1_WRITE" --prefix "cut-$compression" --seconds "$CUT_SECONDS" --rate "$CUT_RATE" \
    --value-bytes "$VALUE_BYTES")
  errors=$(field "$out" errors)
  keys=$(field "$out" keys)
  changed=$(field "$out" bytes)
  [ "$(redis-cli -p "${CLIENT[dc2-n1]}" exists "cut-$compression:0")" = 0 ] || fail "a write crossed the cut WAN"
  log "catch-up ($compression): heal"
  echo heal >"$CTL"
  healed=$(date +%s.%N)
  "$PROBE" check --read "$DC2_READ" --prefix "cut-$compression" --count "$((keys + errors))" \
    --allow-missing "$errors" --timeout-s 300 >/dev/null ||
    fail "dc2 did not catch up after the cut"
  caught=$(date +%s.%N)
  wait_eval "[ \"\$(link dc1 lag_records)\" = 0 ]" 120
  wait_settled
  sent=$(($(link dc1 sent_bytes) - sent0))
  relay=$(($(relay_bytes) - relay0))
  printf '   %-12s %14s %14s %7sx %14s %7sx %10s %7s\n' "$compression" "$changed" "$sent" \
    "$(awk -v a="$sent" -v b="$changed" 'BEGIN { printf "%.2f", a / b }')" "$relay" \
    "$(awk -v a="$relay" -v b="$changed" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$caught" -v b="$healed" 'BEGIN { printf "%.1f", a - b }')" "$errors"
done
echo "   (goal: under 2x; changed = keys and values written during the cut, $VALUE_BYTES-byte values)"
fi
