#!/usr/bin/env bash
# Container test: two datacenters bridged by their connectors
# (deploy/compose/docker-compose.two-dc.yml). Run by run.sh, which builds the images
# first; alone: `bash tests/containers/two-datacenters.sh`.
#
# 1. brings up the two-datacenter example under a project name of its own: dc1 and dc2 of
#    two nodes each on their own networks, one connector each, the connectors also on
#    `wan`; all on the images' INSECURE default keys (dc1's and dc2's);
# 2. waits until every container is healthy and each node lists its two nodes and its
#    connector alive; each connector says it runs on the INSECURE default keys of its own
#    datacenter;
# 3. the example app writes distinct keys through a node of each datacenter; every
#    acknowledged write must read back through every node of the other datacenter;
# 4. `docker network disconnect` takes dc1's connector off `wan`: its link to dc2 must go
#    down; both datacenters take more writes (distinct keys, and 20 keys written in both
#    with different values), and dc2 must not see dc1's new writes while cut off;
# 5. `docker network connect` (with its name on `wan` again) heals the link: every
#    acknowledged write of 3 and 4 must read back through all four nodes, and each key
#    written on both sides must read the same through all four nodes, one of the two
#    values written.
# Every container, network and volume it made is removed on exit, also on failure.
#
# Needs redis-cli on the host (it talks to the nodes at their container addresses).
# Environment: OPENCLUSTER_COMPOSE (the compose command; detected when unset),
# IMAGE_PREFIX and OPENCLUSTER_TAG (the images under test).
SCENARIO=two-datacenters
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COMPOSE_FILE=deploy/compose/docker-compose.two-dc.yml
PASSWORD="pw-$RANDOM$RANDOM"
export OPENCLUSTER_CLIENT_PASSWORD=$PASSWORD OPENCLUSTER_TAG=$TAG OPENCLUSTER_IMAGE_PREFIX=$PREFIX

find_compose || fail "neither \`docker compose\` nor docker-compose found"
begin
command -v redis-cli >/dev/null || fail "redis-cli is needed (apt-get install redis-tools)"
docker image inspect "${PREFIX}connector:$TAG" >/dev/null 2>&1 ||
  fail "image ${PREFIX}connector:$TAG missing: run deploy/docker/build-images.sh"
PROJECT=$RUN
say "compose: ${COMPOSE[*]}, project $PROJECT"

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
scenario_logs() { dc logs --no-color --tail 25 2>&1 | tail -n 250; }
scenario_cleanup() {
  dc down -v --remove-orphans -t 5 >/dev/null 2>&1
  local label="label=com.docker.compose.project=$PROJECT"
  docker ps -aq --filter "$label" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "$label" | xargs -r docker volume rm >/dev/null 2>&1
  docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null 2>&1
}

NODES=(dc1-n1 dc1-n2 dc2-n1 dc2-n2)
id_of() { dc ps -q "$1"; }
# The compose networks (compose names them <project>_<network>).
net_of() { echo "${PROJECT}_$1"; }

services_healthy() {
  local s
  for s in "$@"; do
    healthy "$(id_of "$s")" || return 1
  done
}

# ip_on SERVICE NETWORK: the service's address on a compose network.
ip_on() {
  docker inspect -f "{{(index .NetworkSettings.Networks \"$(net_of "$2")\").IPAddress}}" "$(id_of "$1")"
}
# The nodes' addresses, read once they run (they never change: no node is disconnected).
declare -A IPS
# cli NODE ARGS...: redis-cli against a node at its address on its datacenter's network.
cli() {
  local n=$1
  shift
  redis-cli -h "${IPS[$n]}" -p 6379 -a "$PASSWORD" --no-auth-warning "$@"
}

# app NODE ARGS...: the example app on NODE's datacenter network, talking to NODE over TCP.
app() {
  local n=$1
  shift
  docker run --rm -i --label "$LABEL" --network "$(net_of "${n%%-*}")" \
    -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" "${PREFIX}example-app:$TAG" --url "redis://$n:6379" "$@"
}
# load NODE NAME DURATION: writes distinct keys through NODE; every write must be
# acknowledged and read back through it. The acknowledged ones go to $WORK/NAME.acked.
load() {
  app "$1" load --rate 100 --duration "$3" --prefix "$2-$RUN" --acked - >"$WORK/$2.acked" 2>"$WORK/$2.log" &&
    grep -q 'errors=0 ' "$WORK/$2.log" || {
    cat "$WORK/$2.log"
    fail "load $2 through $1 failed or had errors"
  }
  printf '    %s through %s: %s\n' "$2" "$1" "$(grep '^load: attempted' "$WORK/$2.log")"
}
# holds NODE NAME: every write of $WORK/NAME.acked reads back through NODE.
holds() { app "$1" verify --acked - <"$WORK/$2.acked" >/dev/null 2>"$WORK/verify.log"; }
# wait_held NAME NODE...: waits until each NODE holds every write of NAME.
wait_held() {
  local name=$1 n
  shift
  for n in "$@"; do
    wait_for 90 "$n to hold every acknowledged write of $name ($(wc -l <"$WORK/$name.acked"))" holds "$n" "$name"
  done
  printf '    %s: all %s held by %s\n' "$name" "$(wc -l <"$WORK/$name.acked")" "$*"
}

