#!/usr/bin/env bash
# Build the operator image from the repository's Dockerfile, here, with nothing pulled from
# outside: podman (scripts/lib/podman-setup.sh) FROM the local Debian + Python base
# (scripts/lib/base-image.sh). Optionally push it to the local registry, where the local node
# pulls it (with an imagePullSecret: the registry wants htpasswd credentials).
#
# Usage: operator-image.sh [--no-build] [TAG ...]
#   Builds localhost/flowstore-operator:dev (the name docs/image.md and tests use; --no-build:
#   use it as it is); with TAGs,
#   pushes it as $FLOWSTORE_REGISTRY/flowstore/flowstore-operator:TAG for each, and prints each
#   pushed reference (`repo:tag@sha256:...`). Without TAGs prints the local image name.
# Env:
#   FLOWSTORE_REGISTRY, FLOWSTORE_REGISTRY_USERNAME, FLOWSTORE_REGISTRY_PASSWORD
#                       the local registry (`eval "$(scripts/localcloud env)"` after `up docker`)
#
# Cached twice: when the build inputs (Dockerfile, pyproject.toml, operator/ and the
# base image) are those the image was built from (its label dev.flowstore.operator-inputs), there
# is no build at all; otherwise podman's layers are reused: the dependency layer (pip install of flowstore[all]) is rebuilt only when
# pyproject.toml changes, so a rebuild after an operator source change is quick. The build stage
# is tagged (…:dev-build) so pruning never drops that cache; older dangling layers are pruned
# (with podman's vfs driver each layer is a full copy).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
lib="$root/scripts/lib"
image=localhost/flowstore-operator:dev
base=localhost/flowstore-python:3.11
host_ca_dir=/etc/ssl/certs

build_it=1
if [ "${1:-}" = --no-build ]; then
  build_it=
  shift
  podman image exists "$image" || { echo "operator-image: --no-build, but there is no $image" >&2; exit 1; }
fi

bash "$lib/podman-setup.sh" >/dev/null
bash "$lib/base-image.sh" "$base" >/dev/null

# Parallel callers (test sessions, the demo) build one at a time; podman's layer cache then
# makes the second build a no-op.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowstore/images"
mkdir -p "$cache"
exec 9>"$cache/.operator-image.lock"
flock 9

start=$SECONDS
# What the image is made of, as .dockerignore lets it into the build context.
inputs="$( (cd "$root" && find Dockerfile .dockerignore pyproject.toml operator -type f \
  -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*.egg-info/*' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum; podman image inspect --format '{{.Id}}' "$base") | sha256sum | cut -c1-32)"
built_from="$(podman image inspect --format '{{index .Labels "dev.flowstore.operator-inputs"}}' "$image" 2>/dev/null || true)"
if [ "$built_from" = "$inputs" ]; then
  build_it=
  echo "operator-image: $image is up to date (inputs $inputs)" >&2
fi
build=(podman build --pull=never --build-arg "PYTHON_IMAGE=$base")
# Behind a TLS-intercepting egress proxy the build's pip needs this machine's CA store; it is
# mounted for the RUN steps only, never copied into a layer.
if [ -f "$host_ca_dir/ca-certificates.crt" ]; then
  build+=(--volume "$host_ca_dir:$host_ca_dir:ro")
fi
if [ -n "$build_it" ]; then
  "${build[@]}" --target build -t "$image-build" "$root" >&2
  "${build[@]}" --label "dev.flowstore.operator-inputs=$inputs" -t "$image" "$root" >&2
  podman image prune -f --filter until=1h >/dev/null 2>&1 || true
  echo "operator-image: built $image in $((SECONDS - start))s" >&2
fi

if [ $# -eq 0 ]; then
  echo "$image"
  exit 0
fi
: "${FLOWSTORE_REGISTRY:?set by scripts/localcloud env after \`scripts/localcloud up docker\`}"
: "${FLOWSTORE_REGISTRY_USERNAME:?}" "${FLOWSTORE_REGISTRY_PASSWORD:?}"
for tag in "$@"; do
  case "$tag" in
    *[!A-Za-z0-9_.-]*|"") echo "operator-image: invalid tag '$tag'" >&2; exit 2 ;;
  esac
  ref="$FLOWSTORE_REGISTRY/flowstore/flowstore-operator:$tag"
  start=$SECONDS
  digestfile="$(mktemp)"
  podman push --quiet --tls-verify=false --digestfile "$digestfile" \
    --creds "$FLOWSTORE_REGISTRY_USERNAME:$FLOWSTORE_REGISTRY_PASSWORD" "$image" "docker://$ref" >&2
  digest="$(cat "$digestfile")"
  rm -f "$digestfile"
  echo "operator-image: pushed $ref ($digest) in $((SECONDS - start))s" >&2
  echo "$ref@$digest"
done
