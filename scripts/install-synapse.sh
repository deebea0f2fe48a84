#!/usr/bin/env bash
# Create or refresh the Python virtualenv holding the Synapse homeserver that
# the end-to-end tests run against (see test/harness/synapse.ts).
#
# Location:  $MEB_SYNAPSE_VENV if set, else
#            ${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}/synapse-venv
# Version:   $MEB_SYNAPSE_SPEC if set, else the pinned range below.
#
# Idempotent: when the venv already imports synapse.app.homeserver and the
# installed version satisfies the spec, nothing is installed (takes ~1 s).
# A venv that is broken (e.g. its python was removed) is recreated.
# Prints the venv path and the Synapse version on the last line (stdout).
# Needs: python3 >= 3.10 with the venv module (Debian: python3-venv), network
# access to PyPI for the first install.
set -euo pipefail

SPEC="${MEB_SYNAPSE_SPEC:-matrix-synapse>=1.163.2,<1.164}"
CACHE="${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}"
VENV="${MEB_SYNAPSE_VENV:-$CACHE/synapse-venv}"
PY="$VENV/bin/python"

# Prints the installed version and succeeds when the venv works and the
# installed version satisfies $SPEC.
check_venv() {
  [[ -x "$PY" ]] || return 1
  "$PY" - "$SPEC" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
import synapse.app.homeserver  # noqa: F401  (fails if the install is broken)
v = version("matrix-synapse")
if not Requirement(sys.argv[1]).specifier.contains(v, prereleases=True):
    sys.exit(1)
print(v)
EOF
}

if version="$(check_venv)"; then
  echo "install-synapse: Synapse $version already installed in $VENV" >&2
else
  if ! command -v python3 >/dev/null 2>&1; then
    echo "install-synapse: python3 not found (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  if [[ -e "$VENV" ]] && ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    echo "install-synapse: $VENV is broken; recreating it" >&2
    rm -rf "$VENV"
  fi
  if [[ ! -x "$PY" ]]; then
    echo "install-synapse: creating virtualenv $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || {
      echo "install-synapse: 'python3 -m venv' failed (Debian: apt-get install python3-venv)" >&2
      rm -rf "$VENV"
      exit 1
    }
  fi
  echo "install-synapse: pip install '$SPEC' (this takes a minute or two)" >&2
  "$PY" -m pip install --disable-pip-version-check --quiet --upgrade pip >&2 || true
  "$PY" -m pip install --disable-pip-version-check --quiet "$SPEC" >&2
  if ! version="$(check_venv)"; then
    echo "install-synapse: Synapse is installed in $VENV but does not import or does not match '$SPEC'" >&2
    "$PY" -c 'import synapse.app.homeserver' >&2 || true
    exit 1
  fi
fi

echo "synapse-venv: $VENV (matrix-synapse $version)"
