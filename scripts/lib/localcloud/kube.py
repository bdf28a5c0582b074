"""kube: etcd + kube-apiserver, built from the Go module proxy (scripts/lib/build-kube.sh, the
envtest model: LOCAL-CLOUD.md), with RBAC, ServiceAccount tokens and an admin token."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

from . import procs
from . import state as st
from .cloud import Cloud, LocalCloudError, log
from .lifecycle import extra_port
from .model import Server, Service
from .state import State


def binaries(cloud: Cloud, *names: str) -> list[Path]:
    """The cached kube binaries, built (all missing ones at once) when absent; build-kube.sh locks
    the cache directory, so two local clouds never build the same binaries side by side."""
    paths = [cloud.kube_bin / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if not missing:
        return paths
    if not shutil.which("go"):
        raise LocalCloudError(f"{', '.join(missing)} missing from {cloud.kube_bin} and `go` is not on PATH "
                              "to build them")
    cold = ("about 8 minutes" if "kube-apiserver" in missing
            else "a few minutes, about one with a warm Go build cache")
    log(f"building {' '.join(missing)} {cloud.kube_version} into {cloud.kube_bin} "
        f"(cold build: {cold}, several GB of RAM; cached afterwards)")
    subprocess.run(["bash", str(cloud.lib / "build-kube.sh"), str(cloud.kube_bin), *missing], check=True,
                   env={**os.environ, "KUBE_VERSION": cloud.kube_version, "GOCACHE": str(cloud.go_cache)})
    return paths


def admin_token(cloud: Cloud) -> str:
    path = cloud.state_dir / "admin-token"
    if not path.exists():
        cloud.state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _kube_files(cloud: Cloud) -> None:
    """The admin token file, the ServiceAccount signing key pair, and the certs and etcd dirs."""
    token = admin_token(cloud)
    tokens = cloud.state_dir / "tokens.csv"
    if not tokens.exists():
        tokens.write_text(f'{token},admin,admin-uid,"system:masters"\n')
        tokens.chmod(0o600)
    key, pub = cloud.state_dir / "sa.key", cloud.state_dir / "sa.pub"
    if not key.exists() or not pub.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                       capture_output=True)
    (cloud.state_dir / "certs").mkdir(parents=True, exist_ok=True)
    (cloud.state_dir / "etcd").mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------ etcd


def _etcd_prepare(cloud: Cloud, state: State) -> None:
    extra_port(state, "etcd", "peer_port")


def _etcd_argv(cloud: Cloud, state: State) -> list[str]:
    srv = state["servers"]["etcd"]
    # kube-apiserver is built with it (one build), so ask for both when either is missing.
    _, etcd = binaries(cloud, "kube-apiserver", "etcd")
    peer = f"http://127.0.0.1:{srv['peer_port']}"
    client = f"http://127.0.0.1:{srv['port']}"
    # fmt: off
    return [
        str(etcd),
        "--name", "default",
        "--data-dir", str(cloud.state_dir / "etcd"),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"default={peer}",
        "--unsafe-no-fsync",
        "--quota-backend-bytes", "4294967296",
        "--log-level", "warn",
    ]
    # fmt: on


def _etcd_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, body = procs.probe(f"http://127.0.0.1:{srv['port']}/health")
    return code == 200 and '"true"' in body


# ------------------------------------------------------------------ kube-apiserver


def _apiserver_argv(cloud: Cloud, state: State) -> list[str]:
    apiserver, _ = binaries(cloud, "kube-apiserver", "etcd")
    _kube_files(cloud)
    d = cloud.state_dir
    return [
        str(apiserver),
        f"--etcd-servers=http://127.0.0.1:{st.port(state, 'etcd')}",
        f"--secure-port={st.port(state, 'kube-apiserver')}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--cert-dir={d / 'certs'}",
        f"--token-auth-file={d / 'tokens.csv'}",
        f"--service-account-key-file={d / 'sa.pub'}",
        f"--service-account-signing-key-file={d / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=RBAC",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        # The ServiceAccount admission plugin (on by default) gives Pods their token and
        # ca.crt (projected volume); kube-controller-manager creates `default` accounts.
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
    ]


def _apiserver_ready(cloud: Cloud, srv: dict[str, Any]) -> bool:
    code, body = procs.probe(f"https://127.0.0.1:{srv['port']}/readyz", admin_token(cloud))
    return code == 200 and body.strip() == "ok"


def _apiserver_wired(state: State) -> bool:
    """Still pointed at the current etcd port."""
    expected = f"--etcd-servers=http://127.0.0.1:{st.port(state, 'etcd')}"
    return expected in st.record(state, "kube-apiserver").get("argv", [])


def kubeconfig_text(port: int, token: str, ca: Path | None) -> str:
    """The admin kubeconfig: TLS verified against the serving cert when it verifies for 127.0.0.1."""
    cluster_tls = (f"    certificate-authority: {json.dumps(str(ca))}\n" if ca
                   else "    insecure-skip-tls-verify: true\n")
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: localcloud\n"
        "  cluster:\n"
        f"    server: https://127.0.0.1:{port}\n"
        f"{cluster_tls}"
        "users:\n"
        "- name: admin\n"
        "  user:\n"
        f"    token: {json.dumps(token)}\n"
        "contexts:\n"
        "- name: localcloud\n"
        "  context:\n"
        "    cluster: localcloud\n"
        "    user: admin\n"
        "    namespace: default\n"
        "current-context: localcloud\n"
    )


def write_kubeconfig(cloud: Cloud, state: State) -> None:
    port = st.port(state, "kube-apiserver")
    assert port
    ca = cloud.state_dir / "certs" / "apiserver.crt"
    text = kubeconfig_text(port, admin_token(cloud), ca if ca.exists() and _verifies(ca, port) else None)
    tmp = cloud.kubeconfig.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(cloud.kubeconfig)


def _kubeconfig_kept(cloud: Cloud, state: State) -> None:
    if not cloud.kubeconfig.exists():
        write_kubeconfig(cloud, state)


def _verifies(ca: Path, port: int) -> bool:
    """The self-signed serving cert file (leaf + its CA) verifies the server for 127.0.0.1."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
    except (OSError, ssl.SSLError):
        return False


def get(cloud: Cloud, path: str) -> dict[str, Any] | None:
    """GET an API path as admin; None unless it answers 200."""
    port = st.port(st.load(cloud), "kube-apiserver")
    code, body = procs.probe(f"https://127.0.0.1:{port}{path}", admin_token(cloud), timeout=5)
    if code != 200:
        return None
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def _exports(cloud: Cloud, state: State) -> list[tuple[str, str]]:
    return [("KUBECONFIG", str(cloud.kubeconfig)),
            ("FLOWSTORE_KUBE_SERVER", f"https://127.0.0.1:{st.port(state, 'kube-apiserver')}")]


ETCD = Server("etcd", exe_hint="etcd", argv=_etcd_argv, ready=_etcd_ready, prepare=_etcd_prepare)
APISERVER = Server("kube-apiserver", exe_hint="kube-apiserver", argv=_apiserver_argv, ready=_apiserver_ready,
                   wired=_apiserver_wired, after_start=write_kubeconfig, on_reuse=_kubeconfig_kept)
SERVICE = Service(
    "kube", "etcd + kube-apiserver", (ETCD, APISERVER), _exports,
    forget=("etcd", "certs", "kubeconfig", "tokens.csv", "admin-token", "sa.key", "sa.pub"),
)
