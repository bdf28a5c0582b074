"""The local cloud's node itself (scripts/localcloud up node; scripts/lib/localcloud/node.py): a real
kubelet + containerd + kube-scheduler + kube-controller-manager beside the API server.

Pods run in their own network namespace (a bridge with no address and no route: they reach
nothing but themselves) or in the node's (hostNetwork, reaching the API server on 127.0.0.1);
`kubectl logs` works through the kubelet; images come from the local registry, which wants
credentials (imagePullSecrets); and `localcloud down` leaves no process, shim, mount or bridge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloud import Cloud
from localcloud.node import CONTAINERD_VERSION
from localcloud.node_files import Node
from localcloud.pause import PAUSE_IMAGE
from tests.cluster.conftest import IMAGE_REPOSITORY, pull_secret
from tests.helpers.kube import kubectl
from tests.helpers.localcloud import LOCALCLOUD, ROOT


@pytest.fixture
def pods(node_env: dict[str, str], namespace: str) -> Iterator[str]:
    """The test's namespace; its Pods are deleted afterwards (no namespace controller runs)."""
    yield namespace
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=true",
            "--timeout=60s", check=False)


def pod_manifest(namespace: str, name: str, image: str, command: list[str], **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": image, "command": command,
                                 "imagePullPolicy": "Always"}], **spec},
    })


