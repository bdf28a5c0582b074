"""The in-cluster tier: the operator as users run it, a Pod from helm/flowstore-operator on the
local cloud's real node (`scripts/localcloud up node`), with the chart's ServiceAccount and RBAC,
in-cluster config, its liveness probe, a read-only root filesystem and leader election.

The image is built from the Dockerfile here (scripts/lib/operator-image.sh: the local Python
base, nothing pulled from outside) and pushed to the local registry, which wants credentials:
each release namespace gets an imagePullSecret. The API server listens on 127.0.0.1 only, so
the Pods run with the chart's local-testing values `hostNetwork` and `apiServer.host/port`.

The session's e2e operator (tests/e2e) serves every namespace: these tests pause it
(`own_operators_only`) so that only the in-cluster operator touches their objects.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.helm import DENIAL, HELM_HOMES, run_helm
from tests.helpers.kube import kubectl
from tests.helpers.localcloud import ROOT, ensure
from tests.helpers.net import free_port
from tests.helpers.operator import OperatorProcess

CHART = ROOT / "helm" / "flowstore-operator"
IMAGE_REPOSITORY = "flowstore/flowstore-operator"

_HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _in_cluster_operators_only(own_operators_only: None) -> None:
    """Only the in-cluster operator serves this tier's objects."""


@pytest.fixture(scope="session")
def node_env(kube_env: dict[str, str]) -> dict[str, str]:
    """The local cloud's node is up (and Ready): `scripts/localcloud up node`."""
    return ensure("node", "FLOWSTORE_NODE_NAME")


@pytest.fixture(scope="session")
def apiserver_port(kube_env: dict[str, str]) -> int:
    return int(kube_env["FLOWSTORE_KUBE_SERVER"].rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def operator_image(node_env: dict[str, str], docker_env: dict[str, str]) -> Callable[[str], str]:
    """Push the operator image (built once per session) as REGISTRY/flowstore/flowstore-operator:TAG;
    returns `tag -> repository` (the build and push go through scripts/lib/operator-image.sh)."""
    pushed: dict[str, str] = {}
    session = uuid.uuid4().hex[:6]

    def push(tag: str) -> str:
        tag = f"{tag}-{session}"
        if tag not in pushed:
            t0 = time.monotonic()
            # Built once per session; later tags push the same image.
            build = [] if not pushed else ["--no-build"]
            done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "operator-image.sh"), *build, tag],
                                  capture_output=True, text=True, timeout=1800, check=False)
            assert done.returncode == 0, f"operator-image.sh failed:\n{done.stderr[-4000:]}"
            pushed[tag] = done.stdout.strip().splitlines()[-1]
            print(f"\noperator image {pushed[tag]}: built and pushed in {time.monotonic() - t0:.0f}s")
        return tag

    return push


def pull_secret(namespace: str, docker_env: dict[str, str], name: str = "registry") -> str:
    """A kubernetes.io/dockerconfigjson Secret for the local registry."""
    kubectl("create", "secret", "docker-registry", name, "-n", namespace,
            f"--docker-server={docker_env['registry']}", f"--docker-username={docker_env['username']}",
            f"--docker-password={docker_env['password']}")
    return name


