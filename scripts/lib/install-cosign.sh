#!/usr/bin/env bash
# Install the cosign CLI (sigstore, v2) from the Go module proxy (no prebuilt download), cached.
#
# Usage: install-cosign.sh [OUT_DIR]   (default ~/.cache/flowstore/cosign/$COSIGN_VERSION)
# Prints the path of the cosign binary on stdout (build output goes to stderr). Does nothing
# when that binary is already there. Several processes may ask at once (the cache is shared by
# checkouts): one builds under a lock, the others wait for it.
#
# The tests use it to check, offline, that the signatures flowstore pushes next to Docker
# storage images are the ones cosign itself accepts (`cosign verify --key K --insecure-ignore-tlog`).
set -euo pipefail

COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
out="${1:-${HOME}/.cache/flowstore/cosign/${COSIGN_VERSION}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

if [[ -x "$out/cosign" ]]; then
  echo "$out/cosign"
  exit 0
fi

exec 9>"$out/.lock"
flock 9
if [[ ! -x "$out/cosign" ]]; then
  echo "install-cosign: building cosign ${COSIGN_VERSION} into ${out} (go install; ~2 minutes cold)" >&2
  export GOFLAGS="-buildvcs=false" CGO_ENABLED=0
  ldflags="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=${COSIGN_VERSION}"
  tmp="$(mktemp -d "$out/.build-XXXXXX")"
  GOBIN="$tmp" go install -ldflags "$ldflags" "github.com/sigstore/cosign/v2/cmd/cosign@${COSIGN_VERSION}" >&2
  mv "$tmp/cosign" "$out/cosign"
  rmdir "$tmp"
  "$out/cosign" version >&2 || true
fi
echo "$out/cosign"
