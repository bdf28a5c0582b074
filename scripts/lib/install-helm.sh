#!/usr/bin/env bash
# Install the helm CLI from the Go module proxy (no prebuilt download), cached.
#
# Usage: install-helm.sh [OUT_DIR]   (default ~/.cache/flowstore/helm/$HELM_VERSION)
# Prints the path of the helm binary on stdout (build output goes to stderr). Does nothing
# when that binary is already there.
#
# The ldflags are those of helm's own Makefile: without the version one `helm version` says
# v3.x-dev; without the Kubernetes ones `helm template`/`helm lint` assume Kubernetes v1.20
# and the chart's kubeVersion constraint (>=1.30) fails.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.18.4}"
out="${1:-${HOME}/.cache/flowstore/helm/${HELM_VERSION}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stamp="$out/.built-with-kube-ldflags"

if [[ -x "$out/helm" && -f "$stamp" ]]; then
  echo "$out/helm"
  exit 0
fi

echo "install-helm: building helm ${HELM_VERSION} into ${out} (go install; a few minutes cold)" >&2
export GOFLAGS="-buildvcs=false" CGO_ENABLED=0
# The Kubernetes version helm assumes offline = its client-go minor (the Makefile's rule).
gomod="$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
client_go="$(awk '$1=="k8s.io/client-go"{print $2; exit}' "$gomod")"   # v0.33.2
kube_minor="$(echo "${client_go#v0.}" | cut -d. -f1)"                   # 33

ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${kube_minor}"
done
GOBIN="$out" go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2
"$out/helm" version --short >&2
touch "$stamp"
echo "$out/helm"
