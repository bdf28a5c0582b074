#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from the Go module proxy (the envtest model).
#
# k8s.io/kubernetes replaces its staging modules with ./staging, which a module
# download does not contain, so `go install` of it fails. A small wrapper module
# requires k8s.io/kubernetes and replaces each staging module with its published
# v0.Y.Z twin; the list comes from the tag's own go.mod, so it stays right when
# the pinned version moves. etcd is built the same way, at the version kube pins.
#
# Usage: build-kube.sh OUT_DIR   (binaries land in OUT_DIR/{kube-apiserver,etcd})
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
out="$1"
mkdir -p "$out"
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

{
  echo "module flowstore.local/kubebuild"
  echo
  echo "go 1.24.0"
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
  ldflags="$ldflags -X k8s.io/component-base/version.$v"
done
# Two jobs of one core each: the machine has 2 cores and several GB are needed per link.
go build -p 2 -ldflags "$ldflags" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
go build -p 2 -ldflags "-s -w" -o "$out/etcd.tmp" ./cmd/etcd
mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
mv "$out/etcd.tmp" "$out/etcd"
echo "built kube-apiserver ${KUBE_VERSION} and etcd ${etcd_version} into $out"
