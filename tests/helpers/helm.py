"""helm for the packaging and cluster tiers: the binary (built once from the Go module proxy),
run with its homes kept out of the developer's, and what an RBAC denial looks like in a log."""

from __future__ import annotations

import os
import re
import subprocess

from tests.helpers.localcloud import ROOT

# What an RBAC denial (or kopf's fallback when one is met) looks like in the operator's log.
# (A 403 on its own: not the milliseconds of a timestamp like `16:09:16,403`, nor part of a name.)
DENIAL = re.compile(r"(?<![\w,.-])403(?![\w-])|[Ff]orbidden|Not enough permissions|[Pp]ermission denied")

# helm keeps its cache and config out of the developer's home.
HELM_HOMES = {"HELM_CACHE_HOME": "/tmp/flowstore-helm-cache", "HELM_CONFIG_HOME": "/tmp/flowstore-helm-config",
              "HELM_DATA_HOME": "/tmp/flowstore-helm-data"}


def install_helm() -> str:
    """The helm binary's path (scripts/lib/install-helm.sh builds it once)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "install-helm.sh")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str) -> str:
    done = subprocess.run([helm, *args], capture_output=True, text=True, check=False, env={**os.environ, **HELM_HOMES})
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout
