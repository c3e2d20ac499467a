#!/usr/bin/env bash
# Home keyspaces across a WAN, against Redis across the same WAN, in one run on one
# machine.
#
# Two datacenters (NODES nodes and one connector each, customer keys made with
# opencluster-pki, `acct:` keys living in dc1) with the WAN between the connectors through
# opencluster-relay at DELAY_MS one way. The anchor is what an app in dc2 has without
# OpenCluster when its data must live in dc1: a redis-server "in dc1" that the app reaches
# through the relay's TCP mode at the same delay. redis-benchmark (CLIENTS clients,
# REQUESTS requests, ROUNDS rounds, medians shown) runs from "dc2":
#
#   SET acct:<random of KEYS>   forwarded to dc1 and acknowledged there  | SET across the WAN
#   INCR acct:counter           one key, exact                           | INCR across the WAN
#   GET acct:<random of KEYS>   from dc2's home cache after a first pass | GET across the WAN
#
# and the same SET through a dc1 node, where the keys live, for reference. At the end the
# counter is checked: it holds every increment acknowledged (both sides).
#
#   tests/bench/home-keyspace.sh
#   ROUNDS=1 REQUESTS=500 tests/bench/home-keyspace.sh   # quick
#
# Binaries are built in release mode (BIN_DIR skips the build). Needs redis-server,
# redis-cli, redis-benchmark, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

NODES=${NODES:-1}
DELAY_MS=${DELAY_MS:-20}
CLIENTS=${CLIENTS:-20}
REQUESTS=${REQUESTS:-2000}
ROUNDS=${ROUNDS:-3}
KEYS=${KEYS:-1000}
need_tools redis-server redis-cli redis-benchmark curl jq

setup_datacenters_run
fail() { echo "home-keyspace: $*" >&2; tail -n 20 "$WORK"/*.log >&2; exit 1; }

HOME_FLAGS=(--keyspaces-home acct:=dc1)
declare -A CLIENT ADMIN GOSSIP
start_datacenters "$NODES" "${HOME_FLAGS[@]}"

declare -A WAN RELAY_PORT CADMIN
for dc in dc1 dc2; do
  WAN[$dc]=$(free_port)
  RELAY_PORT[$dc]=$(free_port)
  CADMIN[$dc]=$(free_port)
  "$RELAY" --udp --listen "127.0.0.1:${RELAY_PORT[$dc]}" --to "127.0.0.1:${WAN[$dc]}" --delay-ms "$DELAY_MS" \
    >"$WORK/relay-$dc.log" 2>&1 &
  PIDS+=($!)
done
for pair in dc1:dc2 dc2:dc1; do
  dc=${pair%:*} peer=${pair#*:}
  "$CONNECTOR" --node-name "connector-$dc" --datacenter "$dc" --tls-dir "$WORK/tls-$dc" \
    --data-dir "$WORK/connector-$dc" --admin-addr "127.0.0.1:${CADMIN[$dc]}" \
    --gossip-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --wan-addr "127.0.0.1:${WAN[$dc]}" \
    --join "127.0.0.1:${GOSSIP[$dc-n1]}" --peer "$peer=127.0.0.1:${RELAY_PORT[$peer]}" \
    "${HOME_FLAGS[@]}" --log-level warn >"$WORK/connector-$dc.log" 2>&1 &
  PIDS+=($!)
  wait_eval "curl -sf 127.0.0.1:${CADMIN[$dc]}/v1/health >/dev/null" 60
done

# The anchor: Redis "in dc1", reached from "dc2" through the TCP relay.
RP=$(free_port)
RT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$RP" --dir "$WORK/redis" --bind 127.0.0.1 --appendonly yes --appendfsync everysec \
  --save "" --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
"$RELAY" --tcp --listen "127.0.0.1:$RT" --to "127.0.0.1:$RP" --delay-ms "$DELAY_MS" >"$WORK/relay-redis.log" 2>&1 &
PIDS+=($!)
wait_ping "$RP"
wait_ping "$RT"

DC1=${CLIENT[dc1-n1]}
DC2=${CLIENT[dc2-n1]}
# Every dc2 node reaches dc1 through its connector before anything is measured.
for i in $(seq "$NODES"); do
  wait_eval "[ \"\$(redis-cli -p ${CLIENT[dc2-n$i]} set acct:warm up)\" = OK ]" 60
done

echo "machine: $(nproc) cores; redis $(redis-server --version | awk '{print $3}'); $NODES node(s) per datacenter;" \
  "WAN ${DELAY_MS} ms one way; $CLIENTS clients, $REQUESTS requests, median of $ROUNDS rounds"

# bench LABEL PORT COMMAND...: ROUNDS runs of redis-benchmark, lines "LABEL,rps,p50,p99".
bench() {
  local label=$1 port=$2 round
  shift 2
  for round in $(seq "$ROUNDS"); do
    redis-benchmark -p "$port" -c "$CLIENTS" -n "$REQUESTS" -r "$KEYS" --csv "$@" 2>/dev/null | tail -n +2 |
      tr -d '"' | awk -F, -v l="$label" '{ print l "," $2 "," $5 "," $7 }' >>"$WORK/results.csv"
  done
}
col() { awk -F, -v l="$1" -v c="$2" '$1 == l { print $c }' "$WORK/results.csv" | median; }

log "SET: dc2 -> home dc1, Redis across the WAN, dc1 locally"
bench set-home "$DC2" SET acct:__rand_int__ v
bench set-redis "$RT" SET acct:__rand_int__ v
bench set-local "$DC1" SET acct:__rand_int__ v
log "INCR of one key"
bench incr-home "$DC2" INCR acct:counter
bench incr-redis "$RT" INCR acct:counter
log "GET: a first pass fills dc2's home cache"
redis-benchmark -p "$DC2" -c "$CLIENTS" -n $((KEYS * 4)) -r "$KEYS" -q GET acct:__rand_int__ >/dev/null 2>&1
bench get-home "$DC2" GET acct:__rand_int__
bench get-redis "$RT" GET acct:__rand_int__

printf '\n%-44s %10s %9s %9s\n' "" ops/s p50_ms p99_ms
row() { printf '%-44s %10s %9s %9s\n' "$1" "$(col "$2" 2)" "$(col "$2" 3)" "$(col "$2" 4)"; }
row "SET acct:* from dc2 (home dc1, synchronous)" set-home
row "SET on Redis across the WAN" set-redis
row "SET acct:* in dc1 (the home, local)" set-local
row "INCR acct:counter from dc2" incr-home
row "INCR on Redis across the WAN" incr-redis
row "GET acct:* from dc2 (cached under leases)" get-home
row "GET on Redis across the WAN" get-redis
ratio() { awk -v a="$(col "$1" 3)" -v b="$(col "$2" 3)" 'BEGIN { if (b > 0) printf "%.3g", a / b; else print "n/a" }'; }
printf '\np50 opencluster/redis: SET %sx, INCR %sx, GET %sx\n' "$(ratio set-home set-redis)" \
  "$(ratio incr-home incr-redis)" "$(ratio get-home get-redis)"

counter=$(redis-cli -p "$DC1" get acct:counter)
expected=$((ROUNDS * REQUESTS))
echo "acct:counter after $expected INCRs from dc2: $counter (read in dc1)"
[ "$counter" = "$expected" ] || fail "acct:counter is $counter, not $expected"
