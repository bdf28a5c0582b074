"""A flow image written by flowstore.storage.oci (one uncompressed layer, a labelled config, no
daemon) mounts on the local node as an image volume pinned by digest: a Pod sees the flow's files
and the file manifest, and every file matches its recorded sha256 (what issue 26's consumers
will check)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.oci import MANIFEST_PATH, build_flow_image, push_flow_image
from tests.cluster.conftest import IMAGE_REPOSITORY, pull_secret
from tests.helpers.kube import kubectl, wait_for

FILES = {"flow.py": b"print('flow from a mounted image')\n", "pkg/__init__.py": b"VALUE = 42\n"}

CHECK = f"""
import hashlib, json, pathlib
root = pathlib.Path("/flow")
manifest = json.loads((root / "{MANIFEST_PATH}").read_text())
bad = [p for p, d in manifest["files"].items()
       if "sha256:" + hashlib.sha256((root / p).read_bytes()).hexdigest() != d]
print(json.dumps({{"storedFlow": manifest["storedFlow"], "files": sorted(manifest["files"]), "bad": bad,
                  "flow": (root / "flow.py").read_text()}}))
"""


@pytest.fixture
def pods(node_env: dict[str, str], namespace: str) -> Iterator[str]:
    yield namespace
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=true",
            "--timeout=60s", check=False)


def test_a_flow_image_mounts_by_digest_and_its_files_match_the_manifest(
        pods: str, operator_image: Callable[[str], str], docker_env: dict[str, str]) -> None:
    reader = f"{docker_env['registry']}/{IMAGE_REPOSITORY}:{operator_image('flow-volume')}"
    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    repo = f"flows/mounted-{uuid.uuid4().hex[:8]}"
    image = build_flow_image(FILES, stored_flow=f"{pods}/etl", flow_digest="sha256:" + "5a" * 32)
    pushed = push_flow_image(client, repo, image)
    secret = pull_secret(pods, docker_env)
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flow", "namespace": pods},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "imagePullSecrets": [{"name": secret}],
                 "containers": [{"name": "main", "image": reader, "imagePullPolicy": "IfNotPresent",
                                 "command": ["python3", "-c", CHECK],
                                 "volumeMounts": [{"name": "flow", "mountPath": "/flow"}]}],
                 "volumes": [{"name": "flow", "image": {"reference": f"{docker_env['registry']}/{repo}@{pushed.digest}",
                                                         "pullPolicy": "IfNotPresent"}}]},
    }))
    done = wait_for("pod", pods, "flow", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                    timeout=180, what="to finish")
    logs = kubectl("logs", "flow", "-n", pods).stdout
    assert done["status"]["phase"] == "Succeeded", (done["status"], logs)
    assert json.loads(logs) == {"storedFlow": f"{pods}/etl", "files": sorted(FILES), "bad": [],
                                "flow": FILES["flow.py"].decode()}
