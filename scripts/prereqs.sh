#!/usr/bin/env bash
# Checks what the other scripts cannot install themselves and says, in one
# line each, how to get it. Installs the C compiler (cgo needs it) with
# apt-get when it is missing; Go must come from go.dev because Debian 12
# ships Go 1.19 and go.mod needs a newer one.
#   scripts/prereqs.sh        exit 0 when everything is there
set -euo pipefail
cd "$(dirname "$0")/.."

need=$(awk '/^go [0-9]/ {print $2; exit}' go.mod)
if ! command -v go >/dev/null 2>&1; then
  echo "prerequisite missing: Go $need or newer (Debian 12's golang package is too old; install the go.dev tarball into /usr/local/go and add /usr/local/go/bin to PATH)" >&2
  exit 1
fi
have=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "prerequisite too old: Go $have found, go.mod needs $need or newer (install the go.dev tarball into /usr/local/go)" >&2
  exit 1
fi
if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "unsupported system: the scripts install packages with apt-get (Debian 12); install softhsm2, swtpm, swtpm-tools, protobuf-compiler, libprotobuf-dev, gcc, libc6-dev, libssl-dev, systemd and nodejs/npm by hand" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "cannot install packages: run as root or install sudo" >&2
  exit 1
fi
# cgo (miekg/pkcs11, the TPM simulator) needs a C compiler and libc headers.
scripts/apt-install.sh gcc libc6-dev
