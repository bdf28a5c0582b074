"""Flow images against the local registry (distribution, with credentials): pushed through the
Docker storage's registry client, read back and checked, stored under the digest computed here."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.errors import AuthFailed, IntegrityError
from flowstore.storage.oci import MANIFEST_PATH, build_flow_image, push_flow_image, read_flow_image
from flowstore.storage.oci.image import LABEL_MANIFEST_DIGEST, FlowImage, sha256_digest

DIGEST = "sha256:" + "0f" * 32
FILES = {"flow.py": b"from prefect import Flow\nflow = Flow('etl')\n", "lib/helpers.py": b"X = 1\n"}


@pytest.fixture
def client(docker_env: dict[str, str]) -> RegistryClient:
    return RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")


@pytest.fixture
def repo() -> str:
    return f"flows/oci-{uuid.uuid4().hex[:8]}"


def test_a_pushed_image_is_stored_under_the_digest_computed_here(
        client: RegistryClient, repo: str, docker_env: dict[str, str]) -> None:
    image = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    pushed = push_flow_image(client, repo, image)
    assert pushed.digest == image.digest
    assert pushed.bytes_sent == len(image.layer) + len(image.config)
    # the registry serves exactly these bytes under that digest, with its own digest header
    resp = requests.get(f"http://{docker_env['registry']}/v2/{repo}/manifests/{image.digest}", timeout=10,
                        auth=(docker_env["username"], docker_env["password"]),
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status_code == 200, resp.text
    assert resp.content == image.manifest
    assert resp.headers["Docker-Content-Digest"] == image.digest
    assert resp.headers["Content-Type"].startswith("application/vnd.oci.image.manifest.v1+json")

    stored = read_flow_image(client, repo, image.digest)
    assert (stored.digest, stored.stored_flow, stored.flow_digest) == (image.digest, "team-a/etl", DIGEST)
    assert stored.files == {path: sha256_digest(data) for path, data in FILES.items()}
    assert client.read_file(repo, image.digest, "/lib/helpers.py") == FILES["lib/helpers.py"]


def test_pushing_the_same_revision_again_sends_nothing_and_a_tag_names_the_same_digest(
        client: RegistryClient, repo: str) -> None:
    first = push_flow_image(client, repo, build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST))
    again = push_flow_image(client, repo, build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST),
                            tag="r1")
    assert again.bytes_sent == 0
    assert again.digest == first.digest == client.manifest_digest(repo, "r1")


def test_an_image_whose_manifest_file_does_not_match_its_label_is_refused(client: RegistryClient, repo: str) -> None:
    """A registry writer who swaps the file manifest (or the label) makes an image that does
    not check: read_flow_image refuses it instead of handing out its file list."""
    real = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    config = json.loads(real.config)
    config["config"]["Labels"][LABEL_MANIFEST_DIGEST] = sha256_digest(b"another manifest")
    config_blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.loads(real.manifest)
    manifest["config"].update(digest=sha256_digest(config_blob), size=len(config_blob))
    forged = FlowImage(layer=real.layer, config=config_blob, files_manifest=real.files_manifest,
                       manifest=json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    push_flow_image(client, repo, forged)
    with pytest.raises(IntegrityError, match=MANIFEST_PATH):
        read_flow_image(client, repo, forged.digest)


def test_an_image_that_is_not_a_flow_image_is_refused(client: RegistryClient, repo: str) -> None:
    real = build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST)
    config = json.loads(real.config)
    del config["config"]["Labels"]
    config_blob = json.dumps(config).encode()
    manifest = json.loads(real.manifest)
    manifest["config"].update(digest=sha256_digest(config_blob), size=len(config_blob))
    other = FlowImage(layer=real.layer, config=config_blob, files_manifest=b"", manifest=json.dumps(manifest).encode())
    push_flow_image(client, repo, other)
    with pytest.raises(IntegrityError, match="not a flow image"):
        read_flow_image(client, repo, other.digest)


def test_pushing_without_credentials_is_an_auth_failure(docker_env: dict[str, str], repo: str) -> None:
    anonymous = RegistryClient(docker_env["registry"], scheme="http")
    with pytest.raises(AuthFailed):
        push_flow_image(anonymous, repo, build_flow_image(FILES, stored_flow="team-a/etl", flow_digest=DIGEST))
