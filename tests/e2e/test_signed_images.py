"""Docker storage images signed for everyone else (docs/signing.md): with an ed25519 spec.signing
the real operator pushes a cosign signature beside each image it builds, which the real cosign
CLI accepts offline with the FlowStorage's public key; a rotation adds the new key's signature;
agents verify the flow's statement as for any storage. The same for an oci storage's images, one
per revision (docs/oci-volumes.md)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.e2e.test_docker import docker_storage, flow, manifests, registry_secret
from tests.helpers.cosign import cosign_verify, install_cosign
from tests.helpers.kube import apply, kubectl, wait_for, wait_ready
from tests.helpers.manifests import secret
from tests.helpers.operator import OperatorProcess

pytestmark = pytest.mark.timeout(900)


def key_pair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode(),
            key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.fixture(scope="module")
def cosign_bin() -> str:
    return install_cosign()


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    kubectl("delete", "storedflows,flowstorages", "--all", "-n", namespace, "--wait=false", check=False)


def test_images_carry_a_cosign_signature_cosign_accepts(operator: OperatorProcess, namespace: str,
                                                        docker_env: dict[str, str], cosign_bin: str,
                                                        tmp_path: Path) -> None:
    private, public = key_pair()
    (tmp_path / "flowstore.pub").write_text(public)
    image = f"flows-{uuid.uuid4().hex[:8]}"
    signing = secret(namespace, "signing", {"FLOWSTORE_SIGNING_KEY": private})  # opted in, as policy wants
    fs = docker_storage(namespace, docker_env, image=image)
    fs["spec"]["signing"] = {"provider": "ed25519", "secretRef": {"name": "signing"}}
    apply(manifests(registry_secret(namespace, docker_env), signing, fs, flow(namespace, "etl"),
                    flow(namespace, "report", "return 7")))
    etl = wait_ready(namespace, "etl", timeout=600)["status"]
    report = wait_ready(namespace, "report", timeout=600)["status"]
    digest = etl["image"]["digest"]
    tag = etl["image"]["signatureTag"]
    # each flow's image is signed (one image, or two when the burst was built in two goes)
    assert tag == f"sha256-{digest.removeprefix('sha256:')}.sig"
    assert report["image"]["signatureTag"] == f"sha256-{report['image']['digest'].removeprefix('sha256:')}.sig"
    reference = f"{docker_env['registry']}/{image}@{digest}"
    done = cosign_verify(cosign_bin, reference, tmp_path / "flowstore.pub", username=docker_env["username"],
                         password=docker_env["password"], home=tmp_path)
    print(done.stdout[-600:], done.stderr[-600:])
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])[0]
    assert payload["critical"]["image"]["docker-manifest-digest"] == digest
    assert payload["optional"] == {"flowstore.dev/flowstorage": f"{namespace}/images"}

    # another key: cosign refuses
    _, other_public = key_pair()
    (tmp_path / "other.pub").write_text(other_public)
    assert cosign_verify(cosign_bin, reference, tmp_path / "other.pub", username=docker_env["username"],
                         password=docker_env["password"], home=tmp_path).returncode != 0

    # a new key (a new Secret, and the FlowStorage pointed at it): the same image is signed by it
    # too, nothing is built again
    new_private, new_public = key_pair()
    (tmp_path / "new.pub").write_text(new_public)
    rotated = secret(namespace, "signing-2", {"FLOWSTORE_SIGNING_KEY": new_private})
    fs["spec"]["signing"]["secretRef"]["name"] = "signing-2"
    tags_before = registry_tags(docker_env, image)
    apply(manifests(rotated, fs))
    wait_for("storedflow", namespace, "etl",
             lambda o: ((o.get("status") or {}).get("image") or {}).get("signatureKeyId", "") not in (
                 "", etl["image"].get("signatureKeyId")), timeout=120)
    for key in ("flowstore.pub", "new.pub"):
        done = cosign_verify(cosign_bin, reference, tmp_path / key, username=docker_env["username"],
                             password=docker_env["password"], home=tmp_path)
        assert done.returncode == 0, done.stderr
    assert registry_tags(docker_env, image) == tags_before  # no new image, the same signature tag


def test_a_revert_to_an_older_image_records_its_signature_with_it(operator: OperatorProcess, namespace: str,
                                                                    docker_env: dict[str, str], cosign_bin: str,
                                                                    tmp_path: Path) -> None:
    """A revert makes an older image current again (nothing built): the status that names it
    names its cosign signature by the current key too, in the same write."""
    private, public = key_pair()
    (tmp_path / "flowstore.pub").write_text(public)
    image = f"flows-{uuid.uuid4().hex[:8]}"
    signing = secret(namespace, "signing", {"FLOWSTORE_SIGNING_KEY": private})
    fs = docker_storage(namespace, docker_env, image=image)
    fs["spec"]["signing"] = {"provider": "ed25519", "secretRef": {"name": "signing"}}
    apply(manifests(registry_secret(namespace, docker_env), signing, fs, flow(namespace, "etl")))
    first = wait_ready(namespace, "etl", timeout=600)["status"]["image"]
    apply(manifests(flow(namespace, "etl", "return 43")))
    wait_for("storedflow", namespace, "etl", lambda o: ((o.get("status") or {}).get("image") or {}).get(
        "digest") not in (None, first["digest"]), timeout=600)
    apply(manifests(flow(namespace, "etl")))  # the revert
    reverted = wait_for("storedflow", namespace, "etl", lambda o: ((o.get("status") or {}).get("image") or {}).get(
        "digest") == first["digest"], timeout=300)["status"]
    assert reverted["artifact"]["revision"] == 1 and reverted["artifact"]["designation"] == 3
    assert reverted["image"]["signatureTag"] == first["signatureTag"]
    assert reverted["image"]["signatureKeyId"] == reverted["artifact"]["keyId"]
    reference = f"{docker_env['registry']}/{image}@{first['digest']}"
    done = cosign_verify(cosign_bin, reference, tmp_path / "flowstore.pub", username=docker_env["username"],
                         password=docker_env["password"], home=tmp_path)
    assert done.returncode == 0, done.stderr


def registry_tags(docker_env: dict[str, str], image: str) -> list[str]:
    import requests

    answer = requests.get(f"http://{docker_env['registry']}/v2/{image}/tags/list", timeout=10,
                          auth=(docker_env["username"], docker_env["password"]))
    return sorted(answer.json().get("tags") or [])


def test_oci_revision_images_are_signed_and_a_revert_keeps_its_signature(
        operator: OperatorProcess, namespace: str, docker_env: dict[str, str], cosign_bin: str,
        tmp_path: Path) -> None:
    """An oci FlowStorage (one image per revision, docs/oci-volumes.md) with an ed25519 key: each
    revision's image gets a cosign signature the real cosign accepts offline, by digest; another
    key is refused; a revert makes revision 1's image current with its signature, pushing nothing
    but (at most) the signature again."""
    private, public = key_pair()
    (tmp_path / "flowstore.pub").write_text(public)
    path = f"flows/oci-signed-{uuid.uuid4().hex[:8]}"
    repository = f"{docker_env['registry']}/{path}"
    fs = {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage", "metadata": {"name": "images",
                                                                                      "namespace": namespace},
          "spec": {"oci": {"repository": repository, "plainHTTP": True,
                           "credentialsSecretRef": {"name": "registry-creds"}},
                   "signing": {"provider": "ed25519", "secretRef": {"name": "signing"}}}}

    def stored(text: str) -> dict[str, Any]:
        return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                "metadata": {"name": "etl", "namespace": namespace},
                "spec": {"storageRef": {"name": "images"}, "flowName": "etl", "storedAsScript": True,
                         "source": {"inline": f"def main():\n    return {text!r}\n"}}}

    def verify(digest: str, key: str) -> subprocess.CompletedProcess[str]:
        return cosign_verify(cosign_bin, f"{repository}@{digest}", tmp_path / key, username=docker_env["username"],
                             password=docker_env["password"], home=tmp_path)

    apply(manifests(registry_secret(namespace, docker_env),
                    secret(namespace, "signing", {"FLOWSTORE_SIGNING_KEY": private}), fs, stored("one")))
    first = wait_ready(namespace, "etl", timeout=120)["status"]
    image = first["image"]
    assert image["name"] == repository
    assert image["signatureTag"] == f"sha256-{image['digest'].removeprefix('sha256:')}.sig"
    assert image["signatureKeyId"] == first["artifact"]["keyId"]
    done = verify(image["digest"], "flowstore.pub")
    assert done.returncode == 0, done.stderr
    claim = json.loads(done.stdout.strip().splitlines()[-1])[0]
    assert claim["critical"]["image"]["docker-manifest-digest"] == image["digest"]
    assert claim["critical"]["identity"]["docker-reference"] == repository
    assert claim["optional"] == {"flowstore.dev/flowstorage": f"{namespace}/images"}
    _, other_public = key_pair()
    (tmp_path / "other.pub").write_text(other_public)
    assert verify(image["digest"], "other.pub").returncode != 0

    # revision 2: its own image, its own signature
    apply(manifests(stored("two")))
    second = wait_for("storedflow", namespace, "etl", lambda o: ((o.get("status") or {}).get("image") or {}).get(
        "digest") not in (None, image["digest"]), timeout=120)["status"]["image"]
    assert second["signatureTag"] == f"sha256-{second['digest'].removeprefix('sha256:')}.sig"
    assert verify(second["digest"], "flowstore.pub").returncode == 0
    # the revert: revision 1's image is current again, with its signature in the same status
    apply(manifests(stored("one")))
    reverted = wait_for("storedflow", namespace, "etl", lambda o: ((o.get("status") or {}).get("image") or {}).get(
        "digest") == image["digest"], timeout=120)["status"]
    assert reverted["artifact"]["revision"] == 1
    assert (reverted["image"]["signatureTag"], reverted["image"]["signatureKeyId"]) == (
        image["signatureTag"], image["signatureKeyId"])
    assert verify(image["digest"], "flowstore.pub").returncode == 0
    # the tags: one per location (loc-…) and one signature per image; nothing else
    tags = registry_tags(docker_env, path)
    assert sorted(t for t in tags if t.endswith(".sig")) == sorted([image["signatureTag"], second["signatureTag"]])
    assert len([t for t in tags if t.startswith("loc-")]) == 1, tags
