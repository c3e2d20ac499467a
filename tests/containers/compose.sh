#!/usr/bin/env bash
# Container test: the Compose example (deploy/compose/docker-compose.yml). Run by run.sh,
# which builds the images first; alone: `bash tests/containers/compose.sh`.
#
# 1. brings up the example under a project name of its own: three node "hosts", each with
#    the example app beside it;
# 2. waits until every node is healthy and lists three members alive;
# 3. the example app of each host writes through its local node (socket or TCP with the
#    password) and reads every acknowledged write back;
# 4. writes again in every host while `docker kill` stops n1, then checks every write
#    acknowledged in 3 and 4 through the two other hosts;
# 5. scales out (`--profile scale-out up --scale extra=1`): the new node must become a
#    member, and serve every acknowledged write too.
# Every container, network and volume it made is removed on exit, also on failure.
#
# Environment: OPENCLUSTER_COMPOSE (the compose command; detected when unset),
# IMAGE_PREFIX and OPENCLUSTER_TAG (the images under test).
SCENARIO=compose
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COMPOSE_FILE=deploy/compose/docker-compose.yml
PASSWORD="pw-$RANDOM$RANDOM"
export OPENCLUSTER_CLIENT_PASSWORD=$PASSWORD OPENCLUSTER_TAG=$TAG OPENCLUSTER_IMAGE_PREFIX=$PREFIX

find_compose || fail "neither \`docker compose\` nor docker-compose found"
begin
# Compose labels what it makes with its project; the project is the run's name.
PROJECT=$RUN
say "compose: ${COMPOSE[*]}, project $PROJECT"

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
# The scale-out profile adds the `extra` service; `down` needs it to remove those too.
dcx() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" --profile scale-out "$@"; }

scenario_logs() { dcx logs --no-color --tail 25 2>&1 | tail -n 250; }
scenario_cleanup() {
  dcx down -v --remove-orphans -t 5 >/dev/null 2>&1
  # Whatever `down` missed, by the label compose puts on everything it makes.
  local label="label=com.docker.compose.project=$PROJECT"
  docker ps -aq --filter "$label" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker volume ls -q --filter "$label" | xargs -r docker volume rm >/dev/null 2>&1
  docker network ls -q --filter "$label" | xargs -r docker network rm >/dev/null 2>&1
}

id_of() { dcx ps -q "$1"; }

# services_healthy SERVICE...: the containers of these services are healthy.
services_healthy() {
  local s
  for s in "$@"; do
    healthy "$(id_of "$s")" || return 1
  done
}

# alive_count SERVICE: how many members the node of SERVICE lists as alive.
alive_count() { docker exec "$(id_of "$1")" /opencluster-node members | awk '$3 == "alive"' | wc -l; }
members_alive() { [ "$(alive_count "$1")" -eq "$2" ]; }

# load APP PREFIX DURATION: the app of a host writes through its node; the acknowledged
# writes go to $WORK/PREFIX.acked, the report to $WORK/PREFIX.log. Returns its status.
load() {
  docker exec "$(id_of "$1")" /opencluster-example-app load --rate 150 --duration "$3" \
    --prefix "$2" --acked - >"$WORK/$2.acked" 2>"$WORK/$2.log"
}

# verify APP FILE: the app of a host checks a saved list through its own node.
verify() {
  docker exec -i "$(id_of "$1")" /opencluster-example-app verify --acked - <"$2" 2>"$WORK/verify.log" || {
    cat "$WORK/verify.log"
    return 1
  }
  tail -n 1 "$WORK/verify.log"
}

report() { tail -n 2 "$WORK/$1.log" | sed 's/^/    /'; }

# ---------------------------------------------------------------------------------------
say "compose up: n1..n3 with app1..app3"
dc up -d --quiet-pull 2>&1 | sed 's/^/    /'
wait_for 120 "n1, n2, n3 healthy" services_healthy n1 n2 n3
for s in n1 n2 n3; do wait_for 60 "$s to list 3 members alive" members_alive "$s" 3; done
say "3 nodes healthy, each lists 3 members alive:"
docker exec "$(id_of n1)" /opencluster-node members | sed 's/^/    /'
for s in app1 app2 app3; do
  [ "$(docker inspect -f '{{.State.Status}}' "$(id_of "$s")")" = running ] || fail "$s is not running"
done

say "each host's app writes through its local node for 5s and reads everything back"
pids=()
for i in 1 2 3; do
  load "app$i" "before-n$i" 5s &
  pids+=($!)
done
for i in 1 2 3; do
  wait "${pids[$((i - 1))]}" || {
    cat "$WORK/before-n$i.log"
    fail "app$i: load or its check failed"
  }
  report "before-n$i"
done

say "writing in every host again; docker kill n1 after 3s"
pids=()
for i in 1 2 3; do
  load "app$i" "during-n$i" 8s &
  pids+=($!)
done
sleep 3
docker kill "$(id_of n1)" >/dev/null
killed_at=$SECONDS
status=()
for i in 1 2 3; do
  rc=0
  wait "${pids[$((i - 1))]}" || rc=$?
  status+=("$rc")
done
say "app1 lost its node (its later writes fail, as they must):"
report during-n1
[ "${status[0]}" -ne 1 ] || fail "app1 found acknowledged writes lost"
for i in 2 3; do
  say "app$i:"
  report "during-n$i"
  [ "${status[$((i - 1))]}" -eq 0 ] || fail "app$i: load or its check failed (exit ${status[$((i - 1))]})"
done
for s in n2 n3; do wait_for 30 "$s to see n1 gone" members_alive "$s" 2; done
say "n2 and n3 list n1 as not alive (checked $((SECONDS - killed_at))s after the kill)"

cat "$WORK"/*.acked >"$WORK/all.acked"
total=$(wc -l <"$WORK/all.acked")
say "every acknowledged write ($total) read back through host 2 (TCP) and host 3 (socket)"
for s in app2 app3; do
  printf '    %s: ' "$s"
  verify "$s" "$WORK/all.acked" || fail "$s: acknowledged writes missing after docker kill n1"
done

say "scale out: --profile scale-out up --scale extra=1"
dcx up -d --no-deps --scale extra=1 extra 2>&1 | sed 's/^/    /'
wait_for 90 "the extra node healthy" services_healthy extra
extra_name=$(docker inspect -f '{{.Config.Hostname}}' "$(id_of extra)")
wait_for 60 "n2 to list $extra_name alive" members_alive n2 3
wait_for 60 "$extra_name to list 3 members alive" members_alive extra 3
docker exec "$(id_of extra)" /opencluster-node members | sed 's/^/    /'
printf '    through %s: ' "$extra_name"
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(id_of extra)")
docker run --rm -i --network "$network" --label "com.docker.compose.project=$PROJECT" --label "$LABEL" \
  -e OPENCLUSTER_APP_PASSWORD="$PASSWORD" "${PREFIX}example-app:$TAG" \
  --url "redis://$extra_name:6379" verify --acked - <"$WORK/all.acked" 2>"$WORK/verify.log" || {
  cat "$WORK/verify.log"
  fail "acknowledged writes missing through the new node"
}
tail -n 1 "$WORK/verify.log"
say "all checks passed"