def wait_phase(namespace: str, name: str, phases: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = json.loads(kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
        if pod["status"].get("phase") in phases:
            return pod
        time.sleep(0.5)
    events = kubectl("get", "events", "-n", namespace, check=False).stdout
    raise AssertionError(f"pod {name} not {phases} in {timeout}s: {json.dumps(pod.get('status'))}\n{events}")


@pytest.fixture(scope="module")
def image(operator_image: Callable[[str], str], docker_env: dict[str, str]) -> str:
    """An image in the local registry (the operator's: it has Python for the probes)."""
    return f"{docker_env['registry']}/{IMAGE_REPOSITORY}:{operator_image('a')}"


PROBE = """
import json, socket
def connect(port):
    s = socket.socket(); s.settimeout(3)
    try:
        return s.connect_ex(("127.0.0.1", port))
    finally:
        s.close()
routes = [line.split()[:2] for line in open("/proc/net/route").read().splitlines()[1:]]
links = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
print(json.dumps({"routes": routes, "links": sorted(links), "apiserver": connect(%d)}))
"""


def test_node_is_ready(node_env: dict[str, str]) -> None:
    node = json.loads(kubectl("get", "node", node_env["FLOWSTORE_NODE_NAME"], "-o", "json").stdout)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    # the kubelet at the API server's version (no skew), on the containerd the local cloud built
    assert node["status"]["nodeInfo"]["kubeletVersion"] == Cloud.from_environ().kube_version
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == f"containerd://{CONTAINERD_VERSION.lstrip('v')}"
    # Its only address is the loopback: the API server reaches the kubelet there, and nothing
    # (probes, hostNetwork Pods' IPs) ever points at another interface of the machine.
    assert {a["address"] for a in node["status"]["addresses"]} == {"127.0.0.1"}
    assert not [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
    status = subprocess.run([sys.executable, str(LOCALCLOUD), "status"], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout
    for server in ("containerd", "kubelet", "kube-scheduler", "kube-controller-manager"):
        assert any(line.split()[0] == server and line.endswith(" up") for line in status.splitlines()), status


def test_pod_has_its_own_network_and_hostnetwork_pod_shares_the_nodes(
        pods: str, image: str, docker_env: dict[str, str], apiserver_port: int) -> None:
    secret = pull_secret(pods, docker_env)
    probe = ["python3", "-c", PROBE % apiserver_port]
    kubectl("apply", "-f", "-", input=pod_manifest(pods, "isolated", image, probe,
                                                     imagePullSecrets=[{"name": secret}]))
    kubectl("apply", "-f", "-", input=pod_manifest(pods, "hostnet", image, probe, hostNetwork=True,
                                                     imagePullSecrets=[{"name": secret}]))
    isolated = wait_phase(pods, "isolated", {"Succeeded", "Failed"})
    hostnet = wait_phase(pods, "hostnet", {"Succeeded", "Failed"})
    assert isolated["status"]["phase"] == hostnet["status"]["phase"] == "Succeeded"

    # kubectl logs: the API server streams them from the kubelet.
    own = json.loads(kubectl("logs", "isolated", "-n", pods).stdout)
    shared = json.loads(kubectl("logs", "hostnet", "-n", pods).stdout)
    # Its own namespace: loopback + one interface on the node's bridge, one route (its /24, no
    # default gateway), and the API server on 127.0.0.1 is not there (connection refused).
    assert own["links"] == ["eth0", "lo"], own
    assert [r[0] for r in own["routes"]] == ["eth0"] and own["routes"][0][1] != "00000000", own
    assert own["apiserver"] == 111, own   # ECONNREFUSED
    assert isolated["status"]["podIP"].startswith("10.244."), isolated["status"]
    # hostNetwork: the node's namespace, where the API server answers on 127.0.0.1.
    assert shared["apiserver"] == 0, shared
    assert hostnet["status"]["podIP"] == "127.0.0.1"


def test_images_are_pulled_from_the_local_registry_with_image_pull_secrets(
        pods: str, image: str, docker_env: dict[str, str]) -> None:
    """imagePullPolicy Always: every start asks the registry, so the credentials matter even
    when the node already has the image."""
    secret = pull_secret(pods, docker_env)
    hello = ["python3", "-c", "print('pulled and ran')"]
    kubectl("apply", "-f", "-", input=pod_manifest(pods, "with-secret", image, hello,
                                                     imagePullSecrets=[{"name": secret}]))
    kubectl("apply", "-f", "-", input=pod_manifest(pods, "without-secret", image, hello))
    assert wait_phase(pods, "with-secret", {"Succeeded", "Failed"})["status"]["phase"] == "Succeeded"
    assert kubectl("logs", "with-secret", "-n", pods).stdout.strip() == "pulled and ran"

    deadline = time.monotonic() + 120
    waiting: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = json.loads(kubectl("get", "pod", "without-secret", "-n", pods, "-o", "json").stdout)
        statuses = pod["status"].get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") and waiting.get("message"):
            break
        assert pod["status"].get("phase") == "Pending", pod["status"]
        time.sleep(0.5)
    assert waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff"), waiting
    events = kubectl("get", "events", "-n", pods, "--field-selector", "involvedObject.name=without-secret",
                     "-o", "json").stdout
    messages = " ".join(e.get("message", "") for e in json.loads(events)["items"]) + waiting.get("message", "")
    assert "401 Unauthorized" in messages or "authorization failed" in messages, messages


def _leftovers(state_dir: Path, bridge: str) -> dict[str, list[str]]:
    """Processes, shims and mounts that name the state dir, and the bridge, on this machine."""
    procs = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(state_dir) in cmdline:
                procs.append(f"{p.name}: {cmdline[:200]}")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(state_dir) in line.split()[4]]
    return {"processes": procs, "mounts": mounts,
            "bridge": [bridge] if Path(f"/sys/class/net/{bridge}").exists() else []}


def test_down_leaves_nothing_behind(node_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second local cloud (its own state dir) beside the session's: its node runs a Pod (a
    shim, container processes, rootfs/volume/netns mounts, a veth on its own bridge); after
    `down` none of it is left, and the session's node never noticed."""
    state_dir = tmp_path_factory.mktemp("cloud")
    env = {**os.environ, "FLOWSTORE_LOCALCLOUD_DIR": str(state_dir)}

    def localcloud(*args: str) -> str:
        done = subprocess.run([sys.executable, str(LOCALCLOUD), *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600, check=False)
        assert done.returncode == 0, f"localcloud {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout

    t0 = time.monotonic()
    localcloud("up", "node")
    print(f"\nsecond local cloud with a node up in {time.monotonic() - t0:.1f}s")
    try:
        exports = dict(line[len("export "):].split("=", 1) for line in localcloud("env").splitlines())
        kubeconfig = exports["KUBECONFIG"]
        mine = Node(state_dir.resolve(), Path.home() / ".cache" / "flowstore")
        theirs = Node(Path(os.environ.get("FLOWSTORE_LOCALCLOUD_DIR") or ROOT / ".localcloud").resolve(),
                      Path.home() / ".cache" / "flowstore")
        assert mine.bridge != theirs.bridge and mine.subnet() != theirs.subnet()

        def k(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                                  check=False, **kw)

        # The pause image is on every node already (the Pod sandbox's), so nothing is pulled.
        pod = json.loads(pod_manifest("default", "sleeper", PAUSE_IMAGE, ["/pause"]))
        pod["spec"]["containers"][0]["imagePullPolicy"] = "Never"
        pod["spec"]["automountServiceAccountToken"] = True   # a projected volume: a tmpfs mount
        assert k("apply", "-f", "-", input=json.dumps(pod)).returncode == 0
        assert k("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=120s").returncode == 0, \
            k("describe", "pod", "sleeper").stdout
        running = _leftovers(state_dir, mine.bridge)
        assert running["mounts"] and running["bridge"] and len(running["processes"]) >= 4, running
        assert mine.shims(), "the Pod runs under a containerd shim of this node"
    finally:
        localcloud("down")
    assert _leftovers(state_dir, mine.bridge) == {"processes": [], "mounts": [], "bridge": []}
    assert not mine.shims()
    assert not state_dir.exists() or not any(state_dir.iterdir())
    # The session's node is untouched.
    ready = kubectl("get", "node", node_env["FLOWSTORE_NODE_NAME"], "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}").stdout
    assert ready == "True"


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    """A state dir whose containerd socket path cannot fit a UNIX socket address, and an unknown
    binary for build-kube.sh: each refused with a message naming the problem, nothing started."""
    long_dir = tmp_path / ("d" * 120)
    done = subprocess.run([sys.executable, str(LOCALCLOUD), "up", "node"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "FLOWSTORE_LOCALCLOUD_DIR": str(long_dir)}, check=False)
    assert done.returncode == 1
    assert "containerd socket path" in done.stderr and "shorter FLOWSTORE_LOCALCLOUD_DIR" in done.stderr
    assert not long_dir.exists()
    done = subprocess.run(["bash", str(ROOT / "scripts" / "lib" / "build-kube.sh"), str(tmp_path / "bin"),
                           "kube-proxy"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "unknown binary 'kube-proxy'" in done.stderr
    assert not (tmp_path / "bin").exists()
