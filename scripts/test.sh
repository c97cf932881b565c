#!/usr/bin/env bash
# Runs every test: formatting, vet, generated-code freshness, unit and
# device tests against SoftHSM and swtpm (installed with apt-get when missing)
# and the in-process TPM simulator, the
# end-to-end tests of the real binaries, interoperability with ts-mls (Node.js
# installed with apt-get when missing), the ts-mls provider's tests
# (clients/ts-mls, npm test against dev daemons), and a short run of every
# fuzz target.
#   scripts/test.sh            everything
#   FUZZTIME=1000000x scripts/test.sh   longer fuzzing (executions per target)
set -euo pipefail
cd "$(dirname "$0")/.."
export MLSKEYD_REQUIRE_SOFTHSM=1 MLSKEYD_REQUIRE_SWTPM=1 MLSKEYD_REQUIRE_NODE=1 MLSKEYD_REQUIRE_P11KIT=1 MLSKEYD_REQUIRE_SYSTEMD=1

scripts/prereqs.sh
# Every package is named: apt-install.sh uses --no-install-recommends, so a
# package that is only recommended (libprotobuf-dev by protobuf-compiler:
# the well-known .proto files) would otherwise be missing on a fresh machine.
# p11-kit (p11-kit-server) and p11-kit-modules (p11-kit-client.so): the
# tests forward a SoftHSM token through p11-kit, as a container gets a host
# token. systemd brings systemd-analyze and systemd-socket-activate, which
# the tests of contrib/systemd use offline (no systemd needs to run).
pkgs=(softhsm2 swtpm swtpm-tools p11-kit p11-kit-modules protobuf-compiler libprotobuf-dev libssl-dev git systemd)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
scripts/apt-install.sh "${pkgs[@]}"

echo "== gofmt, go vet, generated code"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))
if [ -n "$unformatted" ]; then echo "not gofmt-ed:"; echo "$unformatted"; exit 1; fi
go vet ./...
scripts/gen-proto.sh --check

echo "== ts-mls (clients/interop)"
(cd clients/interop && npm ci --no-audit --no-fund --loglevel=error)

echo "== @mlskeyd/ts-mls (clients/ts-mls), against dev daemons"
tsbin=$(mktemp -d)
go build -o "$tsbin" ./cmd/mlskeyd ./cmd/mlskeyctl
(cd clients/ts-mls && npm ci --no-audit --no-fund --loglevel=error &&
  MLSKEYD_BIN_DIR="$tsbin" MLSKEYD_REQUIRE_DAEMON=1 npm test --silent)
rm -rf "$tsbin"

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...

# The budget is a count of executions, not a duration: with a duration, Go
# 1.26's fuzzing coordinator can fail a target with a bare "context deadline
# exceeded" at the very end of its time and no failing input (a race in
# internal/fuzz, go.dev/issue/75804, fixed in Go 1.27). A count has no
# deadline to race. 50000 runs the slowest target (server
# FuzzDecryptWithLabel, a real HPKE open per input) in about 25 s here.
echo "== fuzz (${FUZZTIME:=50000x} each)"
fuzzlog=$(mktemp)
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "-- $pkg $target"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg" >"$fuzzlog" 2>&1; then
      cat "$fuzzlog"
      if [[ "$FUZZTIME" != *x ]] && grep -q '^    context deadline exceeded$' "$fuzzlog" && ! grep -q 'Failing input written' "$fuzzlog"; then
        echo "hint: no failing input was written; this is likely Go's fuzz-deadline race (go.dev/issue/75804): give FUZZTIME as a count, e.g. FUZZTIME=500000x" >&2
      fi
      rm -f "$fuzzlog"
      exit 1
    fi
  done
done
rm -f "$fuzzlog"
echo "all tests passed"
