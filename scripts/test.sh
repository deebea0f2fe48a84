#!/usr/bin/env bash
# The project's test command (`npm test`): lint, typecheck, then unit, integration
# and end-to-end tests (the e2e tests run against a real Synapse).
#
# - Puts Node >= 22.19 on PATH (scripts/ensure-node.sh).
# - Runs `npm ci` if node_modules is missing.
# - Creates the Synapse virtualenv if needed (scripts/install-synapse.sh) and
#   exports MEB_SYNAPSE_VENV for test/harness/synapse.ts.
# - Extra arguments are passed to `node --test` before the file globs, e.g.
#   `npm test -- --test-name-pattern=harness`.
# Exits non-zero if any step or test fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/ensure-node.sh
source scripts/ensure-node.sh

if [[ ! -d node_modules ]]; then
  echo "test: node_modules missing; running npm ci" >&2
  npm ci --no-audit --no-fund
fi

MEB_CACHE="${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}"
export MEB_CACHE
export MEB_SYNAPSE_VENV="${MEB_SYNAPSE_VENV:-$MEB_CACHE/synapse-venv}"
bash scripts/install-synapse.sh

echo "test: lint (eslint)" >&2
npx eslint --max-warnings=0 src test bench scripts

echo "test: typecheck (tsc --noEmit)" >&2
npx tsc --noEmit -p .

echo "test: node --test" >&2
node --test --test-concurrency=1 "$@" \
  "test/unit/**/*.test.ts" \
  "test/integration/**/*.test.ts" \
  "test/e2e/**/*.test.ts"
