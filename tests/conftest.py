"""Shared fixtures: the real local cloud (scripts/localcloud), a namespace per test.

Every server is real (LOCAL-CLOUD.md). When the environment already carries the exports of
`scripts/localcloud env` (as under `make test`), those servers are used; otherwise the
session brings them up itself, so `pytest tests/x.py` works from a bare shell too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCALCLOUD = ROOT / "scripts" / "localcloud"


def _localcloud_env(*services: str) -> dict[str, str]:
    """Run `localcloud up SERVICES` (idempotent) and return what `localcloud env` exports."""
    subprocess.run([sys.executable, str(LOCALCLOUD), "up", *services], check=True, cwd=ROOT)
    out = subprocess.run(
        [sys.executable, str(LOCALCLOUD), "env"], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def _ensure(service: str, marker: str) -> dict[str, str]:
    if not os.environ.get(marker):
        os.environ.update(_localcloud_env(service))
    return dict(os.environ)


@pytest.fixture(scope="session")
def kube_env() -> dict[str, str]:
    """KUBECONFIG for the real kube-apiserver (admin)."""
    return _ensure("kube", "KUBECONFIG")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """The real S3 server's endpoint URL (moto server), with AWS_* test credentials exported."""
    return _ensure("s3", "FLOWSTORE_S3_ENDPOINT")["FLOWSTORE_S3_ENDPOINT"]


@pytest.fixture(scope="session")
def gcs_endpoint() -> str:
    """The real GCS server's endpoint URL (fake-gcs-server); STORAGE_EMULATOR_HOST is exported."""
    return _ensure("gcs", "FLOWSTORE_GCS_ENDPOINT")["FLOWSTORE_GCS_ENDPOINT"]


@pytest.fixture(scope="session")
def azure_connection_string() -> str:
    """The connection string of the real Azure Blob server (Azurite, devstoreaccount1)."""
    return _ensure("azure", "AZURE_STORAGE_CONNECTION_STRING")["AZURE_STORAGE_CONNECTION_STRING"]


@pytest.fixture(scope="session")
def git_server() -> dict[str, str]:
    """The real git server (git http-backend behind basic auth): url, root (where bare
    repositories it serves live), username, password."""
    env = _ensure("git", "FLOWSTORE_GIT_URL")
    return {"url": env["FLOWSTORE_GIT_URL"], "root": env["FLOWSTORE_GIT_ROOT"],
            "username": env["FLOWSTORE_GIT_USERNAME"], "password": env["FLOWSTORE_GIT_PASSWORD"]}


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """The Docker Engine API (podman system service) and the registry (htpasswd auth): DOCKER_HOST,
    registry (host:port), username, password, base_image (Debian + python3, made locally)."""
    env = _ensure("docker", "DOCKER_HOST")
    return {"docker_host": env["DOCKER_HOST"], "registry": env["FLOWSTORE_REGISTRY"],
            "username": env["FLOWSTORE_REGISTRY_USERNAME"], "password": env["FLOWSTORE_REGISTRY_PASSWORD"],
            "base_image": env["FLOWSTORE_BASE_IMAGE"]}


# What an RBAC denial (or kopf's fallback when one is met) looks like in the operator's log.
# (A 403 on its own: not the milliseconds of a timestamp like `16:09:16,403`, nor part of a name.)
DENIAL = re.compile(r"(?<![\w,.-])403(?![\w-])|[Ff]orbidden|Not enough permissions|[Pp]ermission denied")

# helm keeps its cache and config out of the developer's home.
HELM_HOMES = {"HELM_CACHE_HOME": "/tmp/flowstore-helm-cache", "HELM_CONFIG_HOME": "/tmp/flowstore-helm-config",
              "HELM_DATA_HOME": "/tmp/flowstore-helm-data"}


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary, built once from the Go module proxy (scripts/lib/install-helm.sh)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "install-helm.sh")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str) -> str:
    done = subprocess.run([helm, *args], capture_output=True, text=True, check=False, env={**os.environ, **HELM_HOMES})
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl against the local cluster; returns the completed process (text)."""
    done = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=os.environ)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


@pytest.fixture(scope="session")
def crds(kube_env: dict[str, str]) -> None:
    """The project's CRDs applied and established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/flowstorages.flowstore.dev", "crd/storedflows.flowstore.dev")


@pytest.fixture
def namespace(kube_env: dict[str, str]) -> Iterator[str]:
    """A fresh namespace per test (left to be removed: no namespace controller runs here,
    so it is not waited on)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the real S3 server."""
    import boto3

    name = f"flows-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
