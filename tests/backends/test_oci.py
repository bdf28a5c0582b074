"""The OCI storage against the local registry (distribution, htpasswd auth): the shared
conformance suite, then what only this backend does (one image per revision, by digest)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from flowstore.artifacts import bundle
from flowstore.storage import AuthFailed, InvalidConfig, from_serialized
from flowstore.storage.base import sha256_hex
from flowstore.storage.docker.oci import RegistryClient
from flowstore.storage.oci import MANIFEST_PATH
from flowstore.storage.oci.image import build_flow_image
from flowstore.storage.oci.storage import BUNDLE_LOCATION, OCI, location_tag

from .conformance import StorageConformance, StorageFactory


def dockerconfigjson(env: dict[str, str]) -> dict[str, str]:
    """A kubernetes.io/dockerconfigjson Secret's decoded data for the local registry."""
    auth = base64.b64encode(f"{env['username']}:{env['password']}".encode()).decode()
    return {".dockerconfigjson": json.dumps({"auths": {env["registry"]: {"auth": auth}}})}


@pytest.fixture
def repository(docker_env: dict[str, str]) -> str:
    return f"{docker_env['registry']}/flows/oci-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def agent_docker_config(docker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent's registry login, as docker login writes it (status.storage carries no secret)."""
    directory = tmp_path / "docker-config"
    directory.mkdir()
    (directory / "config.json").write_text(dockerconfigjson(docker_env)[".dockerconfigjson"])
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


class TestOCI(StorageConformance):
    default_label_prefix = "oci-flow-storage"

    @pytest.fixture
    def storage_factory(self, docker_env: dict[str, str], repository: str,
                        agent_docker_config: None) -> StorageFactory:
        def make(**kwargs: Any) -> OCI:
            return OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), **kwargs)

        return make


def test_each_put_is_an_image_by_digest_and_the_tag_follows_the_location(
        docker_env: dict[str, str], repository: str) -> None:
    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow="team-a/etl")
    first = storage.put_bytes("flow.py", b"print('one')\n")
    second = storage.put_bytes("flow.py", b"print('two')\n")
    one, two = first.storage_state["imageDigest"], second.storage_state["imageDigest"]
    assert one != two
    # the same revision is the same image, on any machine: built here without a registry
    assert one == build_flow_image({"flow.py": b"print('one')\n"}, stored_flow="team-a/etl",
                                   flow_digest="sha256:" + sha256_hex(b"print('one')\n")).digest
    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    path = repository.split("/", 1)[1]
    assert client.manifest_digest(path, location_tag("flow.py")) == two
    # the first revision stays readable by digest after the tag moved
    reader = OCI.from_config({"repository": repository, "plainHTTP": True}, credentials=dockerconfigjson(docker_env))
    reader.restore_state(first.storage_state)
    assert reader.get_bytes("flow.py") == b"print('one')\n"
    held = reader.read_image(str(one))
    assert held.stored_flow == "team-a/etl" and held.files == {"flow.py": "sha256:" + sha256_hex(b"print('one')\n")}
    assert client.read_file(path, str(one), "/" + MANIFEST_PATH).startswith(b'{"files"')


def test_a_bundle_is_unpacked_beside_itself(docker_env: dict[str, str], repository: str) -> None:
    files = {"etl/main.py": b"from etl.lib import X\n", "etl/lib.py": b"X = 1\n", "etl/__init__.py": b""}
    data = bundle.pack(files, bundle.Entrypoint.parse("etl/main.py:flow"))
    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow="ns/b")
    stored = storage.put_bytes(BUNDLE_LOCATION, data)
    held = storage.read_image(str(stored.storage_state["imageDigest"]))
    assert set(held.files) >= {BUNDLE_LOCATION, *files}
    assert storage.get_bytes(BUNDLE_LOCATION) == data
    storage.restore_state(stored.storage_state)  # the revision's image: its unpacked files too
    assert storage.get_bytes("etl/lib.py") == b"X = 1\n"


def test_the_status_document_names_the_digest_and_no_secret(
        docker_env: dict[str, str], repository: str, agent_docker_config: None) -> None:
    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env))
    stored = storage.put_bytes("flow.py", b"x = 1\n")
    storage.restore_state(stored.storage_state)
    doc = storage.to_status()
    assert doc["imageDigest"] == stored.storage_state["imageDigest"]
    assert docker_env["password"] not in json.dumps(doc) and docker_env["password"] not in repr(storage)
    assert from_serialized(doc).get_bytes("flow.py") == b"x = 1\n"  # the agent's own login


def test_the_operator_without_a_secret_is_anonymous(
        docker_env: dict[str, str], repository: str, agent_docker_config: None) -> None:
    """A FlowStorage spec (no `type`) never uses the process's Docker config: the registry
    refuses the anonymous push, and the message says what to set."""
    storage = OCI.from_config({"repository": repository, "plainHTTP": True})
    with pytest.raises(AuthFailed, match="credentialsSecretRef"):
        storage.put_bytes("flow.py", b"x = 1\n")


