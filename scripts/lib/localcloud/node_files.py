"""The node's own files and kernel state: containerd's config, the CNI network, the kubelet's
config, the registry's hosts.toml, and their teardown (shims, mounts, the bridge). node.py runs
the servers; this module never starts one.

Everything the node makes is its own and named after the state directory, so two local clouds
on one machine (two worktrees, a test's private cloud) never share a file, socket, port, bridge
or CNI network: containerd's root/state/socket and the kubelet's root dir live under
STATE/node/, the CNI bridge is `fsn<hash>` and the network `flowstore-<hash>`. Pods get their
own network namespace on that bridge, which has no address and no route: a Pod reaches nothing
but itself. Pods that must reach the API server (127.0.0.1 only) use `hostNetwork: true`.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import pause
from .cloud import LocalCloudError

# The name the node registers as. An IP as the hostname override makes it the node's address
# too (a loopback --node-ip is refused), so the API server reaches the kubelet, and hostNetwork
# Pods' IPs, on 127.0.0.1 and never on the machine's other interfaces.
NODE_NAME = "127.0.0.1"
CNI_BIN_DIR = "/usr/lib/cni"
# A UNIX socket path longer than this does not fit sockaddr_un.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Runtime:
    """The container runtime's programs (node.py builds them into the cache)."""

    containerd: Path = Path("containerd")
    ctr: Path = Path("ctr")
    shim: Path = Path("containerd-shim-runc-v2")
    runc: Path = Path("runc")


