#!/usr/bin/env bash
# Build the example Prefect 1 runtime image (examples/runtime/prefect1/Dockerfile) here, FROM the
# local Debian + Python base (nothing is pulled from outside; pip reads PyPI), and push it to the
# local registry, where the local node pulls it for builder Jobs (spec.build.image).
#
# Usage: runtime-image.sh            prints the pushed reference (registry/flowstore/runtime-prefect1:1.4.1)
# Env:   FLOWSTORE_REGISTRY, FLOWSTORE_REGISTRY_USERNAME, FLOWSTORE_REGISTRY_PASSWORD
#        (`eval "$(scripts/localcloud env)"` after `scripts/localcloud up docker`)
#
# Cached: podman's layer cache (the pip install is one layer, rebuilt only when the Dockerfile or
# the base image changes) and the registry (a push of layers it has costs a manifest check).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
lib="$root/scripts/lib"
image=localhost/flowstore-runtime-prefect1:1.4.1
base=localhost/flowstore-python:3.11
host_ca_dir=/etc/ssl/certs
: "${FLOWSTORE_REGISTRY:?set by scripts/localcloud env after \`scripts/localcloud up docker\`}"
: "${FLOWSTORE_REGISTRY_USERNAME:?}" "${FLOWSTORE_REGISTRY_PASSWORD:?}"

bash "$lib/podman-setup.sh" >/dev/null
bash "$lib/base-image.sh" "$base" >/dev/null
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowstore/images"
mkdir -p "$cache"
exec 9>"$cache/.runtime-image.lock"
flock 9

start=$SECONDS
build=(podman build --pull=never --build-arg "PYTHON_IMAGE=$base")
# Behind a TLS-intercepting egress proxy pip needs this machine's CA store (for the RUN step only).
if [ -f "$host_ca_dir/ca-certificates.crt" ]; then
  build+=(--volume "$host_ca_dir:$host_ca_dir:ro")
fi
"${build[@]}" -t "$image" "$root/examples/runtime/prefect1" >&2
echo "runtime-image: $image ready in $((SECONDS - start))s" >&2
ref="$FLOWSTORE_REGISTRY/flowstore/runtime-prefect1:1.4.1"
podman push --quiet --tls-verify=false \
  --creds "$FLOWSTORE_REGISTRY_USERNAME:$FLOWSTORE_REGISTRY_PASSWORD" "$image" "docker://$ref" >&2
echo "$ref"
