"""node: containerd, kubelet, kube-scheduler and kube-controller-manager beside the local
kube-apiserver (recipe: REAL-NODE.md), so Pods, Jobs and Deployments run. The node's files and
kernel state are node_files.py's; this module builds and runs its servers.

containerd 2 (ctr and its runc shim with it) and runc are built from the Go module proxy into the
cache, keyed by version, like the kube binaries: a node as current as its API server, with image
volumes (`volumes[].image`, containerd >= 2.1). The CNI plugins are Debian's."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import kube, lifecycle, procs
from . import state as st
from .cloud import Cloud, LocalCloudError, log
from .install import apt_install, go_install
from .model import Argv, Hook, Server, Service
from .node_files import CNI_BIN_DIR, NODE_NAME, Node, Runtime, stop_system_containerd
from .state import State

READY_TIMEOUT = 90.0
CONTAINERD_VERSION = "v2.4.2"
RUNC_VERSION = "v1.5.3"
CONTAINERD_MODULE = "github.com/containerd/containerd/v2"


def runtime(cloud: Cloud) -> Runtime:
    """Where the runtime's binaries are (or will be, once built)."""
    containerd = cloud.cache / "containerd" / CONTAINERD_VERSION
    return Runtime(containerd=containerd / "containerd", ctr=containerd / "ctr",
                   shim=containerd / "containerd-shim-runc-v2", runc=cloud.cache / "runc" / RUNC_VERSION / "runc")


def files(cloud: Cloud) -> Node:
    return Node(cloud.state_dir, cloud.cache, runtime(cloud))


def _build_runtime(cloud: Cloud) -> None:
    """containerd, ctr and the runc shim (pure Go), and runc (cgo, with seccomp: Pods and builder
    Jobs ask for the RuntimeDefault profile), each built once per version into the cache."""
    want = runtime(cloud)
    go_install(tuple(f"{CONTAINERD_MODULE}/cmd/{name}" for name in ("containerd", "ctr", "containerd-shim-runc-v2")),
               CONTAINERD_VERSION, want.containerd.parent, ("containerd", "ctr", "containerd-shim-runc-v2"),
               go_cache=cloud.go_cache, cold="about 3 minutes", env={"CGO_ENABLED": "0"},
               ldflags=f"-s -w -X {CONTAINERD_MODULE}/version.Version={CONTAINERD_VERSION.removeprefix('v')}")
    go_install(("github.com/opencontainers/runc",), RUNC_VERSION, want.runc.parent, ("runc",),
               go_cache=cloud.go_cache, cold="about a minute", tags="seccomp", env={"CGO_ENABLED": "1"},
               ldflags=f"-s -w -X main.version={RUNC_VERSION.removeprefix('v')}")


def _prerequisites(cloud: Cloud) -> None:
    """Debian's CNI plugins, gcc for the pause binary and runc (libseccomp for its seccomp
    support), the runtime and the kube binaries. A system containerd service (Debian's package
    enables one) is stopped: the node runs its own instance."""
    missing = [] if Path(f"{CNI_BIN_DIR}/bridge").exists() else ["containernetworking-plugins"]
    if not shutil.which("gcc") or not list(Path("/usr/lib").glob("*/libc.a")):  # gcc -static needs libc.a
        missing += ["gcc", "libc6-dev"]
    if not shutil.which("pkg-config"):
        missing += ["pkg-config"]
    if not list(Path("/usr/lib").glob("*/pkgconfig/libseccomp.pc")):
        missing += ["libseccomp-dev"]
    if missing:
        apt_install(*missing)
    stop_system_containerd()
    _build_runtime(cloud)
    kube.binaries(cloud, "kubelet", "kube-scheduler", "kube-controller-manager")


# ------------------------------------------------------------------ containerd


def _containerd_argv(cloud: Cloud, state: State) -> list[str]:
    node = files(cloud)
    node.check_paths()
    _prerequisites(cloud)
    node.write_files(st.port(state, "registry"))
    return [str(node.runtime.containerd), "--config", str(node.containerd_config(st.port(state, "containerd") or 0))]


def _containerd_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, _ = procs.probe(f"http://127.0.0.1:{srv['port']}/v1/metrics")
    return code == 200 and files(cloud).socket.exists()


def _import_pause_image(cloud: Cloud, state: State) -> None:
    files(cloud).import_pause_image()


# ------------------------------------------------------------------ kubelet, scheduler, controller-manager


def _record_apiserver(name: str) -> Hook:
    def prepare(cloud: Cloud, state: State) -> None:
        state["servers"][name]["apiserver_port"] = st.port(state, "kube-apiserver")
    return prepare


def _wired(name: str) -> Callable[[State], bool]:
    """Still pointed at the current kube-apiserver port (they read the kubeconfig once, at start)."""
    def wired(state: State) -> bool:
        return bool(st.record(state, name).get("apiserver_port") == st.port(state, "kube-apiserver"))
    return wired