class Node:
    """Paths, names and files of one state directory's node."""

    def __init__(self, state_dir: Path, cache: Path, runtime: Runtime | None = None) -> None:
        self.runtime = runtime or Runtime()
        self.state_dir = state_dir
        self.cache = cache / "node"
        self.dir = state_dir / "node"
        self.tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
        self.bridge = f"fsn{self.tag}"
        self.network = f"flowstore-{self.tag}"
        self.containerd_root = self.dir / "containerd"
        self.containerd_state = self.dir / "run"
        self.socket = self.containerd_state / "containerd.sock"
        self.kubelet_root = self.dir / "kubelet"
        self.cni_conf_dir = self.dir / "cni"
        self.certs_d = self.dir / "certs.d"

    # ------------------------------------------------------------------ prerequisites

    def check_paths(self) -> None:
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise LocalCloudError(f"node: the containerd socket path {self.socket} is longer than "
                                  f"{MAX_SOCKET_PATH} characters; use a shorter FLOWSTORE_LOCALCLOUD_DIR")

    def subnet(self) -> str:
        """The Pods' /24, chosen by the state directory; refused when it overlaps a network of
        this machine (an address or route), since Pods would then shadow it."""
        base = ipaddress.IPv4Network("10.244.0.0/16")
        start = int(self.tag, 16) % 256
        used = _host_networks()
        for i in range(256):
            candidate = list(base.subnets(new_prefix=24))[(start + i) % 256]
            if not any(candidate.overlaps(n) for n in used):
                return str(candidate)
        raise LocalCloudError("node: every /24 of 10.244.0.0/16 overlaps a network of this machine; "
                              "no Pod subnet is free")

    def write_files(self, registry_port: int | None) -> None:
        """containerd's config, the CNI config and the registry's hosts.toml."""
        for d in (self.containerd_root, self.containerd_state, self.kubelet_root, self.cni_conf_dir,
                  self.certs_d, self.dir / "pod-logs"):
            d.mkdir(parents=True, exist_ok=True)
        self.write_registry_hosts(registry_port)
        cni = {
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                # No gateway, no masquerade, no routes: a Pod's namespace reaches nothing outside it.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet()}]],
                         "dataDir": str(self.dir / "ipam")},
            }],
        }
        (self.cni_conf_dir / "10-flowstore.conflist").write_text(json.dumps(cni, indent=2) + "\n")
        images, runtime = 'plugins."io.containerd.cri.v1.images"', 'plugins."io.containerd.cri.v1.runtime"'
        config = f"""# containerd 2 for the flowstore local cloud's node (scripts/lib/localcloud); its own files only.
version = 3
root = {json.dumps(str(self.containerd_root))}
state = {json.dumps(str(self.containerd_state))}

[grpc]
  address = {json.dumps(str(self.socket))}

[metrics]
  address = "127.0.0.1:{{metrics_port}}"

[plugins]
  # NRI listens on one machine-wide socket (/var/run/nri/nri.sock): two local clouds would fight
  # over it, and nothing here uses NRI.
  [plugins."io.containerd.nri.v1.nri"]
    disable = true

  [plugins."io.containerd.internal.v1.opt"]
    path = {json.dumps(str(self.dir / "opt"))}

  [{images}]
    snapshotter = "overlayfs"

  [{images}.pinned_images]
    # The Pod sandbox's image, imported locally (nothing is pulled from outside); pinned, so
    # image garbage collection never removes it.
    sandbox = {json.dumps(pause.PAUSE_IMAGE)}

  [{images}.registry]
    # certs.d/127.0.0.1:PORT/hosts.toml: the local registry over plain http.
    config_path = {json.dumps(str(self.certs_d))}

  [{runtime}]
    # The kubelet asks for oom_score_adj -998, which this kind of machine refuses (runc then
    # fails every Pod sandbox with "can't get final child's PID from pipe: EOF").
    restrict_oom_score_adj = true
    # Network namespaces under our own state directory, so `down` finds every one of them.
    netns_mounts_under_state_dir = true

  [{runtime}.cni]
    bin_dirs = [{json.dumps(CNI_BIN_DIR)}]
    conf_dir = {json.dumps(str(self.cni_conf_dir))}
    max_conf_num = 1

  [{runtime}.containerd]
    default_runtime_name = "runc"

  [{runtime}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    # our shim, not one of an older containerd on PATH
    runtime_path = {json.dumps(str(self.runtime.shim))}

  [{runtime}.containerd.runtimes.runc.options]
    BinaryName = {json.dumps(str(self.runtime.runc))}
    Root = {json.dumps(str(self.containerd_state / "runc"))}
    SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"""
        (self.dir / "containerd.toml.in").write_text(config)

    def containerd_config(self, metrics_port: int) -> Path:
        path = self.dir / "containerd.toml"
        path.write_text((self.dir / "containerd.toml.in").read_text().replace("{metrics_port}", str(metrics_port)))
        return path

    def write_registry_hosts(self, registry_port: int | None) -> None:
        """Pods pull `127.0.0.1:PORT/repo:tag` from the local registry over plain http
        (credentials: imagePullSecrets, as anywhere)."""
        if not registry_port or not self.certs_d.parent.exists():
            return
        host = f"127.0.0.1:{registry_port}"
        d = self.certs_d / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')

    def kubelet_config(self, port: int) -> Path:
        # JSON is YAML: the kubelet reads either.
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            # it listens on 127.0.0.1 only: the API server (logs, exec) is its one client
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                               "x509": {}},
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failCgroupV1": False,
            "failSwapOn": False,
            "resolvConf": "",
            "podLogsDir": str(self.dir / "pod-logs"),
            "serializeImagePulls": False,
            # A developer machine's disk, shared with everything else on it: never garbage-collect
            # images, and evict only when the disk is really full. Absolute floors, not percents:
            # 1% of a large shared disk is gigabytes, and reclaiming under pressure deletes every
            # unused image, the node's pause image among them (no registry serves it again).
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "256Mi",
                             "imagefs.available": "256Mi", "nodefs.inodesFree": "1%"},
            "maxPods": 60,
            "syncFrequency": "10s",
            "fileCheckFrequency": "0s",
            "shutdownGracePeriod": "0s",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return path

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.runtime.ctr), "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def import_pause_image(self) -> None:
        if pause.PAUSE_IMAGE in self.ctr("images", "ls", "-q").stdout.split():
            return
        done = self.ctr("images", "import", str(pause.image_tar(self.cache)))
        if done.returncode != 0 or pause.PAUSE_IMAGE not in self.ctr("images", "ls", "-q").stdout.split():
            raise LocalCloudError("node: importing the pause image failed: "
                                  f"{done.stderr.strip() or done.stdout.strip()}")

    # ------------------------------------------------------------------ teardown

    def shims(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving this node's containerd."""
        return [pid for pid, argv in _processes() if argv and argv[0].endswith("containerd-shim-runc-v2")
                and "-address" in argv and argv[argv.index("-address") + 1:][:1] == [str(self.socket)]]

    def stop_containers(self, containerd_running: bool) -> None:
        """Kill and delete every task (Pod containers and sandboxes), so their shims exit and
        clean up after themselves; then kill whatever is left of them."""
        if containerd_running and self.socket.exists():
            tasks = self.ctr("tasks", "ls", "-q", timeout=30).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "--all", "--signal", "SIGKILL", task, timeout=30)
            for task in tasks:
                for _ in range(50):
                    if self.ctr("tasks", "delete", task, timeout=30).returncode == 0:
                        break
                    time.sleep(0.1)
        for shim in self.shims():
            for pid in [*_descendants(shim), shim]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> dict[str, list[str]]:
        """What of this node still exists on the machine: shims, mounts, the bridge, veths."""
        return {
            "shims": [str(p) for p in self.shims()],
            "mounts": self.mounts(),
            "bridge": [self.bridge] if Path(f"/sys/class/net/{self.bridge}").exists() else [],
        }

    def mounts(self) -> list[str]:
        prefixes = (str(self.dir) + "/",)
        found = []
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefixes) or point == str(self.dir):
                    found.append(point)
        return found

    def unmount_all(self) -> None:
        # Deepest first; lazily, so a mount still busy for a moment does not keep the rest.
        for point in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)

    def remove_network(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)
        # libcni's result cache is machine-wide; ours are named after our network.
        for cache in (Path("/var/lib/cni/results"), Path("/var/lib/cni/cache/results")):
            for f in cache.glob(f"{self.network}-*"):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()


def stop_system_containerd() -> None:
    """Debian's containerd package enables a system service; the local cloud runs its own
    instance, so the system one is stopped and disabled where systemd runs."""
    if not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return
    active = subprocess.run(["systemctl", "is-enabled", "containerd"], capture_output=True, text=True, check=False)
    if active.stdout.strip() in ("enabled", "enabled-runtime"):
        subprocess.run(["systemctl", "disable", "--now", "containerd"], capture_output=True, check=False)


def _host_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-j", "-4", "addr"], ["ip", "-j", "-4", "route"]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        try:
            entries = json.loads(done.stdout or "[]")
        except json.JSONDecodeError:
            continue
        for e in entries:
            for a in e.get("addr_info", []):
                nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
            dst = e.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        out.append((int(p.name), [a.decode(errors="replace") for a in argv if a]))
    return out


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found
