"""The operator's container image (Dockerfile, docs/image.md), built and run for real.

The session builds the image with podman from a locally bootstrapped Debian base
(scripts/lib/podman-setup.sh, scripts/lib/base-image.sh: no base image can be pulled here), then
starts the operator FROM THE IMAGE against the real kube-apiserver and checks that it stores a
flow. `podman run` is refused by this sandbox (LOCAL-CLOUD.md), so the image's filesystem is
run with `buildah run --isolation chroot` (host network: the API server on 127.0.0.1 is
reachable), and, for the read-only root filesystem, chrooted into a read-only bind mount of the
container's root with an emptyDir-like /tmp, as Kubernetes runs it under the Helm chart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers.kube import apply, kubectl, wait_ready
from tests.helpers.localcloud import ROOT
from tests.helpers.manifests import inline_flow, local_storage
from tests.helpers.net import free_port

# The first test also builds the image: cold, ~5 minutes (Debian bootstrap + pip install).
pytestmark = [pytest.mark.timeout(1800), pytest.mark.usefixtures("own_operators_only")]

IMAGE = "localhost/flowstore-operator:dev"
LIB = ROOT / "scripts" / "lib"
UID = 10001


def _run(cmd: list[str], timeout: float = 120, **kw: Any) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if done.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return str(done.stdout)


@pytest.fixture(scope="session")
def image() -> str:
    """The operator image, built as docs/image.md says, by the same script the in-cluster tests
    and the demo use (scripts/lib/operator-image.sh: podman layers make rebuilds quick)."""
    t0 = time.monotonic()
    built = _run(["bash", str(LIB / "operator-image.sh")], timeout=2400).strip().splitlines()[-1]
    assert built == IMAGE
    print(f"\nimage: setup, base and build {time.monotonic() - t0:.0f}s")
    return IMAGE


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A working container of the image (buildah), removed afterwards."""
    name = f"flowstore-test-{uuid.uuid4().hex[:8]}"
    _run(["buildah", "from", "--pull=never", "--name", name, image])
    yield name
    subprocess.run(["buildah", "umount", name], capture_output=True)
    subprocess.run(["buildah", "rm", name], capture_output=True)


def buildah_run(ctr: str, *cmd: str, user: str | None = None) -> str:
    opts = ["--user", user] if user else []
    return _run(["buildah", "run", "--isolation", "chroot", *opts, ctr, "--", *cmd]).strip()


def image_config(image: str) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(_run(["podman", "image", "inspect", image]))[0]["Config"]
    return cfg



def shared_dir(path: Path, mode: int = 0o755, owner: int | None = None) -> Path:
    """A host directory to mount into the container, reachable by uid 10001."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner, owner)
    elif owner is not None:
        path.chmod(0o777)
    return path


def kubeconfig_dir(tmp_path: Path) -> Path:
    """A self-contained kubeconfig (CA embedded) readable by uid 10001."""
    kube = shared_dir(tmp_path / "kube")
    (kube / "config").write_text(kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
    (kube / "config").chmod(0o644)
    return kube


class Background:
    """A process tree started in its own session, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, left = psutil.wait_procs(tree, timeout=20)
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(left, timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)


