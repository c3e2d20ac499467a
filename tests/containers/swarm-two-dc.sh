#!/usr/bin/env bash
# Container test: two datacenters as two Swarm stacks of deploy/swarm/opencluster-stack.yml
# with deploy/swarm/connector.yml, bridged by their connectors over the host's published
# WAN ports. Run by run.sh; alone: `bash tests/containers/swarm-two-dc.sh`.
#
# Swarm handling as in swarm.sh (a single-node swarm is created and left again when the
# engine is in none; skipped on a worker or when `docker swarm init` fails).
#
# 1. labels this swarm node `opencluster.connector=true` (the connector's placement
#    constraint; the label is removed at the end if this test added it) and deploys the
#    files as stack dc1 and stack dc2, on the images' INSECURE default keys of each
#    datacenter; each connector publishes its own UDP port on the host (the ports must
#    not clash) and reaches the other over a test overlay network (see below);
# 2. each stack's node, app and connector tasks run, and each node lists its connector
#    alive;
# 3. the app task of each stack writes through its node's socket for 4s; every
#    acknowledged write of each side must read back through the other side's app, and
#    each connector's link to the other datacenter must be up.
# The stacks, their volumes and (if created) the swarm are removed on exit.
SCENARIO=swarm-two-dc
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

swarm_check
begin
docker image inspect "${PREFIX}connector:$TAG" >/dev/null 2>&1 ||
  fail "image ${PREFIX}connector:$TAG missing: run deploy/docker/build-images.sh"
PASSWORD="pw-$RANDOM$RANDOM"
export OPENCLUSTER_CLIENT_PASSWORD=$PASSWORD OPENCLUSTER_IMAGE_PREFIX=$PREFIX OPENCLUSTER_TAG=$TAG
declare -A STACK=([dc1]="$RUN-dc1" [dc2]="$RUN-dc2")
added_label=false

scenario_logs() {
  local dc
  for dc in dc1 dc2; do
    docker service ps --no-trunc "${STACK[$dc]}_node" "${STACK[$dc]}_connector" 2>&1 | head -n 10
    echo "---- the connector of $dc"
    docker service logs --no-task-ids --tail 20 "${STACK[$dc]}_connector" 2>&1
  done
}
scenario_cleanup() {
  stack_rm "${STACK[dc1]}" "${STACK[dc2]}"
  docker network rm "$RUN-wan" >/dev/null 2>&1
  if [ "$added_label" = true ] && [ "$created_swarm" = false ]; then
    docker node update --label-rm opencluster.connector "$SELF" >/dev/null 2>&1
  fi
  swarm_leave
}

swarm_enter

# --- 1. two stacks ----------------------------------------------------------------------
SELF=$(docker info -f '{{.Swarm.NodeID}}')
if [ "$(docker node inspect "$SELF" -f '{{index .Spec.Labels "opencluster.connector"}}')" != true ]; then
  docker node update --label-add opencluster.connector=true "$SELF" >/dev/null
  added_label=true
fi
# Both datacenters run on this one host, so the connectors reach each other over an overlay
# network made here (tests/containers/swarm-wan.yml adds it to the connector service):
# between two tasks of one host, QUIC through the host's published ports (docker-proxy,
# with inter-container traffic on docker_gwbridge dropped) did not complete a handshake.
# Between real hosts the published port is the path, as connector.yml has it.
WAN_NET="$RUN-wan"
docker network create -d overlay --attachable --label "$LABEL" "$WAN_NET" >/dev/null
free_udp_port() {
  local p
  while :; do
    p=$((RANDOM % 20000 + 20000))
    # Without ss, a random port (a clash fails the deploy, clearly).
    { command -v ss >/dev/null && ss -Hlun "sport = :$p" | grep -q .; } || {
      echo "$p"
      return
    }
  done
}
declare -A PORT=([dc1]="$(free_udp_port)")
PORT[dc2]=$(free_udp_port)
while [ "${PORT[dc2]}" = "${PORT[dc1]}" ]; do PORT[dc2]=$(free_udp_port); done
for dc in dc1 dc2; do
  other=dc2
  [ "$dc" = dc1 ] || other=dc1
  advertise="tasks.${STACK[$dc]}_connector:7948" peer="$other=tasks.${STACK[$other]}_connector:7948"
  say "docker stack deploy -c opencluster-stack.yml -c connector.yml -c swarm-wan.yml ${STACK[$dc]} ($dc, WAN $advertise, peer $peer)"
  OPENCLUSTER_DATACENTER=$dc OPENCLUSTER_CONNECTOR_WAN_PORT=${PORT[$dc]} OPENCLUSTER_TEST_WAN_NETWORK=$WAN_NET \
    OPENCLUSTER_CONNECTOR_WAN_ADVERTISE="$advertise" OPENCLUSTER_CONNECTOR_PEERS="$peer" \
    docker stack deploy --resolve-image never -c deploy/swarm/opencluster-stack.yml \
    -c deploy/swarm/connector.yml -c tests/containers/swarm-wan.yml "${STACK[$dc]}" 2>&1 | indent
