"""Issue 26 end to end on the local node: a StoredFlow on an `oci` FlowStorage becomes Ready with
its image digest; a Pod built from `flowstore locate -o pod-volume` mounts the image by digest,
passes the manifest check (flowstore.mounted, no credentials, API or network) and runs the flow;
a tampered image (the tag re-pushed, so another digest) is refused; and the init-container
fallback (`--fallback init`) fills an emptyDir by digest and runs the same check."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstore.storage.oci.image import build_flow_image
from flowstore.storage.oci.storage import OCI
from tests.backends.test_oci import dockerconfigjson
from tests.cluster.conftest import IMAGE_REPOSITORY, pull_secret
from tests.helpers.kube import kubectl, wait_for, wait_ready
from tests.helpers.manifests import manifests, stored_flow
from tests.helpers.operator import OperatorProcess

pytestmark = pytest.mark.timeout(900)

SCRIPT = """\
from flowstore.flow import Flow


def main():
    return "hello from a mounted flow"


flow = Flow("mounted etl", main)
"""

#: what the run Pod does: the pull step's check and copy, then the flow, from the copy
RUN = """
import json, os, runpy, sys
from flowstore.prefect import use_mounted_flow
try:
    out = use_mounted_flow("{mount}", "{digest}", directory="/tmp/work")
except Exception as exc:
    print(json.dumps({{"refused": str(exc)}}))
    sys.exit(3)
os.chdir(out["directory"])
result = runpy.run_path("{script}")["flow"].run()
print(json.dumps({{"ran": result, "storedflow": out["storedflow"], "files": sorted(os.listdir("."))}}))
"""


def locate(ns: str, name: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "flowstore.cli", "locate", name, "-n", ns, *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = yaml.safe_load(done.stdout)
    return doc


def run_pod(ns: str, name: str, reader: str, pieces: dict[str, Any], command: list[str], *,
            host_network: bool = False) -> tuple[str, str]:
    """A Pod of `pieces` (what locate printed) whose one container runs `command`: (phase, log).
    `host_network`: the local registry listens on the node's 127.0.0.1, which only a Pod in the
    node's network reaches (the init fallback's pull; the kubelet's own pulls need nothing)."""
    container = {"name": "main", "image": reader, "imagePullPolicy": "IfNotPresent", "command": command,
                 "volumeMounts": pieces["volumeMounts"]}
    spec = {"restartPolicy": "Never", "automountServiceAccountToken": False,
            "imagePullSecrets": [{"name": "registry"}],  # for the reader image; the snippet's own is the same
            "containers": [container], "volumes": pieces["volumes"], "hostNetwork": host_network}
    if "initContainers" in pieces:
        spec["initContainers"] = pieces["initContainers"]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Pod",
                                                    "metadata": {"name": name, "namespace": ns}, "spec": spec}))
    done = wait_for("pod", ns, name, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                    timeout=240, what="to finish")
    logs = kubectl("logs", name, "-n", ns, "--all-containers", check=False).stdout
    return done["status"]["phase"], logs


def last_json(logs: str) -> dict[str, Any]:
    line = [x for x in logs.splitlines() if x.startswith("{")][-1]
    doc: dict[str, Any] = json.loads(line)
    return doc


