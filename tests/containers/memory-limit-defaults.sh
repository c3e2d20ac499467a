#!/usr/bin/env bash
# Container test: memory-limit.sh with no memory settings at all. Each node sizes itself
# from its container's 128 MiB limit (a memory budget of the limit less a quarter, see
# docs/configuration.md) and must pass the same checks: up, never restarted, not
# OOM-killed, healthy, every acknowledged write read back. Run by run.sh; alone:
# `bash tests/containers/memory-limit-defaults.sh`.
SCENARIO=memory-limit-defaults MEMORY_PROFILE='' exec bash "$(dirname "${BASH_SOURCE[0]}")/memory-limit.sh"
