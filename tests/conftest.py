"""Fixtures for every tier, and the tiers themselves: a test's directory says what it needs.

| directory          | marker      | needs                                                        |
|--------------------|-------------|--------------------------------------------------------------|
| tests/unit/        | unit        | nothing: no server, no network (subprocesses are fine)       |
| tests/backends/    | backend     | real local backend servers (moto, fake-gcs, Azurite, ...)    |
| tests/e2e/         | e2e         | the real operator against the real kube-apiserver            |
| tests/packaging/   | packaging   | what ships: CRDs, chart, image, health checks, quality gates |
| tests/cluster/     | cluster     | the real node: the operator as a Pod, builder Jobs           |
| tests/docs/        | docs        | every command of README.md and docs/ as written (a demo)     |

Markers are assigned here from the directory (`pytest -m unit`, `make test-unit`). Server
fixtures start the local cloud's services on first use (`scripts/localcloud`); a unit test
asking for one is an error at collection. Helpers live in tests/helpers/, fakes in tests/fakes/.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import operator as operator_helpers
from tests.helpers.helm import install_helm
from tests.helpers.kube import kubectl
from tests.helpers.localcloud import ROOT, ensure
from tests.helpers.operator import OperatorProcess

TESTS = Path(__file__).resolve().parent
TIERS = {"unit": "unit", "backends": "backend", "e2e": "e2e", "packaging": "packaging", "cluster": "cluster",
         "docs": "docs"}
#: fixtures that start servers: never in the unit tier
SERVER_FIXTURES = {"kube_env", "s3_endpoint", "gcs_endpoint", "azure_connection_string", "git_server", "docker_env",
                   "crds", "namespace", "s3_bucket", "operator", "own_operators_only", "node_env"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        tier = TIERS.get(parts[0]) if len(parts) > 1 else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier directory ({', '.join(TIERS)})")
        item.add_marker(tier)
        if tier == "unit" and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} is a unit test but uses a server fixture "
                                    f"({', '.join(sorted(SERVER_FIXTURES & set(item.fixturenames)))}); "  # type: ignore[attr-defined]
                                    "move it to the tier that provides it")


# ---------------------------------------------------------------------- servers
@pytest.fixture(scope="session")
def kube_env() -> dict[str, str]:
    """KUBECONFIG for the real kube-apiserver (admin)."""
    return ensure("kube", "KUBECONFIG")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """The real S3 server's endpoint URL (moto server), with AWS_* test credentials exported."""
    return ensure("s3", "FLOWSTORE_S3_ENDPOINT")["FLOWSTORE_S3_ENDPOINT"]


@pytest.fixture(scope="session")
def gcs_endpoint() -> str:
    """The real GCS server's endpoint URL (fake-gcs-server); STORAGE_EMULATOR_HOST is exported."""
    return ensure("gcs", "FLOWSTORE_GCS_ENDPOINT")["FLOWSTORE_GCS_ENDPOINT"]


@pytest.fixture(scope="session")
def azure_connection_string() -> str:
    """The connection string of the real Azure Blob server (Azurite, devstoreaccount1)."""
    return ensure("azure", "AZURE_STORAGE_CONNECTION_STRING")["AZURE_STORAGE_CONNECTION_STRING"]


@pytest.fixture(scope="session")
def git_server() -> dict[str, str]:
    """The real git server (git http-backend behind basic auth): url, root (where bare
    repositories it serves live), username, password."""
    env = ensure("git", "FLOWSTORE_GIT_URL")
    return {"url": env["FLOWSTORE_GIT_URL"], "root": env["FLOWSTORE_GIT_ROOT"],
            "username": env["FLOWSTORE_GIT_USERNAME"], "password": env["FLOWSTORE_GIT_PASSWORD"]}


@pytest.fixture(scope="session")
def docker_env() -> Iterator[dict[str, str]]:
    """The Docker Engine API (podman system service) and the registry (htpasswd auth): DOCKER_HOST,
    registry (host:port), username, password, base_image (Debian + python3, made locally).

    The images this session tagged for its registry are removed from the engine's store at the
    end (the registry keeps what was pushed until the local cloud goes down), so runs do not pile
    up images on the machine's disk."""
    env = ensure("docker", "DOCKER_HOST")
    yield {"docker_host": env["DOCKER_HOST"], "registry": env["FLOWSTORE_REGISTRY"],
           "username": env["FLOWSTORE_REGISTRY_USERNAME"], "password": env["FLOWSTORE_REGISTRY_PASSWORD"],
           "base_image": env["FLOWSTORE_BASE_IMAGE"]}
    _remove_images_tagged_for(env["DOCKER_HOST"], env["FLOWSTORE_REGISTRY"] + "/")


def _remove_images_tagged_for(docker_host: str, prefix: str) -> None:
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=300)
    try:
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(prefix):
                    try:
                        client.images.remove(tag)
                    except docker.errors.APIError:
                        pass  # still used by a container: the local cloud's down removes that
        try:
            client.images.prune(filters={"dangling": True})
        except docker.errors.APIError:
            pass  # podman refuses the whole prune while a container uses one of them: down removes those
    finally:
        client.close()


@pytest.fixture(scope="session", autouse=True)
def _local_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The operators' Local root (tests/helpers/operator.py) in the session's temp directory,
    which pytest removes after a few sessions."""
    operator_helpers.LOCAL_ROOT = tmp_path_factory.getbasetemp() / "local-root"


@pytest.fixture(autouse=True)
def _own_agent_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's agent (flowstore.client in this process, the flowstore CLI it starts) has an
    agent cache of its own, empty, as a new agent would: a test that tampers with a bucket sees
    the download refused, not another test's verified copy served from a shared cache."""
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path_factory.mktemp("agent-cache")))


@pytest.fixture(autouse=True)
def _forget_loaded_flows() -> Iterator[None]:
    """A flow loaded in this process (client.load_flow of a bundle) puts its directory on
    sys.path and its modules in sys.modules, as it should in an agent; the next test starts
    without them, as a new agent would."""
    path = list(sys.path)
    yield
    added = [p for p in sys.path if p not in path]
    sys.path[:] = path
    if added:
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if any(origin.startswith(p.rstrip("/") + "/") for p in added):
                del sys.modules[name]


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary (tests/helpers/helm.py)."""
    return install_helm()


@pytest.fixture(scope="session")
def crds(kube_env: dict[str, str]) -> None:
    """The project's CRDs applied and established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/flowstorages.flowstore.dev", "crd/storedflows.flowstore.dev")


@pytest.fixture
def namespace(kube_env: dict[str, str]) -> Iterator[str]:
    """A fresh namespace per test (left to be removed: it is not waited on)."""
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


# ---------------------------------------------------------------------- the operator
_SESSION_OPERATORS: list[OperatorProcess] = []


@pytest.fixture(scope="session")
def operator(crds: None, kube_env: dict[str, str], s3_endpoint: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The session's cluster-wide `flowstore operator` (a real process)."""
    op = OperatorProcess(tmp_path_factory.mktemp("operator"), dict(os.environ))
    op.start()
    _SESSION_OPERATORS.append(op)
    yield op
    _SESSION_OPERATORS.remove(op)
    op.stop()


@pytest.fixture
def own_operators_only() -> Iterator[None]:
    """For tests that run their own operators (HA, faults, the image, the chart): the session's
    cluster-wide operator is paused meanwhile, or it would serve their objects too and every
    count of uploads would double."""
    paused = [op for op in _SESSION_OPERATORS if op.alive()]
    for op in paused:
        op.stop()
    yield
    for op in paused:
        op.start()