def test_a_stored_flow_runs_from_its_mounted_image_and_a_tampered_one_is_refused(
        ns: str, operator: OperatorProcess, operator_image: Callable[[str], str], docker_env: dict[str, str]) -> None:
    reader = f"{docker_env['registry']}/{IMAGE_REPOSITORY}:{operator_image('oci-flows')}"
    repository = f"{docker_env['registry']}/flows/oci-e2e-{uuid.uuid4().hex[:8]}"
    storage = {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
               "metadata": {"name": "images", "namespace": ns},
               "spec": {"oci": {"repository": repository, "plainHTTP": True,
                                "credentialsSecretRef": {"name": "registry"}}}}
    kubectl("apply", "-f", "-", input=manifests(
        storage, stored_flow(ns, "etl", "mounted etl", {"inline": SCRIPT}, "images", storedAsScript=True)))
    obj = wait_ready(ns, "etl", timeout=120)
    status = obj["status"]
    image, artifact = status["image"], status["artifact"]
    assert image["name"] == repository and image["digest"].startswith("sha256:")
    assert artifact["url"] == f"{repository}@{image['digest']}"
    assert [r["image"] for r in status["history"]] == [{"name": repository, "digest": image["digest"]}]
    # deterministic: the image is the one built here from the revision, with no registry
    location = status["location"]
    assert build_flow_image({location: SCRIPT.encode()}, stored_flow=f"{ns}/etl",
                            flow_digest=artifact["digest"]).digest == image["digest"]

    # the Pod from `locate -o pod-volume`: mounted by digest, checked, run
    pieces = locate(ns, "etl", "-o", "pod-volume", "--pull-secret", "registry")
    assert pieces["volumes"][0]["image"]["reference"] == f"{repository}@{image['digest']}"
    script = RUN.format(mount=pieces["volumeMounts"][0]["mountPath"], digest=artifact["digest"], script=location)
    phase, logs = run_pod(ns, "good", reader, pieces, ["python3", "-c", script])
    assert phase == "Succeeded", logs
    assert last_json(logs) == {"ran": "hello from a mounted flow", "storedflow": f"{ns}/etl", "files": [location]}

    # tampering: the location's tag re-pushed with other code. What status pins does not move ...
    tamperer = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow=f"{ns}/etl")
    evil = tamperer.put_bytes(location, SCRIPT.replace("hello from", "owned by").encode())
    evil_digest = str(evil.storage_state["imageDigest"])
    assert evil_digest != image["digest"]
    assert locate(ns, "etl", "-o", "pod-volume")["volumes"][0]["image"]["reference"].endswith(image["digest"])
    # ... and a Pod made to mount the re-pushed image (another digest) is refused by the check
    forged = json.loads(json.dumps(pieces))
    forged["volumes"][0]["image"]["reference"] = f"{repository}@{evil_digest}"
    phase, logs = run_pod(ns, "tampered", reader, forged, ["python3", "-c", script])
    assert phase == "Failed", logs
    assert "not the recorded " + artifact["digest"] in last_json(logs)["refused"]
    assert "owned by" not in logs

    # the fallback for clusters without image volumes: an init container pulls by digest
    pieces = locate(ns, "etl", "-o", "pod-volume", "--fallback", "init", "--init-image", reader,
                    "--pull-secret", "registry")
    assert pieces["volumes"][0] == {"name": "flow", "emptyDir": {}}
    phase, logs = run_pod(ns, "fallback", reader, pieces, ["python3", "-c", script], host_network=True)
    assert phase == "Succeeded", logs
    assert last_json(logs)["ran"] == "hello from a mounted flow"
    assert f"flowstore: /flow is {ns}/etl {artifact['digest']} (1 files checked)" in logs  # the init container


def registry_has(docker_env: dict[str, str], repository: str, digest: str) -> bool:
    from flowstore.storage.docker.oci import RegistryClient
    from flowstore.storage.errors import NotFound

    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    try:
        client.manifest(repository.split("/", 1)[1], digest)
    except NotFound:
        return False
    return True


def test_revisions_are_images_a_revert_pushes_nothing_and_retention_deletes_manifests(
        ns: str, operator: OperatorProcess, docker_env: dict[str, str]) -> None:
    """Each revision its own digest in status.history; going back to earlier source makes its
    image current again (the same digest: nothing new); under deletionPolicy Delete a revision
    that left the history is deleted as its manifest, by digest, once minAge passed."""
    repository = f"{docker_env['registry']}/flows/oci-ret-{uuid.uuid4().hex[:8]}"
    storage = {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
               "metadata": {"name": "images", "namespace": ns},
               "spec": {"oci": {"repository": repository, "plainHTTP": True,
                                "credentialsSecretRef": {"name": "registry"}},
                        "deletionPolicy": "Delete", "revisionHistoryLimit": 2, "retention": {"minAge": "1s"}}}

    def source(text: str) -> str:
        return SCRIPT.replace("hello from a mounted flow", text)

    def store(text: str) -> dict[str, Any]:
        kubectl("apply", "-f", "-", input=manifests(stored_flow(ns, "etl", "mounted etl", {"inline": source(text)},
                                                                 "images", storedAsScript=True)))
        return wait_for("storedflow", ns, "etl", lambda o: (o.get("status") or {}).get("artifact", {}).get("digest")
                        == "sha256:" + hashlib.sha256(source(text).encode()).hexdigest()
                        and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"],
                        timeout=120, what=f"to store {text!r}")["status"]

    kubectl("apply", "-f", "-", input=manifests(storage))
    one = store("one")
    two = store("two")
    assert one["image"]["digest"] != two["image"]["digest"]
    assert [r["image"]["digest"] for r in two["history"]] == [two["image"]["digest"], one["image"]["digest"]]
    back = store("one")  # a revert: revision 1's image, current again
    assert back["image"]["digest"] == one["image"]["digest"]
    assert back["artifact"]["revision"] == one["artifact"]["revision"]
    three = store("three")  # the history holds 2: revision 2 leaves it, and is deleted
    assert [r["image"]["digest"] for r in three["history"]] == [three["image"]["digest"], one["image"]["digest"]]
    wait_for("storedflow", ns, "etl", lambda o: not (o.get("status") or {}).get("retired"), timeout=120,
             what="to delete what it retired")
    assert not registry_has(docker_env, repository, two["image"]["digest"])
    assert registry_has(docker_env, repository, one["image"]["digest"])
    assert registry_has(docker_env, repository, three["image"]["digest"])


