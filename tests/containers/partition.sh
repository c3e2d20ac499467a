#!/usr/bin/env bash
# Container test: a node cut off from its network and connected again. Run by run.sh;
# alone: `bash tests/containers/partition.sh`.
#
# 1. three nodes p1..p3 on a network of their own, each with a fixed address (a host keeps
#    its address when its link goes down and comes back; the node reads its advertised
#    address from eth0 at start), joined by `join` (p1:7946,p2:7946,p3:7946), with a
#    read-only root filesystem (as deploy/k8s runs them: only /data and the socket
#    directory are written);
# 2. the app beside each node (its own container on the node's socket volume, with no
#    network at all) writes for 4s and reads everything back;
# 3. `docker network disconnect` takes p3 off the network: p1 and p2 must list it down,
#    and it them, within 30s;
# 4. the apps of p1 and p2 write for 6s more: every write must be acknowledged, none
#    failed;
# 5. `docker network connect` (same address) heals it: every node must list the three
#    alive within 60s, and every acknowledged write of 2 and 4 (distinct keys) must read
#    back through each of the three nodes, the healed one included.
SCENARIO=partition
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
begin

PASSWORD="pw-$RANDOM$RANDOM"
NET="$RUN-net"
NODES=(p1 p2 p3)

# A /24 of its own, fixed so that p3 can get its address back; another one if taken.
for _ in 1 2 3 4 5; do
  octet=$((RANDOM % 200 + 20))
  SUBNET="10.213.$octet.0/24"
  if docker network create --label "$LABEL" --subnet "$SUBNET" "$NET" >/dev/null 2>"$WORK/net.err"; then
    break
  fi
  SUBNET=""
done
[ -n "$SUBNET" ] || fail "cannot create a network: $(cat "$WORK/net.err")"
ip_of() { echo "10.213.$octet.$((10 + ${1#p}))"; }

for n in "${NODES[@]}"; do
  docker volume create --label "$LABEL" "$RUN-$n-run" >/dev/null
  docker run -d --name "$RUN-$n" --hostname "$n" --label "$LABEL" --read-only \
    --network "$NET" --ip "$(ip_of "$n")" --network-alias "$n" \
    -e OPENCLUSTER_CLIENT_PASSWORD="$PASSWORD" -e OPENCLUSTER_JOIN=p1:7946,p2:7946,p3:7946 \
    -v "$RUN-$n-run:/run/opencluster" "${PREFIX}node:$TAG" >/dev/null
done
say "p1, p2, p3 started on $SUBNET"
wait_cluster_up "$RUN" p1 p2 p3
docker exec "$RUN-p1" /opencluster-node members | indent

# app NODE ARGS...: the example app beside NODE, on its socket volume, without a network.
app() {
  local n=$1
  shift
  docker run --rm -i --label "$LABEL" --network none -v "$RUN-$n-run:/run/opencluster" \
    "${PREFIX}example-app:$TAG" "$@"
}
# load NODE NAME DURATION: the app of NODE writes; acknowledged writes in $WORK/NAME.acked.
load() {
  app "$1" load --rate 150 --duration "$3" --prefix "$2" --acked - >"$WORK/$2.acked" 2>"$WORK/$2.log"
}
# load_all NAME DURATION NODE...: load through each NODE at once; each must acknowledge
# every write it attempted and read all of them back.
load_all() {
  local name=$1 duration=$2 n pids=() i=0
  shift 2
  for n in "$@"; do
    load "$n" "$name-$n" "$duration" &
    pids+=($!)
  done
  for n in "$@"; do
    wait "${pids[$i]}" || {
      cat "$WORK/$name-$n.log"
      fail "the app of $n: load or its check failed"
    }
    i=$((i + 1))
    grep -q 'errors=0 ' "$WORK/$name-$n.log" || {
      cat "$WORK/$name-$n.log"
      fail "the app of $n: some writes were not acknowledged"
    }
    printf '    %s: %s\n' "$n" "$(grep '^load: attempted' "$WORK/$name-$n.log")"
  done
}

say "each app writes through its node for 4s and reads its writes back"
load_all before 4s p1 p2 p3

say "docker network disconnect: p3 is cut off"
docker network disconnect "$NET" "$RUN-p3"
cut_at=$SECONDS
is_down() { [ "$(member_state "$1" "$2")" = down ]; }
wait_for 30 "p1 to list p3 down" is_down "$RUN-p1" p3
wait_for 30 "p2 to list p3 down" is_down "$RUN-p2" p3
say "p1 and p2 list p3 down $((SECONDS - cut_at))s after the cut"
wait_for 30 "p3 to list p1 down" is_down "$RUN-p3" p1
wait_for 30 "p3 to list p2 down" is_down "$RUN-p3" p2
container_ok "$RUN-p3" || fail "p3 should keep running while cut off"

say "the apps of p1 and p2 write for 6s while p3 is cut off"
load_all during 6s p1 p2

say "docker network connect (same address): p3 is back"
docker network connect --ip "$(ip_of p3)" --alias p3 "$NET" "$RUN-p3"
healed_at=$SECONDS
for n in "${NODES[@]}"; do
  wait_for 60 "$n to list p1 p2 p3 alive after the heal" sees_alive "$RUN-$n" "p1 p2 p3"
done
say "every node lists p1 p2 p3 alive $((SECONDS - healed_at))s after the heal"

cat "$WORK"/before-*.acked "$WORK"/during-*.acked >"$WORK/all.acked"
total=$(wc -l <"$WORK/all.acked")
[ "$(cut -f1 "$WORK/all.acked" | sort -u | wc -l)" -eq "$total" ] || fail "acknowledged keys are not distinct"
say "every acknowledged write ($total, distinct keys) through each node"
for n in "${NODES[@]}"; do
  printf '    %s: ' "$n"
  app "$n" verify --acked - <"$WORK/all.acked" 2>"$WORK/verify.log" || {
    cat "$WORK/verify.log"
    fail "acknowledged writes missing through $n"
  }
  tail -n 1 "$WORK/verify.log"
done
for n in "${NODES[@]}"; do
  container_ok "$RUN-$n" || fail "$n restarted or stopped"
done
say "all checks passed"
