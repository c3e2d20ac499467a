#!/usr/bin/env bash
# Container test: deploy/swarm as a stack. Run by run.sh; alone: `bash tests/containers/swarm.sh`.
#
# When the engine is in no swarm, this creates a single-node swarm and leaves it at the
# end (also on failure); a swarm it did not create is used if this engine is a manager
# and left as it was (only the stack goes); on a worker, or when `docker swarm init`
# fails, it skips (exit 77) with a notice.
#
# 1. makes keys with the pki image, deploys opencluster-stack.yml + keys.yml (the keys as
#    Swarm secrets) with `--resolve-image never` (the images are local);
# 2. the node task (global: one on this host) must be healthy, on the acme keys, advertise
#    its address on the overlay, and have resolved tasks.<service> to itself (the only
#    task); the app task must be running beside it;
# 3. the app writes through the shared socket volume and reads everything back;
# 4. a second member (a container attached to the overlay, with the same keys) joins by
#    OPENCLUSTER_JOIN_SERVICE=tasks.<service>: both must list both alive;
# 5. a rolling restart of the node service (`docker service update --force`: stop-first,
#    as an upgrade does): writes go on through the second member meanwhile; the new task
#    must come back healthy with the same node id (its data volume) and serve every write,
#    those made while it was away included.
# The stack, its volumes and secrets, the extra container and (if created) the swarm are
# removed on exit.
SCENARIO=swarm
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

swarm_check
begin
STACK=$RUN
PASSWORD="pw-$RANDOM$RANDOM"
export OPENCLUSTER_CLIENT_PASSWORD=$PASSWORD OPENCLUSTER_IMAGE_PREFIX=$PREFIX OPENCLUSTER_TAG=$TAG

scenario_logs() {
  docker service ps --no-trunc "${STACK}_node" "${STACK}_app" 2>&1 | head -n 20
}
scenario_cleanup() {
  # The extra member first: attached to the stack's network, it would keep it.
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f -v >/dev/null 2>&1
  stack_rm "$STACK"
  swarm_leave
}

swarm_enter

# --- 1. keys, deploy ------------------------------------------------------------------
pki() { docker run --rm --label "$LABEL" -u "$(id -u):$(id -g)" -v "$WORK:/work" -w /work "${PREFIX}pki:$TAG" "$@"; }
pki init --cluster acme --out acme-ca >/dev/null
pki datacenter --ca acme-ca --dc dc1 --out acme-dc1 >/dev/null
say "docker stack deploy --resolve-image never -c opencluster-stack.yml -c keys.yml $STACK"
OPENCLUSTER_KEYS="$WORK/acme-dc1" docker stack deploy --resolve-image never \
  -c deploy/swarm/opencluster-stack.yml -c deploy/swarm/keys.yml "$STACK" 2>&1 | indent

task_of() { # task_of SERVICE: the running container of the service's task on this host
  docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1" --filter status=running | sed -n 1p
}
node_healthy() {
  NODE=$(task_of node)
  [ -n "$NODE" ] && healthy "$NODE"
}
app_running() {
  APP=$(task_of app)
  [ -n "$APP" ]
}

# --- 2. the node and the app ----------------------------------------------------------
wait_for 120 "the node task healthy" node_healthy
wait_for 60 "the app task running" app_running
host=$(docker exec "$NODE" /opencluster-node health | jq -r .node)
say "node task $(docker inspect -f '{{.Name}}' "$NODE") healthy, node name $host"
[ "$(docker exec "$NODE" /opencluster-node health | jq -r .insecure_default_keys)" = false ] ||
  fail "the node runs on the default keys: the secrets of keys.yml were not used"
overlay_ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"${STACK}_dc1\").IPAddress}}" "$NODE")
advertised=$(docker exec "$NODE" /opencluster-node members --format json | jq -r '.[] | select(.self) | .gossip_addr')
[ "$advertised" = "$overlay_ip:7946" ] || fail "the node advertises $advertised, its overlay address is $overlay_ip"
say "it advertises $advertised, its address on ${STACK}_dc1"
resolved_self() {
  logged "$NODE" "tasks.${STACK}_node:7946: resolves to no address but this node's own"
}
wait_for 30 "the node to resolve tasks.${STACK}_node to itself" resolved_self
say "tasks.${STACK}_node resolves to the node itself (the only task so far)"
node_id=$(docker exec "$NODE" /opencluster-node members --format json | jq -r '.[] | select(.self) | .id')

# --- 3. the app writes through the socket volume --------------------------------------
load() { # load CONTAINER NAME DURATION [app options]: acknowledged writes in $WORK/NAME.acked
  local c=$1 name=$2 duration=$3
  shift 3
  docker exec "$c" /opencluster-example-app "$@" load --rate 100 --duration "$duration" --prefix "$name" \
    --acked - >"$WORK/$name.acked" 2>"$WORK/$name.log" || {
    cat "$WORK/$name.log"
    fail "load $name failed"
  }
  printf '    %s: %s\n' "$name" "$(grep '^load: attempted' "$WORK/$name.log")"
}
say "the app task writes through the socket it shares with the node for 4s"
load "$APP" swarm-app 4s

