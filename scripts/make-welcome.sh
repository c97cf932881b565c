#!/usr/bin/env bash
# Makes a Welcome for one of your KeyPackages, as a group does when it adds
# you: ts-mls (clients/interop, an MLS implementation independent of
# mlskeyd) creates a group, commits an Add of the KeyPackage and writes the
# Welcome, ready for 'mlskeyctl welcome open --in WELCOME'.
#   scripts/make-welcome.sh KEYPACKAGES WELCOME [N]
# KEYPACKAGES is the file 'mlskeyctl keypackage create --out' writes
# (MLSMessages concatenated); its N-th KeyPackage (default: the first) is
# added. Installs Node.js with apt-get and ts-mls with npm ci when missing.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: scripts/make-welcome.sh KEYPACKAGES WELCOME [N]" >&2
  exit 2
fi
pkgs=()
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
[ ${#pkgs[@]} -eq 0 ] || "$root/scripts/apt-install.sh" "${pkgs[@]}"
if [ ! -d "$root/clients/interop/node_modules/ts-mls" ]; then
  (cd "$root/clients/interop" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
exec node "$root/clients/interop/tsmls.mjs" welcome "$@"
