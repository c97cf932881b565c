#!/usr/bin/env bash
# The device in-process (mlskeyd bench) beside the same operation through a
# running daemon (mlskeyctl bench), one after the other on one dev SoftHSM
# token, so that their ratio comes from one run. Prints one JSON line per
# measurement, "where" being "device" or "daemon".
#   scripts/bench-compare.sh [DURATION]     (default 10s per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-10s}
bin=$(mktemp -d)
state=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$bin" "$state"' EXIT
go build -o "$bin" ./cmd/mlskeyd ./cmd/mlskeyctl
"$bin/mlskeyd" --dev --state-dir "$state" --log-level warn &
pid=$!
for _ in $(seq 100); do [ -S "$state/mlskeyd.sock" ] && break; sleep 0.1; done
run() { # op suite concurrency duration
  local args=(--op "$1" --suite "$2" --concurrency "$3" --duration "$4" --json)
  echo "{\"where\":\"device\",\"result\":$("$bin/mlskeyd" bench --dev --state-dir "$state" --log-level warn "${args[@]}")}"
  echo "{\"where\":\"daemon\",\"result\":$("$bin/mlskeyctl" --socket "$state/mlskeyd.sock" bench "${args[@]}")}"
}
for suite in 1 2; do
  run sign "$suite" 1 "$d"
  run sign "$suite" 8 "$d"
  run sign "$suite" 16 "$d"
  run open-welcome "$suite" 1 "$d"
  run open-welcome "$suite" 8 "$d"
done
run key-create 1 1 "$d"
# Suite 1's init keys are hardware on SoftHSM (X25519 cannot be wrapped
# there), suite 2's wrapped: the first makes token objects, the second none.
run keypackage-create 1 1 1s
run keypackage-create 2 1 "$d"