# link_state CONNECTOR REMOTE: the state of the connector's link to REMOTE.
link_state() {
  docker exec "$(id_of "$1")" /opencluster-connector status --json 2>/dev/null |
    jq -r --arg r "$2" '[.links[] | select(.remote == $r) | .link][0] // empty' 2>/dev/null
}
link_is() { [ "$(link_state "$1" "$2")" = "$3" ]; }

# ---------------------------------------------------------------------------------------
say "compose up: dc1 and dc2, two nodes and a connector each"
dc up -d --quiet-pull 2>&1 | indent
wait_for 120 "every node and connector healthy" services_healthy "${NODES[@]}" dc1-connector dc2-connector
for n in "${NODES[@]}"; do
  d=${n%%-*}
  wait_for 60 "$n to list $d-connector $d-n1 $d-n2 alive" sees_alive "$(id_of "$n")" "$d-connector $d-n1 $d-n2"
done
for n in "${NODES[@]}"; do IPS[$n]=$(ip_on "$n" "${n%%-*}"); done
say "every container healthy; each datacenter lists its two nodes and its connector alive:"
docker exec "$(id_of dc2-n1)" /opencluster-node members | indent
for d in dc1 dc2; do
  health=$(docker exec "$(id_of "$d-connector")" /opencluster-connector health)
  [ "$(jq -r .insecure_default_keys <<<"$health")" = true ] || fail "$d-connector: not on the default keys: $health"
  logged "$(id_of "$d-connector")" "spiffe://opencluster-demo/dc/$d/connector/$d-connector" ||
    fail "$d-connector: no certificate of the demo cluster's $d in its log"
  logged "$(id_of "$d-connector")" INSECURE || fail "$d-connector: no INSECURE warning in its log"
done
say "each connector runs on the INSECURE default keys of its own datacenter"

say "writing through dc1-n1 and dc2-n2 at once"
load dc1-n1 first-dc1 4s &
p1=$!
load dc2-n2 first-dc2 4s &
p2=$!
wait $p1 || fail "load through dc1-n1"
wait $p2 || fail "load through dc2-n2"
wait_held first-dc1 dc2-n1 dc2-n2
wait_held first-dc2 dc1-n1 dc1-n2
wait_for 30 "dc1-connector's link to dc2 up" link_is dc1-connector dc2 up

say "cutting dc1-connector off the wan network"
CONNECTOR1=$(id_of dc1-connector)
docker network disconnect "$(net_of wan)" "$CONNECTOR1"
cut_at=$SECONDS
load dc1-n2 cut-dc1 5s &
p1=$!
load dc2-n1 cut-dc2 5s &
p2=$!
wait $p1 || fail "load through dc1-n2 during the cut"
wait $p2 || fail "load through dc2-n1 during the cut"
# The same keys in both datacenters, with different values.
for i in $(seq 1 20); do
  [ "$(cli dc1-n1 set "both-$RUN-$i" "dc1-$i")" = OK ] || fail "SET both-$RUN-$i through dc1-n1"
  [ "$(cli dc2-n2 set "both-$RUN-$i" "dc2-$i")" = OK ] || fail "SET both-$RUN-$i through dc2-n2"
done
wait_for 30 "dc1-connector's link to dc2 down" link_is dc1-connector dc2 down
if holds dc2-n1 cut-dc1; then
  fail "dc2 holds dc1's writes made during the cut: the WAN was not cut"
fi
say "dc1's link to dc2 is down; both sides took writes and 20 keys written in both; dc2 lacks dc1's"

say "reconnecting dc1-connector to wan ($((SECONDS - cut_at))s after the cut)"
docker network connect --alias dc1-connector "$(net_of wan)" "$CONNECTOR1"
healed_at=$SECONDS
for name in first-dc1 first-dc2 cut-dc1 cut-dc2; do
  wait_held "$name" "${NODES[@]}"
done
say "every acknowledged write is in both datacenters ($((SECONDS - healed_at))s after reconnecting)"

# agreed I: the key written on both sides reads the same through every node, and that
# is one of the two values written.
agreed() {
  local i=$1 first n v
  first=$(cli dc1-n1 get "both-$RUN-$i")
  [ "$first" = "dc1-$i" ] || [ "$first" = "dc2-$i" ] || return 1
  for n in "${NODES[@]}"; do
    v=$(cli "$n" get "both-$RUN-$i")
    [ "$v" = "$first" ] || return 1
  done
}
from_dc1=0
for i in $(seq 1 20); do
  wait_for 60 "both-$RUN-$i to read the same through every node" agreed "$i"
  [ "$(cli dc2-n1 get "both-$RUN-$i")" != "dc1-$i" ] || from_dc1=$((from_dc1 + 1))
done
say "each of the 20 keys written on both sides reads the same everywhere ($from_dc1 with dc1's value, $((20 - from_dc1)) with dc2's)"
docker exec "$CONNECTOR1" /opencluster-connector status | indent
say "all checks passed"