done

task_of() { # task_of DC SERVICE: the running container of the service's task on this host
  docker ps -q --filter "label=com.docker.swarm.service.name=${STACK[$1]}_$2" --filter status=running | sed -n 1p
}
declare -A NODE APP CONNECTOR
tasks_up() { # tasks_up DC: the node and connector healthy, the app running
  NODE[$1]=$(task_of "$1" node)
  APP[$1]=$(task_of "$1" app)
  CONNECTOR[$1]=$(task_of "$1" connector)
  [ -n "${NODE[$1]}" ] && [ -n "${APP[$1]}" ] && [ -n "${CONNECTOR[$1]}" ] &&
    healthy "${NODE[$1]}" "${CONNECTOR[$1]}"
}
# connector_alive DC: the node of DC lists the connector of DC alive (a member with role connector).
connector_alive() {
  docker exec "${NODE[$1]}" /opencluster-node members --format json 2>/dev/null |
    jq -e '[.[] | select(.state == "alive" and .role == "connector")] | length == 1' >/dev/null 2>&1
}
# link_up DC OTHER: the connector of DC says its link to OTHER is up.
link_up() {
  [ "$(docker exec "${CONNECTOR[$1]}" /opencluster-connector status --json 2>/dev/null |
    jq -r --arg r "$2" '[.links[] | select(.remote == $r) | .link][0] // empty' 2>/dev/null)" = up ]
}

# --- 2. everything up, the link too -----------------------------------------------------
for dc in dc1 dc2; do
  wait_for 150 "stack $dc: node and connector healthy, app running" tasks_up "$dc"
  wait_for 60 "the node of $dc to list its connector alive" connector_alive "$dc"
  status=$(docker exec "${CONNECTOR[$dc]}" /opencluster-connector status --json)
  [ "$(jq -r .datacenter <<<"$status")" = "$dc" ] || fail "the connector of stack $dc is not of $dc: $status"
done
say "both stacks up; each node lists its connector alive"

# --- 3. writes cross both ways ----------------------------------------------------------
for dc in dc1 dc2; do
  docker exec "${APP[$dc]}" /opencluster-example-app load --rate 100 --duration 4s --prefix "swarm-$dc" \
    --acked - >"$WORK/$dc.acked" 2>"$WORK/$dc.log" || {
    cat "$WORK/$dc.log"
    fail "the app of $dc failed to write"
  }
  printf '    %s: %s\n' "$dc" "$(grep '^load: attempted' "$WORK/$dc.log")"
  [ -s "$WORK/$dc.acked" ] || fail "no write acknowledged in $dc"
done
arrived() { # arrived DC FROM: every acknowledged write of FROM reads back through DC's app
  docker exec -i "${APP[$1]}" /opencluster-example-app verify --acked - <"$WORK/$2.acked" >/dev/null 2>"$WORK/verify.log"
}
wait_for 60 "dc1's writes readable in dc2" arrived dc2 dc1
printf '    dc1 in dc2: %s\n' "$(tail -n 1 "$WORK/verify.log")"
wait_for 60 "dc2's writes readable in dc1" arrived dc1 dc2
printf '    dc2 in dc1: %s\n' "$(tail -n 1 "$WORK/verify.log")"
wait_for 30 "dc1's connector's link to dc2 up" link_up dc1 dc2
wait_for 30 "dc2's connector's link to dc1 up" link_up dc2 dc1
say "each connector's link to the other datacenter is up"
say "all checks passed"