@pytest.fixture
def new_namespace(kube_env: dict[str, str]) -> Iterator[Callable[[], str]]:
    """Namespaces for the test's flows. Afterwards their flowstore objects go, finalizers
    released (the in-cluster operator is gone by then), so no later operator serves them."""
    made: list[str] = []

    def make() -> str:
        name = f"c-{uuid.uuid4().hex[:10]}"
        kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        objects = kubectl("get", "storedflows,flowstorages", "-n", name, "-o", "name", check=False).stdout.split()
        for obj in objects:
            kubectl("patch", obj, "-n", name, "--type=merge", "-p", '{"metadata": {"finalizers": null}}',
                    check=False)
        if objects:
            kubectl("delete", *objects, "-n", name, "--wait=false", check=False)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Release:
    """One `helm install` of the chart on the node; `helm_run` runs helm with the test's homes."""

    name: str
    namespace: str
    helm_run: Callable[..., str]
    values: list[str] = field(default_factory=list)

    @property
    def deployment(self) -> str:
        return f"{self.name}-flowstore-operator"

    def pods(self) -> list[dict[str, Any]]:
        out = kubectl("get", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name}",
                      "-o", "json").stdout
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def wait_rolled_out(self, replicas: int = 1, timeout: float = 300) -> list[dict[str, Any]]:
        """`replicas` Pods of the current template Ready (and no other Pod left)."""
        deadline = time.monotonic() + timeout
        pods: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            done = kubectl("rollout", "status", f"deployment/{self.deployment}", "-n", self.namespace,
                           "--timeout=5s", check=False)
            pods = self.pods()
            if done.returncode == 0 and len(pods) == replicas and all(_ready(p) for p in pods):
                return pods
            time.sleep(1)
        raise AssertionError(f"{self.deployment} not rolled out in {timeout:.0f}s:\n{self.describe()}")

    def logs(self, pod: str | None = None) -> str:
        names = [pod] if pod else [p["metadata"]["name"] for p in self.pods()]
        return "\n".join(kubectl("logs", "-n", self.namespace, n, "--all-containers", check=False).stdout
                         for n in names)

    def describe(self) -> str:
        pods = kubectl("get", "pods", "-n", self.namespace, "-o", "wide", check=False).stdout
        events = kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False).stdout
        return f"{pods}\n{events[-4000:]}\n{self.logs()[-4000:]}"

    def assert_no_denials(self, logs: str | None = None) -> None:
        logs = self.logs() if logs is None else logs
        denied = [line for line in logs.splitlines() if DENIAL.search(line)]
        assert not denied, "the operator met RBAC denials:\n" + "\n".join(denied[:20])


