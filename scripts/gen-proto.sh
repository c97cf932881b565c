#!/usr/bin/env bash
# Regenerates the Go code for proto/ from the .proto files.
#   scripts/gen-proto.sh          write the generated files
#   scripts/gen-proto.sh --check  fail if the committed files are stale
# Uses Debian's protoc (installed when missing) and protoc-gen-go /
# protoc-gen-go-grpc at pinned versions from the Go module proxy.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

# libprotobuf-dev holds google/protobuf/*.proto; it is only a recommendation
# of protobuf-compiler, so it is named explicitly.
scripts/apt-install.sh protobuf-compiler libprotobuf-dev
bin=$(pwd)/.cache/bin
mkdir -p "$bin"
[ -x "$bin/protoc-gen-go" ] || GOBIN=$bin go install "$PROTOC_GEN_GO"
[ -x "$bin/protoc-gen-go-grpc" ] || GOBIN=$bin go install "$PROTOC_GEN_GO_GRPC"

out=$(pwd)/proto
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
protos=$(cd proto && find . -name '*.proto' | sort)
(cd proto && PATH="$bin:$PATH" protoc -I . \
  --go_out="$out" --go_opt=paths=source_relative \
  --go-grpc_out="$out" --go-grpc_opt=paths=source_relative \
  $protos)
if [ "${1:-}" = "--check" ]; then
  stale=0
  for f in $(cd "$out" && find . -name '*.go' | sort); do
    if ! cmp -s "$out/$f" "proto/$f"; then
      echo "stale generated file: proto/${f#./} (run scripts/gen-proto.sh)" >&2
      stale=1
    fi
  done
  exit $stale
fi
