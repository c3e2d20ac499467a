# Shared by the container test scenarios (sourced, not run). See run.sh.
#
# A scenario sets SCENARIO before sourcing this file, then calls `begin`, which names its
# run, sets the trap that removes everything it made, and exports:
#   RUN     a name of its own (`oct-<scenario>-<pid><random>`): a prefix for containers,
#           networks, volumes and images, and the value of the label below;
#   LABEL   `io.opencluster.test=$RUN`, put on everything the scenario creates, so the
#           cleanup finds it all whatever failed;
#   WORK    a temporary directory, removed at exit;
#   PREFIX  the image name prefix (IMAGE_PREFIX as for build-images.sh, default
#           `opencluster/`): the images under test.
# A scenario may define `scenario_cleanup` (run first at exit, also on failure) and
# `scenario_logs` (run on failure, to show what went wrong). Exit status 77 means skipped:
# the scenario cannot run on this engine (it prints why).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
START=$SECONDS
PREFIX=${IMAGE_PREFIX:-opencluster/}
TAG=${OPENCLUSTER_TAG:-latest}

say() { printf '[%s %3ds] %s\n' "${SCENARIO:-containers}" $((SECONDS - START)) "$*"; }
fail() {
  printf '[%s %3ds] FAIL: %s\n' "${SCENARIO:-containers}" $((SECONDS - START)) "$*" >&2
  exit 1
}
indent() { sed 's/^/    /'; }

# docker_ok: a Docker engine answers.
docker_ok() { command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1; }

# find_compose: sets COMPOSE to the compose command (OPENCLUSTER_COMPOSE, else
# `docker compose`, else docker-compose); returns 1 when there is none.
find_compose() {
  if [ -n "${OPENCLUSTER_COMPOSE:-}" ]; then
    read -ra COMPOSE <<<"$OPENCLUSTER_COMPOSE"
  elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds; fails the
# scenario naming WHAT after SECONDS.
wait_for() {
  local limit=$1 deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${limit}s waiting for $what"
    sleep 1
  done
}

# healthy CONTAINER...: every one reports the image's HEALTHCHECK healthy.
healthy() {
  local c
  for c in "$@"; do
    [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c" 2>/dev/null)" = healthy ] || return 1
  done
}

# member_state CONTAINER NAME: the state (alive, suspect, down, left) the node in
# CONTAINER gives the member NAME; empty when it does not list it.
member_state() {
  docker exec "$1" /opencluster-node members --format json 2>/dev/null |
    jq -r --arg n "$2" '[.[] | select(.name == $n) | .state][0] // empty' 2>/dev/null
}

# alive_names CONTAINER: the names of the members the node in CONTAINER lists alive, sorted,
# space-separated.
alive_names() {
  docker exec "$1" /opencluster-node members --format json 2>/dev/null |
    jq -r '[.[] | select(.state == "alive") | .name] | sort | join(" ")' 2>/dev/null
}

# sees_alive CONTAINER NAMES: the node in CONTAINER lists exactly NAMES (sorted,
# space-separated) alive.
sees_alive() { [ "$(alive_names "$1")" = "$2" ]; }

# wait_cluster_up RUN NAME...: waits until the containers RUN-NAME are healthy and each
# lists exactly the NAMEs alive.
wait_cluster_up() {
  local run=$1 n
  shift
  local names="$*" containers=("${@/#/$run-}")
  wait_for 90 "${names// /, } healthy" healthy "${containers[@]}"
  for n in "$@"; do
    wait_for 60 "$n to list $names alive" sees_alive "$run-$n" "$names"
  done
}

# placement_full CONTAINER: /v1/placement of the node says replica_health full.
placement_full() {
  [ "$(docker exec "$1" /opencluster-node status --format json 2>/dev/null |
    jq -r '.placement.replica_health' 2>/dev/null)" = full ]
}

# ready CONTAINER: the node is ready (`health --ready`: joined, no partition left to copy
# in), the check before the next host of a rolling upgrade (docs/docker.md#rolling-upgrades).
ready() { docker exec "$1" /opencluster-node health --ready >/dev/null 2>&1; }

# logged CONTAINER TEXT: the container's log has a line with TEXT. (Reads the whole log:
# `grep -q` would stop early, and with pipefail the cut-off `docker logs` fails the test.)
logged() { docker logs "$1" 2>&1 | grep -F -c -- "$2" >/dev/null; }

# container_ok CONTAINER: running, never restarted, not OOM-killed; else says what.
container_ok() {
  local state
  state=$(docker inspect -f '{{.State.Status}} {{.RestartCount}} {{.State.OOMKilled}}' "$1") || return 1
  [ "$state" = "running 0 false" ] || {
    echo "$1: status, restarts, OOM-killed = $state" >&2
    return 1
  }
}

begin() {
  RUN="oct-$SCENARIO-$$$RANDOM"
  LABEL="io.opencluster.test=$RUN"
  WORK=$(mktemp -d)
  trap finish EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  for tool in docker jq; do
    command -v "$tool" >/dev/null || fail "$tool is needed"
  done
  for image in node example-app; do
    docker image inspect "$PREFIX$image:$TAG" >/dev/null 2>&1 ||
      fail "image $PREFIX$image:$TAG missing: run deploy/docker/build-images.sh (with IMAGE_PREFIX=$PREFIX)"
  done
  say "run $RUN, images $PREFIX*:$TAG"
}

finish() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    say "failed: the last log lines of each container"
    if declare -F scenario_logs >/dev/null; then
      scenario_logs
    fi
    local c
    for c in $(docker ps -aq --filter "label=$LABEL"); do
      echo "---- $(docker inspect -f '{{.Name}}' "$c")"
      docker logs --tail 15 "$c" 2>&1
    done | tail -n 200
  fi
  if declare -F scenario_cleanup >/dev/null; then
    scenario_cleanup
  fi
  docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f -v >/dev/null 2>&1
  docker network ls -q --filter "label=$LABEL" | xargs -r docker network rm >/dev/null 2>&1
  docker volume ls -q --filter "label=$LABEL" | xargs -r docker volume rm >/dev/null 2>&1
  docker image ls -q --filter "label=$LABEL" | xargs -r docker image rm -f >/dev/null 2>&1
  local left
  left=$( (
    docker ps -aq --filter "label=$LABEL"
    docker network ls -q --filter "label=$LABEL"
    docker volume ls -q --filter "label=$LABEL"
    docker image ls -q --filter "label=$LABEL"
  ) | wc -l)
  [ "$left" -eq 0 ] || say "WARNING: $left containers, networks, volumes or images of $RUN remain"
  rm -rf "$WORK"
  local verdict=FAILED
  case $rc in 0) verdict=PASSED ;; 77) verdict=SKIPPED ;; esac
  say "cleaned up $RUN; $verdict in $((SECONDS - START))s"
  exit "$rc"
}

