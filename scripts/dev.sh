#!/usr/bin/env bash
# `npm run dev`: a throwaway local Synapse plus the bridge on the embedded SQLite store.
# Needs only what `npm test` needs (Node >= 22.19 is fetched if older; Synapse from PyPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/ensure-node.sh
source scripts/ensure-node.sh
[[ -d node_modules ]] || npm ci --no-audit --no-fund
MEB_CACHE="${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}"
export MEB_CACHE
export MEB_SYNAPSE_VENV="${MEB_SYNAPSE_VENV:-$MEB_CACHE/synapse-venv}"
bash scripts/install-synapse.sh
# As the bridge ships (docs/operations.md, "Memory").
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-65536}"
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
exec node --max-semi-space-size=4 --expose-gc scripts/dev.ts "$@"
