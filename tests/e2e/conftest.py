"""Operator end-to-end fixtures: the real `flowstore operator` process against the real
kube-apiserver and S3 server, a namespace per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, kubectl

OPERATOR_ARGS = ["--build-timeout", "5", "--build-memory", "256Mi", "--delete-retries", "2"]


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port nothing listens on, never one handed out before in this session: the kernel may
    give a just-closed port again, and two operators started together then collide (seen in CI:
    both liveness endpoints of the HA test got the same port)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class OperatorProcess:
    """`flowstore operator` as it runs in production, in a subprocess; restartable."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *extra: str) -> None:
        self.starts += 1
        self.metrics_port = _free_port()
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowstore.cli", "operator", *OPERATOR_ARGS,
             "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1", *extra],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )
        # Ready to be observed once its metrics endpoint answers (imports take a moment).
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.logs()
            try:
                urllib.request.urlopen(self.metrics_url, timeout=1).close()  # noqa: S310 - loopback
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"operator metrics never answered:\n{self.logs()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


_SESSION_OPERATORS: list[OperatorProcess] = []


@pytest.fixture(scope="session")
def operator(crds: None, kube_env: dict[str, str], s3_endpoint: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(tmp_path_factory.mktemp("operator"), dict(os.environ))
    op.start()
    _SESSION_OPERATORS.append(op)
    yield op
    _SESSION_OPERATORS.remove(op)
    op.stop()


@pytest.fixture
def own_operators_only() -> Iterator[None]:
    """For tests that run their own operators (HA, faults, the image): the session's
    cluster-wide operator is paused meanwhile, or it would serve their objects too and every
    count of uploads would double."""
    paused = [op for op in _SESSION_OPERATORS if op.alive()]
    for op in paused:
        op.stop()
    yield
    for op in paused:
        op.start()


def apply(manifest: str) -> None:
    kubectl("apply", "-f", "-", input=manifest)


def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)  # type: ignore[no-any-return]


def condition(obj: dict[str, Any], ctype: str = "Ready") -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def wait_for(kind: str, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 30.0, what: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if found.returncode == 0:
            obj = json.loads(found.stdout)
            if predicate(obj):
                return obj
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {kind} {namespace}/{name} {what}: {json.dumps(obj.get('status'))}")


def wait_ready(namespace: str, name: str, kind: str = "storedflow", timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(kind, namespace, name,
                    lambda o: condition(o).get("status") == "True"
                    and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"],
                    timeout, "to be Ready")


def wait_reason(namespace: str, name: str, reason: str, kind: str = "storedflow",
                timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(kind, namespace, name, lambda o: condition(o).get("reason") == reason
                    and condition(o).get("status") == "False", timeout, f"to have Ready=False reason {reason}")


def s3_storage(namespace: str, bucket: str, endpoint: str, name: str = "store", key_prefix: str | None = None,
               **spec: Any) -> str:
    """Manifest of an S3 FlowStorage with a credentials Secret (moto's test keys)."""
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in spec.items())
    prefix = f"    keyPrefix: {key_prefix}\n" if key_prefix else ""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}-creds, namespace: {namespace}}}
stringData: {{AWS_ACCESS_KEY_ID: testing, AWS_SECRET_ACCESS_KEY: testing}}
---
apiVersion: flowstore.dev/v1alpha1
kind: FlowStorage
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  s3:
    bucket: {bucket}
    endpointURL: {endpoint}
    region: us-east-1
    credentialsSecretRef: {{name: {name}-creds}}
{prefix}{extra}"""


def inline_flow(namespace: str, name: str, flow_name: str, body: str = "return 42", storage: str = "store",
                **spec: Any) -> str:
    script = f"from flowstore.flow import Flow\n\ndef main():\n    {body}\n\nflow = Flow({flow_name!r}, main)\n"
    indented = "\n".join("      " + line for line in script.splitlines())
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in spec.items())
    return f"""
apiVersion: flowstore.dev/v1alpha1
kind: StoredFlow
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  storageRef: {{name: {storage}}}
  flowName: {json.dumps(flow_name)}
  source:
    inline: |
{indented}
{extra}"""


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
