"""docker: the registry (Debian's docker-registry, distribution 2.8, htpasswd bcrypt auth) and the
Docker Engine API served by podman (LOCAL-CLOUD.md), with the local Python base image."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import procs
from . import state as st
from .cloud import Cloud, log
from .install import apt_install
from .model import Server, Service
from .node_files import Node
from .state import State

BASE_IMAGE = "localhost/flowstore-python:3.11"


# ------------------------------------------------------------------ registry


def _registry_files(cloud: Cloud, port: int) -> Path:
    """Config, htpasswd (bcrypt) and storage of the local registry; returns the config path."""
    if not shutil.which("docker-registry") or not shutil.which("htpasswd"):
        apt_install("docker-registry", "apache2-utils")
    root = cloud.state_dir / "registry"
    (root / "data").mkdir(parents=True, exist_ok=True)
    creds = cloud.state_dir / "registry-credentials"
    if not creds.exists():
        creds.write_text(f"flows:{secrets.token_hex(16)}")
        creds.chmod(0o600)
    user, password = cloud.credentials("registry-credentials")
    htpasswd = root / "htpasswd"
    if not htpasswd.exists():
        line = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True,
                              text=True).stdout.strip()
        htpasswd.write_text(line + "\n")
        htpasswd.chmod(0o600)
    config = root / "config.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "auth": {"htpasswd": {"realm": "flowstore-localcloud", "path": str(htpasswd)}},
    }, indent=2))
    return config


def _registry_argv(cloud: Cloud, state: State) -> list[str]:
    port = st.port(state, "registry")
    assert port
    return ["docker-registry", "serve", str(_registry_files(cloud, port))]


def _registry_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/v2/")
    return code == 401  # up, and refusing anonymous requests


def _node_trusts_registry(cloud: Cloud, state: State) -> None:
    """A node that is up already pulls from the (new) registry port too."""
    Node(cloud.state_dir, cloud.cache).write_registry_hosts(st.port(state, "registry"))


# ------------------------------------------------------------------ the engine (podman)


def _engine_ready(cloud: Cloud, registry_port: int | None) -> None:
    """podman configured for this machine (scripts/lib/podman-setup.sh), the local base image
    with Python (scripts/lib/base-image.sh), and the local registry trusted over plain http."""
    subprocess.run(["bash", str(cloud.lib / "podman-setup.sh")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", str(cloud.lib / "base-image.sh"), BASE_IMAGE], check=True, stdout=subprocess.DEVNULL)
    # Images flowstore built (base images of Docker storages: labelled) older than a day go, so
    # the build cache of a long-lived machine stays bounded
    # while the same day's runs stay warm. Images a container still uses are kept by podman.
    pruned = subprocess.run(["podman", "image", "prune", "--all", "--force", "--filter",
                             "label=dev.flowstore.inputs-digest", "--filter", "until=24h"],
                            capture_output=True, text=True, timeout=600, check=False)
    if pruned.returncode != 0:
        log(f"docker: pruning old flowstore images failed (ignored): {pruned.stderr.strip()[:300]}")
    elif pruned.stdout.strip():
        log(f"docker: pruned {len(pruned.stdout.split())} flowstore images older than a day")
    if registry_port:
        conf = Path("/etc/containers/registries.conf.d") / f"50-flowstore-localcloud-{registry_port}.conf"
        if not conf.exists():
            try:
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{registry_port}"\ninsecure = true\n')
            except OSError as exc:
                log(f"docker: cannot mark 127.0.0.1:{registry_port} insecure in {conf.parent} ({exc}); "
                    "pushes to the local registry will fail")


def _docker_argv(cloud: Cloud, state: State) -> list[str]:
    # The Docker Engine API, served by podman: DOCKER_HOST=tcp://127.0.0.1:PORT.
    _engine_ready(cloud, st.port(state, "registry"))
    return ["podman", "system", "service", "--time=0", f"tcp://127.0.0.1:{st.port(state, 'docker')}"]


def _docker_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, body = procs.probe(f"http://127.0.0.1:{srv['port']}/_ping")
    return code == 200 and body.strip() == "OK"


def _exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    user, password = cloud.credentials("registry-credentials")
    engine = f"tcp://127.0.0.1:{st.port(state, 'docker')}"
    return [
        ("DOCKER_HOST", engine),
        ("FLOWSTORE_DOCKER_HOST", engine),
        ("FLOWSTORE_REGISTRY", f"127.0.0.1:{st.port(state, 'registry')}"),
        ("FLOWSTORE_REGISTRY_USERNAME", user),
        ("FLOWSTORE_REGISTRY_PASSWORD", password),
        ("FLOWSTORE_BASE_IMAGE", BASE_IMAGE),
    ]


REGISTRY = Server("registry", exe_hint="docker-registry", argv=_registry_argv, ready=_registry_ready,
                  after_start=_node_trusts_registry)
ENGINE = Server("docker", exe_hint="podman", argv=_docker_argv, ready=_docker_ready)
SERVICE = Service("docker", "registry + podman's Engine API", (REGISTRY, ENGINE), _exports)
