# shellcheck shell=bash
# Source this file (do not execute it): `source scripts/ensure-node.sh`.
#
# Makes sure a Node.js >= 22.19 (the engines range in package.json; needed for
# running .ts files directly via type stripping) is first on PATH.
#
# If the `node` already on PATH is too old (or missing), the npm package
# `node-linux-<arch>@24` is installed with the machine's npm into a cache
# directory outside the clone:
#     ${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}/node24
# (skipped when a working copy is already there) and its bin/ is prepended to
# PATH. The machine's npm is kept (it runs fine on node 24).
#
# Prints one line (stderr) saying which node is used.
# Returns non-zero (never exits the caller's shell) on failure.
# Safe to source under `set -euo pipefail`.

_meb_node_ok() {
  # $1: node binary. Succeeds when its version is >= 22.19.
  local v major minor
  v="$("$1" -v 2>/dev/null)" || return 1
  v="${v#v}"
  major="${v%%.*}"
  minor="${v#*.}"
  minor="${minor%%.*}"
  [[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || return 1
  (( major > 22 || (major == 22 && minor >= 19) ))
}

_meb_ensure_node() {
  local cache dir arch pkg bin
  if command -v node >/dev/null 2>&1 && _meb_node_ok node; then
    echo "ensure-node: using $(command -v node) $(node -v)" >&2
    return 0
  fi

  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "ensure-node: unsupported architecture $(uname -m); install Node >= 22.19 yourself" >&2; return 1 ;;
  esac
  pkg="node-linux-${arch}"
  cache="${MEB_CACHE:-$HOME/.cache/matrix-email-bridge}"
  dir="$cache/node24"
  bin="$dir/node_modules/$pkg/bin"

  if ! { [[ -x "$bin/node" ]] && _meb_node_ok "$bin/node"; }; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "ensure-node: node >= 22.19 not found and npm is missing; cannot install $pkg@24" >&2
      return 1
    fi
    echo "ensure-node: installing $pkg@24 into $dir" >&2
    mkdir -p "$dir" || return 1
    npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "$pkg@24" >&2 || {
      echo "ensure-node: npm install of $pkg@24 failed" >&2
      return 1
    }
    if ! { [[ -x "$bin/node" ]] && _meb_node_ok "$bin/node"; }; then
      echo "ensure-node: $bin/node is missing or too old after install" >&2
      return 1
    fi
  fi

  export PATH="$bin:$PATH"
  hash -r 2>/dev/null || true
  echo "ensure-node: using $bin/node $(node -v)" >&2
}

if _meb_ensure_node; then _meb_ensure_node_rc=0; else _meb_ensure_node_rc=1; fi
unset -f _meb_ensure_node _meb_node_ok
if [[ $_meb_ensure_node_rc -ne 0 ]]; then
  unset _meb_ensure_node_rc
  return 1 2>/dev/null || exit 1
fi
unset _meb_ensure_node_rc