def _healthz(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, body = procs.probe(f"https://127.0.0.1:{srv['port']}/healthz")
    return code == 200 and body.strip() == "ok"


def _kubelet_argv(cloud: Cloud, state: State) -> list[str]:
    node = files(cloud)
    (kubelet,) = kube.binaries(cloud, "kubelet")
    return [str(kubelet), f"--config={node.kubelet_config(st.port(state, 'kubelet') or 0)}",
            f"--kubeconfig={cloud.kubeconfig}", f"--root-dir={node.kubelet_root}",
            f"--cert-dir={node.kubelet_root / 'pki'}", f"--hostname-override={NODE_NAME}", "--v=1"]


def _common(cloud: Cloud, state: State, name: str) -> list[str]:
    certs = files(cloud).dir / f"{name}-certs"
    return [f"--kubeconfig={cloud.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={st.port(state, name)}", f"--cert-dir={certs}", "--v=1"]


def _scheduler_argv(cloud: Cloud, state: State) -> list[str]:
    (scheduler,) = kube.binaries(cloud, "kube-scheduler")
    return [str(scheduler), *_common(cloud, state, "kube-scheduler")]


def _controller_manager_argv(cloud: Cloud, state: State) -> list[str]:
    (manager,) = kube.binaries(cloud, "kube-controller-manager")
    return [
        str(manager), *_common(cloud, state, "kube-controller-manager"),
        # What Pods, Deployments and Jobs need on one node, and no more (each controller costs
        # CPU on a 2-core machine): ServiceAccounts and their tokens' CA, garbage collection,
        # workloads, the node's taints, Pod cleanup, and claims bound to volumes (the cluster
        # demo's hostPath volume). No namespace controller: a deleted
        # namespace stays Terminating, as it did before the node existed (tests delete theirs
        # without waiting, and nothing should start cleaning up behind the suites' backs).
        "--controllers=" + ",".join(f"{c}-controller" for c in (
            "serviceaccount", "serviceaccount-token", "root-ca-certificate-publisher",
            "garbage-collector", "deployment", "replicaset", "job", "ttl-after-finished", "node-lifecycle",
            "pod-garbage-collector", "disruption", "persistentvolume-binder")),
        f"--service-account-private-key-file={cloud.state_dir / 'sa.key'}",
        f"--root-ca-file={cloud.state_dir / 'certs' / 'apiserver.crt'}",
        "--use-service-account-credentials=false",
        "--concurrent-namespace-syncs=2",
    ]


def _kube_server(name: str, argv: Argv) -> Server:
    return Server(name, exe_hint=name, argv=argv, ready=_healthz, prepare=_record_apiserver(name),
                  wired=_wired(name))


# ------------------------------------------------------------------ the service


def ready(cloud: Cloud) -> bool:
    """The node is Ready and schedulable (no NoSchedule/NoExecute taint)."""
    obj = kube.get(cloud, f"/api/v1/nodes/{NODE_NAME}") or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    taints = (obj.get("spec") or {}).get("taints") or []
    return (any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            and not [t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute")])


def _wait_ready(cloud: Cloud, state: State) -> None:
    """The node is Ready and schedulable, and the default namespace has its ServiceAccount."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < READY_TIMEOUT:
        if ready(cloud) and kube.get(cloud, "/api/v1/namespaces/default/serviceaccounts/default"):
            log(f"node {NODE_NAME} Ready ({time.monotonic() - t0:.1f}s)")
            return
        time.sleep(0.5)
    raise LocalCloudError(f"node {NODE_NAME} not Ready after {READY_TIMEOUT:.0f}s; kubelet log tail:\n"
                          f"{procs.log_tail(cloud, 'kubelet')}")


def _down(cloud: Cloud, state: State) -> None:
    """Kubelet and controllers first (nothing restarts a container), then every container and
    its shim, then containerd; then what the kernel still holds: mounts under the node's
    directory (rootfs, volumes, network namespaces) and the bridge."""
    node = files(cloud)
    for server in (KUBELET, SCHEDULER, CONTROLLER_MANAGER):
        lifecycle.stop(cloud, server, state)
    node.stop_containers(containerd_running=lifecycle.running(CONTAINERD, state))
    lifecycle.stop(cloud, CONTAINERD, state)
    node.stop_containers(containerd_running=False)  # a shim containerd did not get to
    node.unmount_all()
    node.remove_network()
    left = node.leftovers()
    shutil.rmtree(node.dir, ignore_errors=True)
    if any(left.values()):
        raise LocalCloudError(f"node: left behind after down: {left}")


def _exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    """The node's name, and its containerd's `ctr` and socket: a test that must kill a Pod's process
    at once (no graceful stop) kills its container task there."""
    node = files(cloud)
    return [("FLOWSTORE_NODE_NAME", NODE_NAME), ("FLOWSTORE_NODE_CTR", str(node.runtime.ctr)),
            ("FLOWSTORE_NODE_CONTAINERD", str(node.socket))]


def _check_paths(cloud: Cloud) -> None:
    files(cloud).check_paths()


CONTAINERD = Server("containerd", exe_hint="containerd", argv=_containerd_argv, ready=_containerd_ready,
                    after_start=_import_pause_image)
KUBELET = _kube_server("kubelet", _kubelet_argv)
SCHEDULER = _kube_server("kube-scheduler", _scheduler_argv)
CONTROLLER_MANAGER = _kube_server("kube-controller-manager", _controller_manager_argv)
SERVICE = Service(
    "node", "a real node beside the API server: Pods, Jobs and Deployments run",
    (CONTAINERD, KUBELET, SCHEDULER, CONTROLLER_MANAGER), _exports,
    needs=("kube",), after_up=_wait_ready, stop=_down, check=_check_paths,
)
