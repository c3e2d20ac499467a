#!/usr/bin/env bash
# Container tests: the real images in a real Docker engine (called by .ci/run).
#
#   bash tests/containers/run.sh                   # build the images, run every scenario
#   bash tests/containers/run.sh partition swarm   # only these scenarios
#
# Builds the images once (deploy/docker/build-images.sh: static binaries FROM scratch),
# then runs each scenario, a script of its own beside this one, in this order:
#
#   compose         deploy/compose: three hosts with their apps, docker kill, scale-out
#   customer-image  an image baked with `opencluster-pki bake` forms a cluster with its own
#                   keys (joined by join_service); a node on the default keys is refused
#   memory-limit    a node under `docker run --memory 128m` stays up under load
#   memory-limit-defaults  the same with no memory settings: the node sizes itself
#   partition       `docker network disconnect` isolates a node; `connect` heals it
#   swarm           deploy/swarm as a stack in a single-node swarm (created and left
#                   again when the engine is in none; an existing swarm is used and kept
#                   when this engine manages it; skipped on a worker or when
#                   `docker swarm init` fails)
#   swarm-two-dc    deploy/swarm with connector.yml as two stacks, dc1 and dc2, in one
#                   single-node swarm: writes cross both ways through the connectors
#   two-datacenters deploy/compose/docker-compose.two-dc.yml: two datacenters replicate
#                   both ways through their connectors, survive `docker network
#                   disconnect` of a connector from the WAN, and converge after reconnect
#
# A scenario that cannot run here exits 77 after a notice and counts as skipped. Each
# scenario removes every container, network, volume and image it made, also when it
# fails; the next one runs either way. Prints each scenario's result and duration; exits
# non-zero when any failed. Without a usable Docker engine it prints a SKIPPED notice and
# exits 0.
#
# Environment: OPENCLUSTER_COMPOSE (the compose command; detected when unset),
# SKIP_IMAGE_BUILD=1 to test the images already built, IMAGE_PREFIX (default
# `opencluster/`, as for build-images.sh) and OPENCLUSTER_TAG (default latest).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
source "$HERE/lib.sh"

ALL=(compose customer-image memory-limit memory-limit-defaults partition swarm swarm-two-dc two-datacenters)
if [ $# -gt 0 ]; then
  SCENARIOS=("$@")
else
  SCENARIOS=("${ALL[@]}")
fi
for s in "${SCENARIOS[@]}"; do
  [ -f "$HERE/$s.sh" ] || fail "no scenario $s (there are: ${ALL[*]})"
done

if ! docker_ok; then
  echo "NOTICE: Docker engine not available: container tests SKIPPED"
  exit 0
fi
if ! find_compose; then
  echo "NOTICE: neither \`docker compose\` nor docker-compose found: container tests SKIPPED"
  exit 0
fi
say "engine $(docker version --format '{{.Server.Version}}'), compose: ${COMPOSE[*]}"
export OPENCLUSTER_COMPOSE="${COMPOSE[*]}"

if [ "${SKIP_IMAGE_BUILD:-}" != 1 ]; then
  say "building the images"
  build_start=$SECONDS
  deploy/docker/build-images.sh
  say "images built in $((SECONDS - build_start))s"
fi

results=()
failed=()
for s in "${SCENARIOS[@]}"; do
  say "---- $s"
  t=$SECONDS
  rc=0
  bash "$HERE/$s.sh" || rc=$?
  if [ "$rc" -eq 0 ]; then
    results+=("$(printf '%-15s ok      %4ds' "$s" $((SECONDS - t)))")
  elif [ "$rc" -eq 77 ]; then
    results+=("$(printf '%-15s SKIPPED %4ds' "$s" $((SECONDS - t)))")
  else
    results+=("$(printf '%-15s FAILED  %4ds' "$s" $((SECONDS - t)))")
    failed+=("$s")
  fi
done

say "summary:"
printf '    %s\n' "${results[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  fail "failed: ${failed[*]}"
fi
say "all scenarios passed in $((SECONDS - START))s"
