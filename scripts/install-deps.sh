#!/usr/bin/env bash
# Installs the Debian packages onestep needs (only those missing). Idempotent; as root or via sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[onestep] $*"; }

PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libtomlplusplus-dev libcli11-dev
      nlohmann-json3-dev libpcre2-dev libgtest-dev libbenchmark-dev gnuplot-nox
      golang-github-pierrec-lz4-dev libopenmpi-dev openmpi-bin nodejs python3)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
# npm: any npm on PATH will do (e.g. one that came with a Node.js install); the Debian package otherwise.
if ! command -v npm >/dev/null 2>&1; then installed npm || missing+=(npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  say "install-deps: all packages already installed"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  say "install-deps: missing packages (${missing[*]}) and not root, and sudo is absent" >&2
  exit 1
fi
apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q)

say "install-deps: installing ${missing[*]}"
if ! "${apt[@]}" install --no-install-recommends "${missing[@]}"; then
  say "install-deps: install failed; running apt-get update and retrying"
  "${apt[@]}" update
  "${apt[@]}" install --no-install-recommends "${missing[@]}"
fi
say "install-deps: done"
