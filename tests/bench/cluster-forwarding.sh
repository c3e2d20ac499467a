#!/usr/bin/env bash
# What forwarding costs: redis-benchmark GET/SET on one key through a node that owns it
# (its primary) and through a node that does not (which forwards every request over peer
# QUIC to the primary), in a 3-node cluster with 2 replicas, in the same run.
#
#   tests/bench/cluster-forwarding.sh                 # 200000 requests per test, 3 rounds
#   REQUESTS=50000 ROUNDS=1 tests/bench/cluster-forwarding.sh
#   REPLICAS=3 tests/bench/cluster-forwarding.sh      # every node owns every key: compares
#                                                     # the primary with another owner
#
# The key is redis-benchmark's own `key:__rand_int__` (no -r: one key), so "owner" and
# "non-owner" are well defined; `/v1/placement?key=` says which node is which. A SET
# through the primary is written locally and copied to the other owner before the
# answer (write quorum 2 of 2); through the non-owner it is forwarded to the primary,
# which does the same. Needs redis-benchmark, redis-cli and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-50}
REPLICAS=${REPLICAS:-2}
KEY='key:__rand_int__'
need_tools redis-benchmark redis-cli curl
setup_run

declare -A CLIENT ADMIN
SEED=""
for n in n1 n2 n3; do
  CLIENT[$n]=$(free_port)
  ADMIN[$n]=$(free_port)
  gossip=$(free_port)
  join=()
  [ -n "$SEED" ] && join=(--join "$SEED")
  "$NODE" --dev --node-name "$n" --data-dir "$WORK/$n" --client-addr "127.0.0.1:${CLIENT[$n]}" \
    --admin-addr "127.0.0.1:${ADMIN[$n]}" --gossip-addr "127.0.0.1:$gossip" --rpc-addr 127.0.0.1:0 \
    --cluster-replicas "$REPLICAS" --log-level warn "${join[@]}" >"$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  [ -n "$SEED" ] || SEED="127.0.0.1:$gossip"
  wait_ping "${CLIENT[$n]}"
done

# Every node must place partitions on all three before the figures mean anything.
deadline=$((SECONDS + 30))
for n in n1 n2 n3; do
  until curl -s "127.0.0.1:${ADMIN[$n]}/v1/status" | grep -q '"nodes":3'; do
    [ $SECONDS -lt $deadline ] || { echo "the cluster did not form" >&2; cat "$WORK"/*.log >&2; exit 1; }
    sleep 0.2
  done
done

placement=$(curl -s "127.0.0.1:${ADMIN[n1]}/v1/placement?key=$KEY")
OWNER=$(echo "$placement" | grep -o '"name":"n[0-9]"' | head -1 | cut -d'"' -f4)
NON_OWNER=""
for n in n1 n2 n3; do
  echo "$placement" | grep -q "\"name\":\"$n\"" || NON_OWNER=$n
done
OTHER_LABEL=non-owner
if [ -z "$NON_OWNER" ]; then
  # Every node owns the key: compare the primary with the second owner.
  NON_OWNER=$(echo "$placement" | grep -o '"name":"n[0-9]"' | sed -n 2p | cut -d'"' -f4)
  OTHER_LABEL="other owner"
fi
[ -n "$OWNER" ] && [ -n "$NON_OWNER" ] || { echo "cannot tell the nodes apart: $placement" >&2; exit 1; }
echo "machine: $(nproc) cores; requests $REQUESTS, clients $CLIENTS, 64-byte values, one key"
echo "key $KEY: $placement"
echo "replicas $REPLICAS; primary owner $OWNER (port ${CLIENT[$OWNER]}), $OTHER_LABEL $NON_OWNER (port ${CLIENT[$NON_OWNER]})"

bench_rounds "-t set,get" owner "${CLIENT[$OWNER]}" non-owner "${CLIENT[$NON_OWNER]}"

printf '\nmedian of %s rounds; "other" = the %s\n%-4s %-4s %12s %15s %7s   %-17s %-17s\n' "$ROUNDS" "$OTHER_LABEL" test P "owner ops/s" "other ops/s" ratio "owner p50/p99 ms" "other p50/p99"
for pipeline in 1 16; do
  for test in SET GET; do
    o=$(fig owner "$pipeline" "$test" 4)
    f=$(fig non-owner "$pipeline" "$test" 4)
    ratio=$(awk -v a="$f" -v b="$o" 'BEGIN { printf "%.2f", a / b }')
    printf '%-4s %-4s %12.0f %15.0f %7s   %-17s %-17s\n' "$test" "$pipeline" "$o" "$f" "${ratio}x" \
      "$(fig owner "$pipeline" "$test" 7)/$(fig owner "$pipeline" "$test" 9)" \
      "$(fig non-owner "$pipeline" "$test" 7)/$(fig non-owner "$pipeline" "$test" 9)"
  done
done
echo
for n in n1 n2 n3; do
  echo "$n: RSS $(rss_kb "${PIDS[$(( ${n#n} - 1 ))]}") kB; $(curl -s "127.0.0.1:${ADMIN[$n]}/metrics" | grep -E '^opencluster_rpc_calls_total\{kind="(write|read|replicate)",outcome="ok"\}' | tr '\n' ' ')"
done
