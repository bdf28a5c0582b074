#!/usr/bin/env bash
# Build the local Python base image the operator image is built FROM here, where no base image
# can be pulled (LOCAL-CLOUD.md): Debian bookworm (python3 = 3.11) + python3-venv + python3-pip,
# bootstrapped with mmdebstrap from Debian's package mirror and `podman import`ed.
#
# Cached twice: nothing is done if the image is in the podman store; otherwise the root
# filesystem tarball under ~/.cache/flowstore/images/ is imported (a fresh store re-imports
# in seconds); only without both is the tarball bootstrapped (~1-2 minutes).
#
# Usage: base-image.sh [IMAGE]      (default localhost/flowstore-python:3.11; prints IMAGE)
# Env:   FLOWSTORE_DEBIAN_MIRROR    Debian mirror URL (default: the one apt on this machine uses)
#        FLOWSTORE_BASE_REBUILD=1   bootstrap again even if cached
set -euo pipefail

image="${1:-localhost/flowstore-python:3.11}"
suite=bookworm
packages=python3,python3-venv,python3-pip,ca-certificates
# The tarball's name carries the recipe, so changing it builds a new one.
recipe="$(printf '%s|%s|v1' "$suite" "$packages" | sha256sum | cut -c1-12)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/flowstore/images"
tarball="$cache/flowstore-python-3.11-$suite-$recipe.tar.gz"
mkdir -p "$cache"

# Parallel callers (test sessions, the demo) bootstrap and import once.
exec 9>"$cache/.lock"
flock 9

rebuild="${FLOWSTORE_BASE_REBUILD:-}"
if [ -z "$rebuild" ] && podman image exists "$image"; then
  echo "$image"
  exit 0
fi

mirror_from_apt() {
  # The first Debian archive URI in this machine's apt sources (deb822 or one-line format).
  local uri
  uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^[[:space:]]*URIs:/ { for (i = 2; i <= NF; i++) print $i }
           /^[[:space:]]*deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; break } }' \
    | grep -E '/debian/?$' | head -n1)"
  echo "${uri:-http://deb.debian.org/debian}"
}

if [ -n "$rebuild" ] || [ ! -s "$tarball" ]; then
  mirror="${FLOWSTORE_DEBIAN_MIRROR:-$(mirror_from_apt)}"
  mirror="${mirror%/}"
  security="${FLOWSTORE_DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"
  echo "base-image: bootstrapping Debian $suite + $packages from $mirror" >&2
  tmp="$tarball.tmp.$$.tar.gz"
  trap 'rm -f "$tmp"' EXIT
  start=$SECONDS
  # minbase: Essential + required packages (dpkg, apt, bash, coreutils, passwd for useradd).
  # Documentation, man pages and locales are left out, as in the python:*-slim images.
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='APT::Install-Recommends "false"' \
    "$suite" "$tmp" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security $suite-security main" \
    </dev/null
  mv "$tmp" "$tarball"
  trap - EXIT
  echo "base-image: bootstrapped in $((SECONDS - start))s: $tarball ($(du -h "$tarball" | cut -f1))" >&2
fi

echo "base-image: importing $tarball as $image" >&2
podman import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "Debian $suite + python3 (flowstore scripts/lib/base-image.sh, recipe $recipe)" \
  "$tarball" "$image" >/dev/null
echo "$image"
