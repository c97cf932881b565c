#!/usr/bin/env bash
# A live MLS group whose member's keys live in the token.
#   scripts/demo.sh [--suite 1|2|3|5|7] [--three]
# Installs what is missing (softhsm2, nodejs/npm) with apt-get, builds the
# binaries into ./bin and the ts-mls provider in clients/ts-mls, starts a dev
# daemon on SoftHSM in a temporary directory (two with --three), and runs the
# conversation of clients/ts-mls/examples/conversation.ts: Alice with software
# keys, Bob (and Carol) through @mlskeyd/ts-mls. Everything is removed at the
# end.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/demo.sh [--suite 1|2|3|5|7] [--three]"
suite=1 three=""
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; suite=$2; shift 2 ;;
    --three) three=1; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
# Suites 4 and 6 (X448) need ts-mls's optional @hpke/dhkem-x448, which the
# example does not install. Checked here so a typo fails before the build.
case "$suite" in
  1|2|3|5|7) ;;
  *) echo "scripts/demo.sh: --suite $suite: one of 1, 2, 3, 5, 7 (4 and 6 need ts-mls's optional X448 module)" >&2; exit 2 ;;
esac

scripts/prereqs.sh
pkgs=(softhsm2)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
scripts/apt-install.sh "${pkgs[@]}"

echo "== building mlskeyd, mlskeyctl and @mlskeyd/ts-mls"
mkdir -p bin
go build -o bin/ ./cmd/mlskeyd ./cmd/mlskeyctl
(cd clients/ts-mls && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

start() { # start NAME: a dev daemon with its state in $tmp/NAME
  mkdir -p "$tmp/$1"
  bin/mlskeyd --dev --state-dir "$tmp/$1" >"$tmp/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    bin/mlskeyctl --socket "$tmp/$1/mlskeyd.sock" status >/dev/null 2>&1 && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "mlskeyd did not start:" >&2; cat "$tmp/$1.log" >&2; exit 1
}

echo "== starting a dev daemon (SoftHSM token in $tmp/bob)"
start bob
bin/mlskeyctl --socket "$tmp/bob/mlskeyd.sock" status | sed 's/^/  /'
args=(--suite "$suite" --socket "$tmp/bob/mlskeyd.sock")
if [ -n "$three" ]; then
  echo "== starting a second daemon for Carol ($tmp/carol)"
  start carol
  args+=(--carol-socket "$tmp/carol/mlskeyd.sock")
fi

echo "== the conversation"
node clients/ts-mls/dist/examples/conversation.js "${args[@]}"

echo "== Bob's keys as the daemon lists them"
bin/mlskeyctl --socket "$tmp/bob/mlskeyd.sock" key list | sed 's/^/  /'