def kill_pod(namespace: str, pod: str, timeout: float = 60) -> None:
    """The Pod's processes die at once, as on a node crash: SIGKILL to its containers' tasks on the
    node (no SIGTERM, so no graceful release of a Lease), then a forced delete, so its Deployment
    replaces it rather than the kubelet restarting it. A forced delete alone is not a kill: the
    kubelet stops the containers some time later, and a leader goes on working meanwhile."""
    ctr = [os.environ["FLOWSTORE_NODE_CTR"], "--address", os.environ["FLOWSTORE_NODE_CONTAINERD"],
           "--namespace", "k8s.io"]
    statuses = json.loads(kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)["status"]
    ids = [c["containerID"].partition("://")[2] for c in statuses.get("containerStatuses", []) if c.get("containerID")]
    assert ids, f"{pod} has no container to kill: {statuses}"
    for task in ids:
        subprocess.run([*ctr, "tasks", "kill", "--all", "--signal", "SIGKILL", task], check=True,
                       capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + timeout
    while any(_task_running(ctr, task) for task in ids):
        assert time.monotonic() < deadline, f"{pod}'s containers {ids} still run {timeout:.0f}s after SIGKILL"
        time.sleep(0.1)
    kubectl("delete", "pod", pod, "-n", namespace, "--force", "--grace-period=0")


def _task_running(ctr: list[str], task: str) -> bool:
    rows = subprocess.run([*ctr, "tasks", "ls"], check=True, capture_output=True, text=True, timeout=30).stdout
    return any(row.split()[:1] == [task] and "RUNNING" in row.split() for row in rows.splitlines())


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


@pytest.fixture
def install(helm: str, node_env: dict[str, str], docker_env: dict[str, str], crds: None, apiserver_port: int,
            operator_image: Callable[[str], str]) -> Iterator[Callable[..., Release]]:
    """`install(*values, replicas=1, watch=())` installs the chart on the node in a new release
    namespace, as a user would (plus the local-testing values), waits until its Pods are Ready
    and returns the Release. Afterwards: uninstalled, its Pods gone, cluster-wide RBAC removed."""
    made: list[Release] = []

    def do(*values: str, replicas: int = 1, watch: tuple[str, ...] = (), tag: str = "a",
           timeout: float = 300, pods: int | None = None) -> Release:
        name = f"fs{uuid.uuid4().hex[:6]}"
        namespace = f"{name}-system"
        kubectl("create", "namespace", namespace)
        secret = pull_secret(namespace, docker_env)
        options = [
            "--set", f"image.repository={docker_env['registry']}/{IMAGE_REPOSITORY}",
            "--set", f"image.tag={operator_image(tag)}",
            "--set", f"imagePullSecrets[0].name={secret}",
            "--set", "hostNetwork=true",
            "--set", "apiServer.host=127.0.0.1",
            "--set", f"apiServer.port={apiserver_port}",
            # hostNetwork: the node's ports, so free ones (another local cloud may run beside)
            "--set", f"probes.port={free_port()}",
            "--set", f"metrics.port={free_port()}",
            # a faster liveness probe than production's, so a test sees it pass
            "--set", "probes.liveness.initialDelaySeconds=2", "--set", "probes.liveness.periodSeconds=5",
            "--set", "probes.readiness.periodSeconds=1",
            "--set", f"replicas={replicas}",
            "--set", "log.format=text",
            # builder Jobs in the test images of the local registry (the chart's default: none)
            "--set", "builds.enabled=true",
            "--set", f"builds.allowedImages[0]={docker_env['registry']}/*",
            *(["--set", "watchNamespaces={" + ",".join(watch) + "}"] if watch else []),
            *values,
        ]
        release = Release(name, namespace, lambda *a: run_helm(helm, *a), options)
        made.append(release)
        t0 = time.monotonic()
        release.helm_run("install", name, str(CHART), "-n", namespace, *options)
        release.wait_rolled_out(pods or replicas, timeout)  # pods: all Deployments' (shards)
        print(f"\nhelm install {name} -> {pods or replicas} operator Pod(s) Ready in {time.monotonic() - t0:.1f}s")
        return release

    yield do
    for release in made:
        subprocess.run([helm, "uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "120s"],
                       capture_output=True, check=False, env={**os.environ, **HELM_HOMES})
        # No namespace controller runs on the local node (scripts/localcloud): Pods go explicitly.
        kubectl("delete", "pods", "--all", "-n", release.namespace, "--grace-period=5", "--wait=true",
                "--timeout=60s", check=False)
        kubectl("delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release.name}",
                "--ignore-not-found", check=False)
        kubectl("delete", "namespace", release.namespace, "--wait=false", check=False)


# ---------------------------------------------------------------------- builder Jobs (spec.build)
#: the local node's pause image (imported by `localcloud up node`): no python3 in it
NO_PYTHON_IMAGE = "localhost/flowstore-pause:1"


@pytest.fixture(scope="session")
def runtime_image(node_env: dict[str, str], docker_env: dict[str, str]) -> str:
    """The example Prefect 1 runtime image (examples/runtime/prefect1: Python 3.11, prefect 1.4.1,
    cloudpickle) built from the local Python base and pushed to the local registry."""
    t0 = time.monotonic()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "runtime-image.sh")], capture_output=True,
                          text=True, timeout=1800, check=False)
    assert done.returncode == 0, f"runtime-image.sh failed:\n{done.stderr[-4000:]}"
    print(f"\nruntime image ready in {time.monotonic() - t0:.0f}s")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def plain_python_image(node_env: dict[str, str], docker_env: dict[str, str]) -> str:
    """The local Debian + Python base pushed as it is: python3 but no cloudpickle."""
    ref = f"{docker_env['registry']}/flowstore/python-plain:3.11"
    done = subprocess.run(["podman", "push", "--quiet", "--tls-verify=false", "--creds",
                           f"{docker_env['username']}:{docker_env['password']}", docker_env["base_image"],
                           f"docker://{ref}"], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return ref


@pytest.fixture
def ns(new_namespace: Callable[[], str], docker_env: dict[str, str], crds: None) -> Iterator[str]:
    """A namespace with the registry's dockerconfigjson Secret, opted in for FlowStorages (the
    oci flows' tests; a module may define its own). Its Jobs and Pods are gone afterwards."""
    name = new_namespace()
    pull_secret(name, docker_env)
    kubectl("label", "secret", "registry", "-n", name, "flowstore.dev/allow=true")
    yield name
    kubectl("delete", "jobs", "--all", "-n", name, "--cascade=foreground", "--wait=false", check=False)
    kubectl("delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=true", "--timeout=60s",
            check=False)


@pytest.fixture
def operator(ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A local operator serving `ns` only."""
    op = OperatorProcess(tmp_path / "op", dict(os.environ))
    op.log_dir.mkdir()
    op.start("-n", ns)
    yield op
    op.stop()
