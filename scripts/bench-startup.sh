#!/usr/bin/env bash
# Measures how long mlskeyd takes from start to serving with many keys on a
# SoftHSM token: fills a dev daemon with KeyPackages (an init and a leaf
# encryption key each, and a signature key per batch), restarts it and times
# the socket's first answer and the device's readiness.
#   scripts/bench-startup.sh [BATCHES]   batches of 1000 KeyPackages (default 5: ~10,000 keys)
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-5}
scripts/prereqs.sh
scripts/apt-install.sh softhsm2
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
go build -o "$work/bin/" ./cmd/mlskeyd ./cmd/mlskeyctl
state=$work/state
export MLSKEYD_SOCKET=$state/mlskeyd.sock
"$work/bin/mlskeyd" --dev --state-dir "$state" >"$work/fill.log" 2>&1 &
pid=$!
until "$work/bin/mlskeyctl" status >/dev/null 2>&1; do sleep 0.2; done
start=$(date +%s)
for i in $(seq 1 "$batches"); do
  "$work/bin/mlskeyctl" keypackage create --suite 2 --identity load --count 1000 --timeout 30m >/dev/null
  echo "batch $i of 1000 KeyPackages: done after $(( $(date +%s) - start )) s"
done
kill -TERM $pid; wait $pid || true
echo "keys in the catalog: $(( batches * 2001 )); token object files: $(find "$state/softhsm" -name '*.object' | wc -l)"
t0=$(date +%s%N)
"$work/bin/mlskeyd" --dev --state-dir "$state" --log-level debug >"$work/start.log" 2>&1 &
pid=$!
until [ -S "$state/mlskeyd.sock" ]; do sleep 0.02; done
t1=$(date +%s%N)
# mlskeyctl has no option to wait for readiness, and each status call is a
# new Go process on the same cores the start-up under measurement uses:
# ask every 200 ms (up to 0.2 s late, not a load of 20 processes a second).
until "$work/bin/mlskeyctl" status --json 2>/dev/null | grep -q '"device_state": *"ready"'; do sleep 0.2; done
t2=$(date +%s%N)
echo "socket bound after $(( (t1 - t0) / 1000000 )) ms; serving (device ready) after $(( (t2 - t0) / 1000000 )) ms (polled every 200 ms); load average $(cut -d' ' -f1-3 /proc/loadavg)"
# The phases, from the daemon's own log.
grep -E 'socket bound|token opened|read the token|catalog reconciled|hardware keys checked|serving' "$work/start.log" || true
kill -TERM $pid; wait $pid || true