def wait_healthy(op: Background, port: int, timeout: float = 90) -> None:
    """kopf's liveness endpoint answers 200 once the operator is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert op.alive(), f"operator exited ({op.proc.returncode}):\n{op.logs()}"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.5)
    raise AssertionError(f"no liveness answer on :{port} in {timeout}s:\n{op.logs()}")


def store_a_flow(op: Background, namespace: str, flows: Path) -> None:
    """A Local FlowStorage in the namespace's directory under the operator's Local root /flows (the
    host's `flows` dir) and an inline, pickled flow: Ready, and the artifact is on the host, written
    by uid 10001, with the digest the status reports."""
    apply(local_storage(namespace, "store", f"/flows/{namespace}", volume_name="flows-pvc"))
    apply(inline_flow(namespace, "etl", "etl daily", body="return 6 * 7"))
    try:
        status = wait_ready(namespace, "etl", timeout=90)["status"]
    except AssertionError as err:
        raise AssertionError(f"{err}\noperator log:\n{op.logs()}") from None
    location = status["location"]
    host_file = flows / location.removeprefix("/flows/") if location.startswith("/") else flows / location
    assert host_file.is_file(), (location, sorted(str(p) for p in flows.rglob("*")))
    data = host_file.read_bytes()
    assert status["artifact"]["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    if os.geteuid() == 0:
        assert host_file.stat().st_uid == UID
    wait_ready(namespace, "store", kind="flowstorage", timeout=30)


# ------------------------------------------------------------------ the image itself


def test_image_config_is_non_root_with_liveness_entrypoint(image: str) -> None:
    cfg = image_config(image)
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["Entrypoint"] == ["flowstore", "operator", "--liveness", "http://0.0.0.0:8080/healthz"]
    assert "8080/tcp" in (cfg.get("ExposedPorts") or {})
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/flowstore/bin:")


def test_image_has_backends_but_no_build_tools(container: str) -> None:
    # The image's default user, as `buildah run` (and a kubelet) uses it.
    assert buildah_run(container, "id", "-u") == str(UID)
    tools = "for t in gcc cc c++ g++ make ld as; do command -v $t; done; echo end"
    assert buildah_run(container, "sh", "-c", tools) == "end"
    # ...but git, which the git-hosted storages run.
    assert buildah_run(container, "git", "--version").startswith("git version")
    # No pip in the venv, no sources, and the venv is not writable by the operator.
    assert buildah_run(container, "sh", "-c", "ls /opt/flowstore/bin/pip* /src 2>/dev/null; echo end") == "end"
    assert buildah_run(container, "sh", "-c", "test -w /opt/flowstore/lib || echo read-only") == "read-only"
    # Every backend's SDK is installed (flowstore[all]).
    imports = ("import flowstore.controller.handlers, flowstore.artifacts.envelope, kopf, kubernetes, boto3, "
               "google.cloud.storage, azure.storage.blob, azure.identity")
    assert buildah_run(container, "python", "-c", imports + "; print('ok')") == "ok"
    assert "operator" in buildah_run(container, "flowstore", "--help")


# ------------------------------------------------------------------ the operator, run from the image


def test_operator_from_image_stores_a_flow(container: str, crds: None, kube_env: dict[str, str],
                                           namespace: str, tmp_path: Path) -> None:
    kube = kubeconfig_dir(tmp_path)
    flows = shared_dir(tmp_path / "flows", owner=UID)
    tmp = shared_dir(tmp_path / "tmp", mode=0o1777)   # the chart's emptyDir at /tmp
    port = free_port()
    op = Background([
        "buildah", "run", "--isolation", "chroot", "--user", f"{UID}:{UID}",
        "-v", f"{kube}:/kube:ro", "-v", f"{flows}:/flows", "-v", f"{tmp}:/tmp",
        "--env", "KUBECONFIG=/kube/config", container, "--",
        "flowstore", "operator", "--liveness", f"http://127.0.0.1:{port}/healthz",
        "--namespace", namespace, "--log-format", "json", "--local-root", "/flows",
    ], tmp_path / "operator.log")
    try:
        wait_healthy(op, port)
        store_a_flow(op, namespace, flows)
    finally:
        op.stop()
    assert '"message"' in op.logs()   # JSON logs


def test_operator_runs_with_read_only_root_filesystem(image: str, container: str, crds: None,
                                                       kube_env: dict[str, str], namespace: str,
                                                       tmp_path: Path) -> None:
    """readOnlyRootFilesystem as the chart sets it: the container's root is a read-only bind
    mount, /tmp an empty writable directory; the operator still builds and stores a flow."""
    cfg = image_config(image)
    kube = kubeconfig_dir(tmp_path)
    flows = shared_dir(tmp_path / "flows", owner=UID)
    tmp = shared_dir(tmp_path / "tmp", mode=0o1777)
    root = _run(["buildah", "mount", container]).strip()
    for mountpoint in ("kube", "flows"):   # as a kubelet makes mount points, before going read-only
        Path(root, mountpoint).mkdir(exist_ok=True)
    mounts = " && ".join([
        f"mount --bind {root} {root}",
        f"mount -o remount,bind,ro {root}",
        f"mount --bind {tmp} {root}/tmp",
        f"mount --bind -o ro {kube} {root}/kube",
        f"mount --bind {flows} {root}/flows",
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
    ])
    env = [*cfg["Env"], "KUBECONFIG=/kube/config"]

    def in_image(*cmd: str) -> list[str]:
        inner = shlex.join(["chroot", f"--userspec={UID}:{UID}", root, "/usr/bin/env", "-i",
                            f"--chdir={cfg.get('WorkingDir') or '/'}", *env, *cmd])
        return ["unshare", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", f"{mounts} && exec {inner}"]

    # The harness really makes / read-only and /tmp writable.
    probe = "touch /probe 2>&1; touch /tmp/probe && echo tmp-writable"
    out = subprocess.run(in_image("sh", "-c", probe), capture_output=True, text=True, timeout=60)
    assert "Read-only file system" in out.stdout and "tmp-writable" in out.stdout, out

    port = free_port()
    op = Background(in_image("flowstore", "operator", "--liveness", f"http://127.0.0.1:{port}/healthz",
                             "--namespace", namespace, "--local-root", "/flows"), tmp_path / "operator.log")
    try:
        wait_healthy(op, port)
        store_a_flow(op, namespace, flows)
    finally:
        op.stop()
    # Nothing but the build sandbox's temporary files went to /tmp, and they were cleaned up.
    assert not [p for p in tmp.iterdir() if p.name != "probe"], sorted(tmp.iterdir())