# --- A swarm for the swarm scenarios ----------------------------------------------------
# swarm_check (before `begin`): exits 77 (skipped) with a notice unless this engine is in
# no swarm or manages one. swarm_enter (after `begin`): creates a single-node swarm when
# the engine is in none, or exits 77 when `docker swarm init` fails. swarm_leave (in the
# scenario's cleanup, after its stacks are gone): leaves a swarm swarm_enter created, and
# its docker_gwbridge network if that was not there before.
swarm_check() {
  swarm_state=$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
  created_swarm=false
  had_gwbridge=false
  if docker network inspect docker_gwbridge >/dev/null 2>&1; then had_gwbridge=true; fi
  case "$swarm_state" in
    inactive) ;;
    active)
      if [ "$(docker info -f '{{.Swarm.ControlAvailable}}')" != true ]; then
        echo "NOTICE: this engine is a swarm worker: the $SCENARIO test needs a manager; SKIPPED"
        exit 77
      fi
      ;;
    *)
      echo "NOTICE: swarm state '$swarm_state': the $SCENARIO test SKIPPED"
      exit 77
      ;;
  esac
}

swarm_enter() {
  if [ "$swarm_state" = inactive ]; then
    docker swarm init >"$WORK/init.log" 2>&1 || docker swarm init --advertise-addr 127.0.0.1 >"$WORK/init.log" 2>&1 || {
      indent <"$WORK/init.log"
      echo "NOTICE: this engine cannot start a swarm (above): the $SCENARIO test SKIPPED"
      exit 77
    }
    created_swarm=true
    say "created a single-node swarm (it is left at the end)"
  else
    say "using the swarm this engine is a manager of (only the stacks are removed at the end)"
  fi
}

swarm_leave() {
  if [ "$created_swarm" = true ]; then
    docker swarm leave --force >/dev/null 2>&1 && say "left the swarm this test created"
    # The bridge goes once the swarm's last endpoint on it has (a moment after leaving).
    local deadline=$((SECONDS + 15))
    while [ "$had_gwbridge" = false ] && docker network inspect docker_gwbridge >/dev/null 2>&1 &&
      ! docker network rm docker_gwbridge >/dev/null 2>&1 && [ $SECONDS -lt $deadline ]; do
      sleep 1
    done
  fi
}

# stack_rm STACK...: removes the stacks and waits (60s at most) until their containers are
# gone, then removes their volumes and waits for their networks to go.
stack_rm() {
  local stack deadline=$((SECONDS + 60))
  for stack in "$@"; do docker stack rm "$stack" >/dev/null 2>&1; done
  for stack in "$@"; do
    # `stack rm` returns before the containers are gone; volumes can go only after them.
    while [ -n "$(docker ps -aq --filter "label=com.docker.stack.namespace=$stack")" ] && [ $SECONDS -lt $deadline ]; do
      sleep 1
    done
    docker volume ls -q --filter "label=com.docker.stack.namespace=$stack" | xargs -r docker volume rm >/dev/null 2>&1
    while [ -n "$(docker network ls -q --filter "label=com.docker.stack.namespace=$stack")" ] && [ $SECONDS -lt $deadline ]; do
      sleep 1
    done
    local left
    left=$( (
      docker ps -aq --filter "label=com.docker.stack.namespace=$stack"
      docker volume ls -q --filter "label=com.docker.stack.namespace=$stack"
    ) | wc -l)
    [ "$left" -eq 0 ] || say "WARNING: $left containers or volumes of stack $stack remain"
  done
}