# --- 4. a second member joins by tasks.<service> ---------------------------------------
say "a second member on ${STACK}_dc1 joins with OPENCLUSTER_JOIN_SERVICE=tasks.${STACK}_node"
# Root inside only to read the key files as they are in $WORK (0600, owned by the caller).
docker run -d --name "$RUN-extra" --hostname swarm-extra --network-alias swarm-extra --label "$LABEL" \
  --network "${STACK}_dc1" -u 0:0 \
  -v "$WORK/acme-dc1:/etc/opencluster/tls:ro" -e OPENCLUSTER_TLS_DIR=/etc/opencluster/tls \
  -e OPENCLUSTER_CLIENT_PASSWORD="$PASSWORD" -e "OPENCLUSTER_JOIN_SERVICE=tasks.${STACK}_node" \
  "${PREFIX}node:$TAG" >/dev/null
EXTRA="$RUN-extra"
wait_for 60 "the second member healthy" healthy "$EXTRA"
both=$(printf '%s\n' "$host" swarm-extra | sort | tr '\n' ' ' | sed 's/ $//')
wait_for 60 "the node to list $both alive" sees_alive "$NODE" "$both"
wait_for 60 "the second member to list $both alive" sees_alive "$EXTRA" "$both"
docker exec "$NODE" /opencluster-node members | indent

# verify_through CONTAINER: every acknowledged write so far, read through the node of CONTAINER.
verify_through() {
  cat "$WORK"/*.acked >"$WORK/all.acked"
  printf '    through %s: ' "$2"
  docker exec -i "$1" /opencluster-example-app "${@:3}" verify --acked - <"$WORK/all.acked" 2>"$WORK/verify.log" || {
    cat "$WORK/verify.log"
    fail "acknowledged writes missing through $2"
  }
  tail -n 1 "$WORK/verify.log"
}

# --- 5. a rolling restart of the node service -----------------------------------------
say "docker service update --force ${STACK}_node (stop-first), writing through the second member meanwhile"
old_node=$NODE
writer() {
  docker run --rm --label "$LABEL" --network "${STACK}_dc1" -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" \
    "${PREFIX}example-app:$TAG" --url redis://swarm-extra:6379 load --rate 100 --duration 20s \
    --prefix swarm-during-update --acked - >"$WORK/swarm-during-update.acked" 2>"$WORK/swarm-during-update.log"
}
writer &
writer_pid=$!
docker service update --force --detach "${STACK}_node" >/dev/null
new_task() {
  NODE=$(task_of node)
  [ -n "$NODE" ] && [ "$NODE" != "$old_node" ] && healthy "$NODE"
}
wait_for 120 "the new node task healthy" new_task
say "new node task $(docker inspect -f '{{.Name}}' "$NODE") healthy"
[ "$(docker exec "$NODE" /opencluster-node members --format json | jq -r '.[] | select(.self) | .id')" = "$node_id" ] ||
  fail "the restarted node has another id: its data volume was not kept"
say "same node id $node_id: it kept its data volume"
wait_for 60 "the restarted node to list $both alive" sees_alive "$NODE" "$both"
back_at=$SECONDS
# It started alone, so it copies every partition it owns from the other owner: ready
# (what a rolling update waits for) once that is done, and it must have copied some.
copied_back() {
  ready "$NODE" && [ "$(docker exec "$NODE" /opencluster-node status --format json |
    jq -r '.workers[] | select(.name == "rebalance") | .partitions_done')" -gt 0 ]
}
wait_for 60 "the restarted node to be ready, its partitions copied back" copied_back
copied=$(docker exec "$NODE" /opencluster-node status --format json |
  jq -r '.workers[] | select(.name == "rebalance") | "\(.partitions_done) partitions, \(.keys_moved) keys"')
say "it copied back what it owns ($copied) within $((SECONDS - back_at))s of listing both alive"
wait "$writer_pid" || {
  cat "$WORK/swarm-during-update.log"
  fail "writing through the second member during the update failed"
}
printf '    swarm-during-update: %s\n' "$(grep '^load: attempted' "$WORK/swarm-during-update.log")"
grep -q 'errors=0 ' "$WORK/swarm-during-update.log" || fail "writes through the second member failed during the update"
wait_for 60 "the app task running" app_running
say "every acknowledged write, those made during the restart included"
verify_through "$APP" "the restarted node (the app's socket)"
printf '    through the second member (TCP): '
docker run --rm -i --label "$LABEL" --network "${STACK}_dc1" -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" \
  "${PREFIX}example-app:$TAG" --url redis://swarm-extra:6379 verify --acked - <"$WORK/all.acked" 2>"$WORK/verify.log" || {
  cat "$WORK/verify.log"
  fail "acknowledged writes missing through the second member"
}
tail -n 1 "$WORK/verify.log"
say "all checks passed"
