#!/usr/bin/env bash
# Benchmarks: raw device operations (pkcs11, tpm) and the same operations
# through the daemon over its socket (e2e). Numbers only; no test depends on them.
#   scripts/bench.sh [go test -bench flags, e.g. -benchtime=5s -count=3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
scripts/apt-install.sh softhsm2 swtpm swtpm-tools libssl-dev
export MLSKEYD_BENCH=1
go test -run '^$' -bench . -benchtime "${BENCHTIME:-2s}" "$@" ./pkcs11/ ./tpm/ ./e2e/
