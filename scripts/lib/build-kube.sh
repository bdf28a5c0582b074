#!/usr/bin/env bash
# Build real Kubernetes binaries and etcd from the Go module proxy (the envtest model).
#
# k8s.io/kubernetes replaces its staging modules with ./staging, which a module
# download does not contain, so `go install` of it fails. A small wrapper module
# requires k8s.io/kubernetes and replaces each staging module with its published
# v0.Y.Z twin; the list comes from the tag's own go.mod, so it stays right when
# the pinned version moves. etcd is built the same way, at the version kube pins.
#
# Usage: build-kube.sh OUT_DIR [BINARY ...]
#   BINARY: kube-apiserver, etcd, kubelet, kube-scheduler, kube-controller-manager, kubectl
#   (default: kube-apiserver etcd). Binaries land in OUT_DIR/<name>; ones already there are
#   kept. A lock in OUT_DIR makes a second caller (another state dir's `localcloud up`) wait,
#   then build only what is still missing, so no binary is ever built twice at once.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
out="$1"
shift
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(kube-apiserver etcd)
for b in "${wanted[@]}"; do
  case "$b" in
    kube-apiserver|etcd|kubelet|kube-scheduler|kube-controller-manager|kubectl) ;;
    *) echo "build-kube: unknown binary '$b' (kube-apiserver, etcd, kubelet, kube-scheduler, kube-controller-manager, kubectl)" >&2
       exit 2 ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"

exec 9>"$out/.build.lock"
if ! flock -n 9; then
  echo "build-kube: another build into $out is running; waiting for it" >&2
  flock 9
fi
missing=()
for b in "${wanted[@]}"; do [ -x "$out/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "build-kube: ${wanted[*]} already in $out" >&2
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

gomod="$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
minor="${KUBE_VERSION#v1.}"            # 34.4
staging_version="v0.${minor}"          # v0.34.4
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$gomod")"
go_version="$(awk '$1=="go"{print $2; exit}' "$gomod")"   # the wrapper needs at least kube's own

{
  echo "module flowstore.local/kubebuild"
  echo
  echo "go ${go_version}"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes ${KUBE_VERSION}"
  echo "	go.etcd.io/etcd/server/v3 ${etcd_version}"
  echo ")"
  echo
  echo "replace ("
  awk '/=> \.\/staging\/src\//{print "\t" $1 " => " $1 " '"${staging_version}"'"}' "$gomod"
  echo ")"
} > go.mod

mkdir -p cmd/etcd
cat > cmd/etcd/main.go <<'GO'
// etcd at the version kube-apiserver pins; `go install` of etcd itself fails on its replace lines.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

go mod download k8s.io/kubernetes
ldflags="-s -w"
for v in gitVersion=${KUBE_VERSION} gitMajor=1 gitMinor=${minor%%.*} gitTreeState=clean; do
  # component-base for the servers, client-go for kubectl's `version`
  ldflags="$ldflags -X k8s.io/component-base/version.$v -X k8s.io/client-go/pkg/version.$v"
done
# One `go build` for every missing binary: the packages they share (most of them) are compiled
# once and the links overlap; -p 2 because the machine has 2 cores and a link needs several GB.
# -trimpath keeps the build cache independent of where the wrapper module sits (a fresh mktemp
# each time), so a warm GOCACHE (the caller points it under ~/.cache/flowstore) is reused.
start=$SECONDS
targets=()
for b in "${missing[@]}"; do
  if [ "$b" = etcd ]; then targets+=(./cmd/etcd); else targets+=("k8s.io/kubernetes/cmd/$b"); fi
done
mkdir -p "$work/bin"
# the -X flags name packages etcd does not link; the linker ignores them there
go build -p 2 -trimpath -ldflags "$ldflags" -o "$work/bin/" "${targets[@]}"
for b in "${missing[@]}"; do
  mv "$work/bin/$b" "$out/$b.tmp"
  mv "$out/$b.tmp" "$out/$b"
done
echo "build-kube: built ${missing[*]} (${KUBE_VERSION}; etcd ${etcd_version}) into $out in $((SECONDS - start))s" \
     "(GOCACHE ${GOCACHE:-$(go env GOCACHE)})" >&2
