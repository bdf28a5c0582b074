#!/usr/bin/env bash
# Make podman and buildah usable on this kind of machine (LOCAL-CLOUD.md, "Docker Engine API"
# and "running a built image"): Debian's podman 4.3 / buildah 1.28 with runc, the cgroupfs
# cgroup manager, a nofile ulimit the sandbox accepts, and the kernel's overlay storage driver
# (vfs only where overlay cannot be mounted).
#
# Idempotent: installs only missing packages and writes each setting only if it is not set
# yet (an admin's own containers.conf / storage.conf values are left alone).
#
# Usage: podman-setup.sh          (as root, or with passwordless sudo)
set -euo pipefail

sudo_=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo_=(sudo -n)
  else
    echo "podman-setup: needs root (or passwordless sudo) to install packages and write /etc/containers" >&2
    exit 1
  fi
fi

# ------------------------------------------------------------------ packages (only if missing)
need=()
command -v podman >/dev/null || need+=(podman)
command -v buildah >/dev/null || need+=(buildah)
command -v runc >/dev/null || need+=(runc)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v newuidmap >/dev/null || need+=(uidmap)
if [ ${#need[@]} -gt 0 ]; then
  echo "podman-setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_=("${sudo_[@]}" apt-get -o DPkg::Lock::Timeout=600 -q)
  # A stale package list makes installs fail with 404s; refresh it once if the install fails.
  "${apt_[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null \
    || { "${apt_[@]}" update >/dev/null && "${apt_[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

# ------------------------------------------------------------------ configuration
conf_dir=/etc/containers
"${sudo_[@]}" mkdir -p "$conf_dir"

# set_key FILE TABLE KEY VALUE: add `KEY = VALUE` under `[TABLE]` unless KEY is already set
# (uncommented) in that table. TOML tables are flat here: a table ends at the next `[...]`.
set_key() {
  local file="$1" table="$2" key="$3" value="$4"
  "${sudo_[@]}" touch "$file"
  if awk -v t="[$table]" -v k="$key" '
      /^[[:space:]]*\[/ { gsub(/[[:space:]]/, ""); intable = ($0 == t); next }
      intable && $0 ~ "^[[:space:]]*" k "[[:space:]]*=" { found = 1 }
      END { exit !found }' "$file"; then
    return 0
  fi
  local tmp
  tmp="$(mktemp)"
  if grep -qE "^[[:space:]]*\[$table\][[:space:]]*$" "$file"; then
    # Insert right after the table header.
    awk -v t="[$table]" -v line="$key = $value" '
      { print }
      { s = $0; gsub(/[[:space:]]/, "", s) }
      s == t && !done { print line; done = 1 }' "$file" >"$tmp"
  else
    { cat "$file"; printf '\n[%s]\n%s = %s\n' "$table" "$key" "$value"; } >"$tmp"
  fi
  "${sudo_[@]}" install -m 0644 "$tmp" "$file"
  rm -f "$tmp"
  echo "podman-setup: $file: [$table] $key = $value" >&2
}

# The sandbox refuses rlimits above the podman service's own (its nofile and nproc hard limits
# are far below podman's defaults): containers (RUN steps, and the started ones of healthchecks
# and env runners) get limits every machine here allows. systemd is not PID 1.
ulimits='["nofile=1024:1024", "nproc=4096:4096"]'
if [ -f "$conf_dir/containers.conf" ] \
    && grep -qxF 'default_ulimits = ["nofile=1024:1024"]' "$conf_dir/containers.conf"; then
  # the value earlier versions of this script wrote: builds worked, started containers did not
  "${sudo_[@]}" sed -i 's/^default_ulimits = \["nofile=1024:1024"\]$/default_ulimits = '"$ulimits"'/' \
    "$conf_dir/containers.conf"
  echo "podman-setup: $conf_dir/containers.conf: [containers] default_ulimits = $ulimits" >&2
fi
set_key "$conf_dir/containers.conf" containers default_ulimits "$ulimits"
set_key "$conf_dir/containers.conf" engine cgroup_manager '"cgroupfs"'
set_key "$conf_dir/containers.conf" engine runtime '"runc"'
# The storage driver: the kernel's overlay where it mounts on the storage's own filesystem, vfs
# elsewhere. vfs stores every layer as a full copy of the image (a 200 MB base image with ten
# build steps costs 2 GB), which filled the disk of a whole test run; overlay stores each layer's
# changes only (the same build: 200 MB + a few kB) and builds several times faster.
graphroot=/var/lib/containers/storage
overlay_mounts() {
  "${sudo_[@]}" mkdir -p "$(dirname "$graphroot")"
  local probe rc=1
  probe="$("${sudo_[@]}" mktemp -d "$(dirname "$graphroot")/.overlay-probe.XXXXXX")"
  "${sudo_[@]}" mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if "${sudo_[@]}" mount -t overlay overlay \
      -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
    "${sudo_[@]}" umount "$probe/merged" && rc=0
  fi
  "${sudo_[@]}" rm -rf "$probe"
  return $rc
}
storage_conf="$conf_dir/storage.conf"
if overlay_mounts; then
  # Earlier versions of this script wrote `driver = "vfs"`. A store cannot change its driver in
  # place: its images and containers (all rebuilt on demand: base-image.sh, operator-image.sh)
  # are removed once, then the store starts again on overlay.
  if [ -f "$storage_conf" ] && grep -qxF 'driver = "vfs"' "$storage_conf"; then
    echo "podman-setup: moving podman's store from vfs to overlay (removes its images once)" >&2
    podman system reset --force >/dev/null 2>&1 || true
    # what a reset leaves mounted (shm of containers it could not stop) would keep the old store
    awk -v r="$graphroot/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r \
      | while read -r m; do "${sudo_[@]}" umount -l "$m" || true; done
    "${sudo_[@]}" rm -rf "$graphroot"
    "${sudo_[@]}" sed -i 's/^driver = "vfs"$/driver = "overlay"/' "$storage_conf"
    echo "podman-setup: $storage_conf: [storage] driver = \"overlay\"" >&2
  fi
  set_key "$storage_conf" storage driver '"overlay"'
else
  set_key "$storage_conf" storage driver '"vfs"'
fi
# storage.conf needs these when it is the only storage configuration file read.
set_key "$conf_dir/storage.conf" storage runroot '"/run/containers/storage"'
set_key "$conf_dir/storage.conf" storage graphroot "\"$graphroot\""

echo "podman-setup: $(podman --version), $(buildah --version | cut -d' ' -f1-3), storage driver $(podman info --format '{{.Store.GraphDriverName}}' 2>/dev/null || echo '?')" >&2
