"""Image volumes on the local node (`volumes[].image`, KEP-4639: on by default from Kubernetes 1.35,
mounted by containerd >= 2.1): a Pod mounts a small image from the local registry, pinned by
digest, read-only, and reads a file of it. The registry wants credentials, so the Pod's
imagePullSecrets serve the volume's pull as they serve its containers'; without them the pull
is refused and the Pod never starts."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from localcloud.pause import PAUSE_IMAGE
from tests.cluster.conftest import IMAGE_REPOSITORY, pull_secret
from tests.helpers.kube import kubectl, wait_for


@pytest.fixture
def pods(node_env: dict[str, str], namespace: str) -> Iterator[str]:
    """The test's namespace; its Pods are deleted afterwards (no namespace controller runs)."""
    yield namespace
    kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", "--wait=true",
            "--timeout=60s", check=False)


@pytest.fixture(scope="module")
def reader_image(operator_image: Callable[[str], str], docker_env: dict[str, str]) -> str:
    """An image with Python in the local registry (the operator's) for the container that reads."""
    return f"{docker_env['registry']}/{IMAGE_REPOSITORY}:{operator_image('volumes')}"


@pytest.fixture(scope="module")
def data_image(docker_env: dict[str, str]) -> tuple[str, str]:
    """A one-file image (FROM scratch: a proper image config, which containerd needs to mount it)
    pushed to the local registry; returns (repository@digest, the file's content)."""
    import docker
    import requests

    message = f"mounted from an image {uuid.uuid4().hex}\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY message.txt /data/message.txt\n"),
                           ("message.txt", message.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    repository = f"{docker_env['registry']}/volumes/data"
    tag = f"{repository}:{uuid.uuid4().hex[:8]}"
    client = docker.DockerClient(base_url=docker_env["docker_host"], timeout=300)
    try:
        built = list(client.api.build(fileobj=context, custom_context=True, tag=tag, decode=True, rm=True))
        assert not [c for c in built if "errorDetail" in c], built
        auth = {"username": docker_env["username"], "password": docker_env["password"]}
        pushed = list(client.api.push(tag, auth_config=auth, stream=True, decode=True))
        assert not [c for c in pushed if "errorDetail" in c], pushed
    finally:
        client.close()
    path = tag.partition("/")[2].rpartition(":")
    head = requests.head(f"http://{docker_env['registry']}/v2/{path[0]}/manifests/{path[2]}", timeout=10,
                         auth=(docker_env["username"], docker_env["password"]),
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                            "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.status_code == 200, head.status_code
    digest = head.headers["Docker-Content-Digest"]
    assert digest.startswith("sha256:")
    return f"{repository}@{digest}", message


def pod(namespace: str, name: str, image: str, command: list[str], volume: dict[str, Any],
        pull_policy: str = "IfNotPresent", **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "containers": [{"name": "main", "image": image, "command": command, "imagePullPolicy": pull_policy,
                                 "volumeMounts": [{"name": "flow", "mountPath": "/flow"}]}],
                 "volumes": [{"name": "flow", "image": volume}], **spec},
    })


READ = """
import os
print(open("/flow/data/message.txt").read(), end="")
try:
    open("/flow/data/written", "w")
    print("writable")
except OSError as e:
    print("read-only" if e.errno == 30 else f"error {e.errno}")
"""


def test_a_pod_reads_a_file_from_an_image_mounted_by_digest(
        pods: str, reader_image: str, data_image: tuple[str, str], docker_env: dict[str, str]) -> None:
    reference, message = data_image
    secret = pull_secret(pods, docker_env)
    kubectl("apply", "-f", "-", input=pod(pods, "reader", reader_image, ["python3", "-c", READ],
                                          {"reference": reference, "pullPolicy": "Always"},
                                          imagePullSecrets=[{"name": secret}]))
    done = wait_for("pod", pods, "reader", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
                    timeout=180, what="to finish")
    logs = kubectl("logs", "reader", "-n", pods).stdout
    assert done["status"]["phase"] == "Succeeded", (done["status"], logs)
    # the file, and a mount the container cannot write (EROFS)
    assert logs == message + "read-only\n", logs


def test_the_volume_is_pulled_with_the_pods_image_pull_secrets(
        pods: str, data_image: tuple[str, str], docker_env: dict[str, str]) -> None:
    """The container is the node's own pause image (nothing to pull), so only the volume needs the
    registry: pulled Always, refused without credentials, mounted with them."""
    reference, _ = data_image
    volume = {"reference": reference, "pullPolicy": "Always"}
    kubectl("apply", "-f", "-", input=pod(pods, "no-secret", PAUSE_IMAGE, ["/pause"], volume, pull_policy="Never"))
    waiting = wait_for("pod", pods, "no-secret", lambda p: _pull_failed(pods, "no-secret"), timeout=120,
                       what="to fail pulling its image volume")
    assert waiting["status"]["phase"] == "Pending", waiting["status"]
    messages = _event_messages(pods, "no-secret")
    assert "401 Unauthorized" in messages or "authorization failed" in messages, messages

    secret = pull_secret(pods, docker_env)
    kubectl("apply", "-f", "-", input=pod(pods, "with-secret", PAUSE_IMAGE, ["/pause"], volume,
                                          pull_policy="Never", imagePullSecrets=[{"name": secret}]))
    running = wait_for("pod", pods, "with-secret", lambda p: p["status"].get("phase") == "Running", timeout=120,
                       what="to run")
    assert running["status"]["containerStatuses"][0]["ready"] is True


def _event_messages(namespace: str, name: str) -> str:
    events = json.loads(kubectl("get", "events", "-n", namespace, "--field-selector",
                                f"involvedObject.name={name}", "-o", "json").stdout)["items"]
    return " ".join(e.get("message", "") for e in events)


def _pull_failed(namespace: str, name: str) -> bool:
    text = _event_messages(namespace, name)
    return "Failed to pull image" in text or "ErrImagePull" in text or "401 Unauthorized" in text
