#!/usr/bin/env bash
# Failure detection: how long after a `kill -9` every other node's /v1/members shows the
# killed node `down`. Runs NODES node processes (release build) on loopback, kills one,
# polls the others every POLL seconds, ROUNDS times with a fresh cluster each round; once
# with OpenCluster's default gossip timing and once with memberlist's LAN defaults
# expressed in the same settings (the anchor), and prints median/max side by side.
#
#   tests/bench/gossip-detection.sh                    # 4 nodes, 7 rounds per timing
#   NODES=3 ROUNDS=3 tests/bench/gossip-detection.sh
#
# The anchor is hashicorp/memberlist's DefaultLANConfig (config.go): ProbeInterval 1s,
# ProbeTimeout 500ms, SuspicionMult 4 (4 x max(1, log10(n)) x ProbeInterval = 4s for up to
# 10 nodes), GossipInterval 200ms, GossipNodes 3, IndirectChecks 3. It is also what foca's
# Config::new_lan used before the gossip.* settings existed.
#
# NODE_BIN=path runs that binary instead of building target/release/opencluster-node.
# Needs curl. Figures include up to one POLL interval plus a curl round of latency.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/bench/lib.sh
. tests/bench/lib.sh

NODES=${NODES:-4}
ROUNDS=${ROUNDS:-7}
POLL=${POLL:-0.02}
need_tools curl
[ "$NODES" -ge 3 ] || { echo "gossip-detection: NODES must be at least 3" >&2; exit 2; }
KILL_SIGNAL=-9
setup_run

OURS=()
MEMBERLIST=(--gossip-probe-interval 1s --gossip-probe-timeout 500ms --gossip-suspicion-timeout 4s
  --gossip-interval 200ms --gossip-fanout 3 --gossip-indirect-probes 3)

now_ms() { date +%s%3N; }

# Members of node i (1-based) as JSON.
members() { curl -s --max-time 1 "http://127.0.0.1:${ADMIN[$1]}/v1/members" || true; }

# How many of the given nodes list member $1 in state $2.
count_state() {
  local name=$1 state=$2 n=0 i
  shift 2
  for i in "$@"; do
    # One member object per line; the keys' order is not fixed.
    members "$i" | tr '}' '\n' | grep "\"name\":\"$name\"" | grep -q "\"state\":\"$state\"" && n=$((n + 1))
  done
  echo "$n"
}

# round LABEL ARGS...: starts a fresh cluster, kills the last node, prints the milliseconds
# until every other node shows it down.
round() {
  local label=$1 i deadline
  shift
  PIDS=() ADMIN=() GOSSIP=()
  local used=" " p
  for i in $(seq "$NODES"); do
    # free_port only checks TCP and nothing is bound yet: keep the ports distinct.
    for kind in ADMIN GOSSIP; do
      p=$(free_port)
      while [[ $used == *" $p "* ]]; do p=$(free_port); done
      used+="$p "
      eval "$kind[i]=$p"
    done
  done
  for i in $(seq "$NODES"); do
    local join=()
    [ "$i" -gt 1 ] && join=(--join "127.0.0.1:${GOSSIP[1]}")
    mkdir -p "$WORK/$label-n$i"
    "$NODE" --dev --data-dir "$WORK/$label-n$i" --node-name "n$i" --client-addr 127.0.0.1:0 \
      --admin-addr "127.0.0.1:${ADMIN[i]}" --gossip-addr "127.0.0.1:${GOSSIP[i]}" --rpc-addr 127.0.0.1:0 --log-level warn \
      "${join[@]}" "$@" >"$WORK/$label-n$i.log" 2>&1 &
    PIDS+=($!)
  done
  # Converged: every node lists NODES members, all alive.
  deadline=$((SECONDS + 30))
  for i in $(seq "$NODES"); do
    until [ "$(members "$i" | grep -o '"state":"alive"' | wc -l)" -eq "$NODES" ]; do
      [ $SECONDS -lt $deadline ] || {
        echo "cluster did not converge (node n$i): $(members "$i")" >&2
        tail -n 5 "$WORK/$label"-n*.log >&2
        exit 1
      }
      sleep 0.1
    done
  done
  sleep 1 # a few probe rounds in the steady state
  local others victim=$NODES start end
  others=$(seq 1 $((NODES - 1)))
  start=$(now_ms)
  { kill -9 "${PIDS[victim - 1]}" && wait "${PIDS[victim - 1]}"; } 2>/dev/null || true
  # shellcheck disable=SC2086
  until [ "$(count_state "n$victim" down $others)" -eq $((NODES - 1)) ]; do
    [ $(($(now_ms) - start)) -lt 60000 ] || { echo "n$victim never seen down" >&2; exit 1; }
    sleep "$POLL"
  done
  end=$(now_ms)
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  { wait; } 2>/dev/null || true
  rm -rf "${WORK:?}/$label-"*
  echo $((end - start))
}

max() { sort -n | tail -1; }
min() { sort -n | head -1; }

echo "machine: $(nproc) cores; $NODES nodes on loopback; $ROUNDS rounds per timing; poll every ${POLL}s"
for r in $(seq "$ROUNDS"); do
  round ours "${OURS[@]}" >>"$WORK/ours.txt"
  round memberlist "${MEMBERLIST[@]}" >>"$WORK/memberlist.txt"
  echo "round $r of $ROUNDS: ours $(tail -1 "$WORK/ours.txt") ms, memberlist LAN $(tail -1 "$WORK/memberlist.txt") ms" >&2
done

printf '\nkill -9 -> every other node shows the member down (ms)\n'
printf '%-44s %8s %8s %8s\n' timing min median max
printf '%-44s %8s %8s %8s\n' "opencluster defaults (500ms/200ms/1s)" \
  "$(min <"$WORK/ours.txt")" "$(median <"$WORK/ours.txt")" "$(max <"$WORK/ours.txt")"
printf '%-44s %8s %8s %8s\n' "memberlist DefaultLANConfig (1s/500ms/4s)" \
  "$(min <"$WORK/memberlist.txt")" "$(median <"$WORK/memberlist.txt")" "$(max <"$WORK/memberlist.txt")"
echo "(probe interval / probe timeout / suspicion timeout; gossip every 200ms to 3 members in both)"
