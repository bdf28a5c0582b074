#!/usr/bin/env bash
# Build the Prefect 3 runtime image (examples/runtime/prefect3/Dockerfile: prefect 3.9.1 and
# flowstore[prefect]) here, FROM the local Debian + Python base (nothing is pulled from outside;
# pip reads PyPI), and push it to the local registry, where the local node pulls it for the
# flow-run Jobs of a Prefect Kubernetes worker (tests/cluster/test_prefect_kubernetes.py).
#
# Usage: prefect3-runtime-image.sh   prints the pushed reference (registry/flowstore/runtime-prefect3:3.9.1@sha256:…)
# Env:   FLOWSTORE_REGISTRY, FLOWSTORE_REGISTRY_USERNAME, FLOWSTORE_REGISTRY_PASSWORD
#        (`eval "$(scripts/localcloud env)"` after `scripts/localcloud up docker`)
#
# Cached as the operator image is (scripts/lib/operator-image.sh): no build at all when the inputs
# (the Dockerfile, pyproject.toml, operator/ and the base image) are those of the image in podman's
# store (its label dev.flowstore.runtime-inputs); otherwise podman's layers are reused, so only
# a pyproject.toml change reinstalls prefect (a few minutes); without them everything is built.
# The lock is under ~/.cache/flowstore/images.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
lib="$root/scripts/lib"
image=localhost/flowstore-runtime-prefect3:3.9.1
base=localhost/flowstore-python:3.11
dockerfile="$root/examples/runtime/prefect3/Dockerfile"
host_ca_dir=/etc/ssl/certs
: "${FLOWSTORE_REGISTRY:?set by scripts/localcloud env after \`scripts/localcloud up docker\`}"
: "${FLOWSTORE_REGISTRY_USERNAME:?}" "${FLOWSTORE_REGISTRY_PASSWORD:?}"

bash "$lib/podman-setup.sh" >/dev/null
bash "$lib/base-image.sh" "$base" >/dev/null
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowstore/images"
mkdir -p "$cache"
exec 9>"$cache/.runtime-prefect3-image.lock"
flock 9

start=$SECONDS
inputs="$( (cd "$root" && find examples/runtime/prefect3/Dockerfile .dockerignore pyproject.toml operator -type f \
  -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info/*' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum; podman image inspect --format '{{.Id}}' "$base") | sha256sum | cut -c1-32)"
built_from="$(podman image inspect --format '{{index .Labels "dev.flowstore.runtime-inputs"}}' "$image" 2>/dev/null || true)"
if [ "$built_from" = "$inputs" ]; then
  echo "prefect3-runtime-image: $image is up to date (inputs $inputs)" >&2
else
  build=(podman build --pull=never --build-arg "PYTHON_IMAGE=$base")
  # Behind a TLS-intercepting egress proxy pip needs this machine's CA store (for the RUN steps only).
  if [ -f "$host_ca_dir/ca-certificates.crt" ]; then
    build+=(--volume "$host_ca_dir:$host_ca_dir:ro")
  fi
  "${build[@]}" --label "dev.flowstore.runtime-inputs=$inputs" -f "$dockerfile" -t "$image" "$root" >&2
  podman image prune -f --filter until=1h >/dev/null 2>&1 || true
  echo "prefect3-runtime-image: built $image in $((SECONDS - start))s" >&2
fi
ref="$FLOWSTORE_REGISTRY/flowstore/runtime-prefect3:3.9.1"
digestfile="$(mktemp)"
podman push --quiet --tls-verify=false --digestfile "$digestfile" \
  --creds "$FLOWSTORE_REGISTRY_USERNAME:$FLOWSTORE_REGISTRY_PASSWORD" "$image" "docker://$ref" >&2
digest="$(cat "$digestfile")"
rm -f "$digestfile"
echo "prefect3-runtime-image: pushed $ref ($digest), $((SECONDS - start))s in all" >&2
echo "$ref@$digest"
