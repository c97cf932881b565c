#!/usr/bin/env bash
# Quick start: runs mlskeyd in development mode on SoftHSM.
#   scripts/dev.sh [STATE_DIR] [extra mlskeyd flags...]
# Installs softhsm2 with apt-get when it is missing, builds the binaries into
# ./bin, and starts the daemon with its state (SoftHSM token, PIN file,
# catalog, socket) in STATE_DIR (default: ./.dev-state). Restarting it on the
# same directory keeps every key. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-.dev-state}
[ $# -gt 0 ] && shift
scripts/prereqs.sh
scripts/apt-install.sh softhsm2
mkdir -p bin
go build -o bin/ ./cmd/mlskeyd ./cmd/mlskeyctl
echo "socket: $state/mlskeyd.sock   try: MLSKEYD_SOCKET=$state/mlskeyd.sock bin/mlskeyctl status" >&2
exec bin/mlskeyd --dev --state-dir "$state" "$@"