@pytest.mark.parametrize("repository_value", ["registry.example.com", "Registry.example.com/Flows",
                                              "host/flows:tag", "host/flows@sha256:" + "a" * 64, "", None])
def test_bad_repositories_are_refused(repository_value: Any) -> None:
    with pytest.raises(InvalidConfig, match="REGISTRY_HOST"):
        OCI.from_config({"repository": repository_value})


def test_a_location_outside_the_image_is_refused(docker_env: dict[str, str], repository: str) -> None:
    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env))
    for bad in ("../x.py", "/abs.py", MANIFEST_PATH):
        with pytest.raises(InvalidConfig):
            storage.put_bytes(bad, b"x")


def test_the_init_fallback_pulls_by_digest_and_checks(docker_env: dict[str, str], repository: str, tmp_path: Path,
                                                      agent_docker_config: None) -> None:
    """`python -m flowstore.mounted pull`: the image fetched by digest (the Secret as DOCKER_CONFIG)
    into an empty directory and checked; another revision's digest is refused."""
    from flowstore import mounted

    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow="data/etl")
    stored = storage.put_bytes("flow.py", b"print('fallback')\n")
    reference = storage.reference(str(stored.storage_state["imageDigest"]))
    got = mounted.pull_into(reference, "sha256:" + stored.sha256, str(tmp_path / "a"), plain_http=True)
    assert got.stored_flow == "data/etl" and (tmp_path / "a" / "flow.py").read_bytes() == b"print('fallback')\n"
    with pytest.raises(mounted.MountError, match="not the recorded"):
        mounted.pull_into(reference, "sha256:" + "0" * 64, str(tmp_path / "b"), plain_http=True)


def test_the_operator_reaches_only_registries_its_endpoint_policy_allows(docker_env: dict[str, str]) -> None:
    """A FlowStorage names any host: the operator's endpoint policy decides (the SSRF guard the
    Webhook has). The local registry is on 127.0.0.1: allowed only with --allow-private-endpoints."""
    from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy
    from flowstore.storage.policy import ServePolicy

    block = {"repository": f"{docker_env['registry']}/flows/x", "plainHTTP": True}
    strict = ServePolicy(endpoints=EndpointPolicy(allow_private=False))
    with pytest.raises(EndpointNotAllowed, match="--allow-private-endpoints"):
        OCI.for_operator(block, credentials=dockerconfigjson(docker_env), policy=strict)
    with pytest.raises(EndpointNotAllowed, match="metadata"):
        OCI.for_operator({"repository": "169.254.169.254/flows/x"}, credentials=None,
                         policy=ServePolicy(endpoints=EndpointPolicy(allow_private=True)))
    lenient = ServePolicy(endpoints=EndpointPolicy(allow_private=True))
    OCI.for_operator(block, credentials=dockerconfigjson(docker_env), policy=lenient).check_container()


def test_an_image_is_signed_as_cosign_signs_in_its_own_repository(docker_env: dict[str, str], repository: str) -> None:
    """OCI.sign_image pushes the Docker storage's cosign signature (flowstore.storage.docker.cosign)
    beside the revision's image; the real cosign checks it in tests/e2e/test_signed_images.py."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from flowstore.artifacts.signing import signer_from_secret
    from flowstore.storage.docker import cosign

    key = ed25519.Ed25519PrivateKey.generate()
    signer = signer_from_secret(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), "ed25519", where="test")
    storage = OCI(repository, plain_http=True, credentials=dockerconfigjson(docker_env), stored_flow="team-a/etl")
    digest = str(storage.put_bytes("flow.py", b"print('one')\n").storage_state["imageDigest"])
    annotations = {"flowstore.dev/flowstorage": "team-a/images"}
    tag = storage.sign_image(digest, signer, annotations=annotations)
    assert tag == cosign.signature_tag(digest)
    assert storage.sign_image(digest, signer, image_name=repository, annotations=annotations) == tag  # nothing new
    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    path = repository.split("/", 1)[1]
    assert len(cosign.signatures(client, path, digest)) == 1
    assert cosign.verify_image(client, path, repository, digest, key.public_key())
    assert not cosign.verify_image(client, path, repository, digest, ed25519.Ed25519PrivateKey.generate().public_key())
    # the mount still reads as the revision: a signature is a tag of its own, not a change to the image
    assert storage.read_image(digest).flow_digest == "sha256:" + sha256_hex(b"print('one')\n")
    with pytest.raises(InvalidConfig, match="not on this storage's registry"):
        storage.sign_image(digest, signer, image_name="elsewhere.example.com/flows/etl")
