"""What the local cloud installs on demand: Debian packages, and Go programs built from the
module proxy into the shared cache (keyed by version, locked, moved into place when complete)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .cloud import LocalCloudError, log
from .state import locked

#: the one approved newer toolchain, for modules newer than the machine's Go (LOCAL-CLOUD.md)
NEWER_GO = "go1.27.3"


def apt_install(*packages: str) -> None:
    """Install Debian packages that are missing (as root, or with passwordless sudo)."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=600", "-q"]
    install = [*apt, "install", "-y", "--no-install-recommends", *packages]
    log(f"installing {' '.join(packages)} (apt)")
    done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:  # a stale package list gives 404s: refresh once
        subprocess.run([*apt, "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LocalCloudError(f"apt-get install {' '.join(packages)} failed:\n{done.stderr[-2000:]}")


def go_install(packages: tuple[str, ...], version: str, dest: Path, binaries: tuple[str, ...], cold: str,
               go_cache: Path, ldflags: str = "", tags: str = "",
               env: dict[str, str] | None = None) -> dict[str, Path]:
    """`go install package@version ...` (packages of one module) into dest, a cache directory named
    after the version; returns binary name -> path. Built once per machine: callers from other
    state directories wait on the lock, then find the binaries there. go_cache: GOCACHE (the
    shared one, Cloud.go_cache); -trimpath keeps its entries independent of the build's paths.
    env: extra build variables (CGO_ENABLED, ...)."""
    paths = {name: dest / name for name in binaries}
    if all(p.is_file() for p in paths.values()):
        return paths
    if not shutil.which("go"):
        raise LocalCloudError(f"{', '.join(binaries)} missing from {dest} and `go` is not on PATH to build them")
    with locked(dest.parent):
        if all(p.is_file() for p in paths.values()):  # built meanwhile by another local cloud
            return paths
        targets = [f"{package}@{version}" for package in packages]
        log(f"building {' '.join(targets)} into {dest} (cold build: {cold}; cached afterwards)")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        argv = ["go", "install", "-trimpath", *(["-ldflags", ldflags] if ldflags else []),
                *(["-tags", tags] if tags else []), *targets]
        build_env = {**os.environ, **(env or {}), "GOBIN": str(tmp), "GOCACHE": str(go_cache)}
        started = time.monotonic()
        done = subprocess.run(argv, env=build_env, capture_output=True, text=True, check=False)
        if done.returncode != 0 and ("requires go" in done.stderr or "toolchain" in done.stderr):
            log(f"go install wants a newer Go; retrying with GOTOOLCHAIN={NEWER_GO}")
            done = subprocess.run(argv, env={**build_env, "GOTOOLCHAIN": NEWER_GO}, capture_output=True, text=True,
                                  check=False)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LocalCloudError(f"go install {' '.join(targets)} failed:\n{done.stderr[-3000:]}")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.replace(dest)
        log(f"built {' '.join(binaries)} {version} in {time.monotonic() - started:.0f}s")
    return paths
