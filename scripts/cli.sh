#!/usr/bin/env bash
# `npm run cli -- <command> [options]`: the matrix-email-bridge CLI from a checkout, with a Node
# >= 22.19 put on PATH first (scripts/ensure-node.sh), so it works whatever `node` the machine has.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/ensure-node.sh
source scripts/ensure-node.sh 2>/dev/null
# --max-semi-space-size=4, --expose-gc, MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX: as the bridge ships (docs/operations.md, "Memory").
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-65536}"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
exec node --max-semi-space-size=4 --expose-gc src/main.ts "$@"