class CountingProxy:
    """A plain-HTTP proxy in front of the local registry that counts what is fetched: GET
    requests for each blob digest, and the bytes served. The node pulls through it (a hosts.toml
    for its port in the node's containerd certs.d), so the counts are the node's fetches."""

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading

        import requests

        self.blob_gets: dict[str, int] = {}
        self.bytes_served = 0
        self.lock = threading.Lock()
        proxy = self
        session = requests.Session()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = session.request(self.command, f"http://{upstream}{self.path}", headers=headers, data=body,
                                       allow_redirects=True, timeout=60)
                content = resp.content if self.command != "HEAD" else b""
                if self.command == "GET" and "/blobs/sha256:" in self.path and resp.status_code == 200:
                    with proxy.lock:
                        digest = self.path.rsplit("/", 1)[1]
                        proxy.blob_gets[digest] = proxy.blob_gets.get(digest, 0) + 1
                        proxy.bytes_served += len(content)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.headers.get("Content-Length", str(len(content)))
                                 if self.command == "HEAD" else str(len(content)))
                self.end_headers()
                if content:
                    self.wfile.write(content)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_ten_pods_on_the_node_fetch_each_blob_once(
        ns: str, operator: OperatorProcess, operator_image: Callable[[str], str], docker_env: dict[str, str],
        tmp_path: Path) -> None:
    from tests.helpers.localcloud import ROOT

    reader = f"{docker_env['registry']}/{IMAGE_REPOSITORY}:{operator_image('oci-flows')}"
    repository = f"{docker_env['registry']}/flows/oci-ten-{uuid.uuid4().hex[:8]}"
    kubectl("apply", "-f", "-", input=manifests(
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage", "metadata": {"name": "images", "namespace": ns},
         "spec": {"oci": {"repository": repository, "plainHTTP": True, "credentialsSecretRef": {"name": "registry"}}}},
        stored_flow(ns, "etl", "mounted etl", {"inline": SCRIPT}, "images", storedAsScript=True)))
    status = wait_ready(ns, "etl", timeout=120)["status"]
    image_digest, flow_digest = status["image"]["digest"], status["artifact"]["digest"]

    proxy = CountingProxy(docker_env["registry"])
    certs_d = Path(os.environ.get("FLOWSTORE_LOCALCLOUD_DIR") or ROOT / ".localcloud") / "node" / "certs.d"
    assert (certs_d / docker_env["registry"]).is_dir(), certs_d
    host = f"127.0.0.1:{proxy.port}"
    (certs_d / host).mkdir()
    try:
        (certs_d / host / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n[host."http://{host}"]\n  capabilities = ["pull", "resolve"]\n')
        pull_secret(ns, {**docker_env, "registry": host}, name="via-proxy")
        pieces = locate(ns, "etl", "-o", "pod-volume", "--pull-secret", "via-proxy")
        reference = pieces["volumes"][0]["image"]["reference"]
        pieces["volumes"][0]["image"]["reference"] = reference.replace(docker_env["registry"], host, 1)
        pods = [f"run-{i}" for i in range(10)]
        for name in pods:
            spec = {"restartPolicy": "Never", "automountServiceAccountToken": False,
                    "imagePullSecrets": [{"name": "registry"}, {"name": "via-proxy"}],
                    "containers": [{"name": "main", "image": reader, "imagePullPolicy": "IfNotPresent",
                                    "command": ["python3", "-m", "flowstore.mounted", "check", "/flow", flow_digest],
                                    "volumeMounts": pieces["volumeMounts"]}],
                    "volumes": pieces["volumes"]}
            kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Pod",
                                                            "metadata": {"name": name, "namespace": ns},
                                                            "spec": spec}))
        for name in pods:
            done = wait_for("pod", ns, name, lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                            timeout=300, what="to finish")
            logs = kubectl("logs", name, "-n", ns, check=False).stdout
            assert done["status"]["phase"] == "Succeeded", logs
            assert f"is {ns}/etl {flow_digest}" in logs
    finally:
        proxy.close()
        (certs_d / host / "hosts.toml").unlink(missing_ok=True)
        (certs_d / host).rmdir()
    from flowstore.storage.docker.oci import RegistryClient

    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    manifest = client.manifest(repository.split("/", 1)[1], image_digest)
    blobs = [manifest.config_digest, *(str(layer["digest"]) for layer in manifest.layers)]
    # ten Pods, one node: each blob (the layer and the configuration) fetched once
    assert {d: proxy.blob_gets.get(d, 0) for d in blobs} == {d: 1 for d in blobs}, proxy.blob_gets
    print(f"\n10 Pods: {sum(proxy.blob_gets.values())} blob fetches, {proxy.bytes_served} bytes from the registry "
          f"(layer {manifest.layers[0]['size']} bytes)")
