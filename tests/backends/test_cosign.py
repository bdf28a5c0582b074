"""Docker storage images signed the way cosign signs them, checked by the real cosign CLI
(``cosign verify --key … --insecure-ignore-tlog``, offline) against the real local registry:
the signature flowstore pushes is accepted, and a tampered image or signature is refused."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from flowstore.artifacts.signing import Signer, signer_from_secret
from flowstore.storage.docker import cosign
from flowstore.storage.docker.oci import MEDIA_OCI_MANIFEST, RegistryClient, sha256_digest
from tests.helpers.cosign import cosign_verify, install_cosign


@pytest.fixture(scope="module")
def cosign_bin() -> str:
    return install_cosign()


def new_signer(tmp_path: Path, name: str) -> tuple[Signer, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = signer_from_secret(pem, "ed25519", where="test")
    public = tmp_path / f"{name}.pub"
    assert signer.public_pem is not None
    public.write_text(signer.public_pem)
    return signer, public


def push_image(client: RegistryClient, repo: str, content: bytes) -> str:
    """A one-layer OCI image with `content` as its only file; its manifest digest."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("flow.py")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha256_digest(raw.getvalue())]}}).encode()
    client.push_blob(repo, layer)
    client.push_blob(repo, config)
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                           "digest": sha256_digest(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                            "digest": sha256_digest(layer)}]}
    return client.push_manifest(repo, f"t-{uuid.uuid4().hex[:8]}", json.dumps(manifest).encode(), MEDIA_OCI_MANIFEST)


def test_cosign_accepts_flowstores_signature_and_rejects_tampering(docker_env: dict[str, str], cosign_bin: str,
                                                                    tmp_path: Path) -> None:
    registry = docker_env["registry"]
    client = RegistryClient(registry, docker_env["username"], docker_env["password"], scheme="http")
    repo = f"test/signed-{uuid.uuid4().hex[:10]}"
    repository = f"{registry}/{repo}"
    signer, public = new_signer(tmp_path, "flowstore")
    other, other_public = new_signer(tmp_path, "other")
    creds = {"username": docker_env["username"], "password": docker_env["password"], "home": tmp_path}

    digest = push_image(client, repo, b"flow = 1\n")
    tag = cosign.sign_image(client, repo, repository, digest, signer,
                            annotations={"flowstore.dev/flowstorage": "data/images"})
    assert tag == cosign.signature_tag(digest) == f"sha256-{digest.removeprefix('sha256:')}.sig"
    assert cosign.sign_image(client, repo, repository, digest, signer,
                             annotations={"flowstore.dev/flowstorage": "data/images"}) == tag  # idempotent
    assert len(cosign.signatures(client, repo, digest)) == 1

    done = cosign_verify(cosign_bin, f"{repository}@{digest}", public, **creds)
    assert done.returncode == 0, done.stderr
    verified = json.loads(done.stdout.strip().splitlines()[-1])
    assert verified[0]["critical"]["image"]["docker-manifest-digest"] == digest
    assert verified[0]["optional"] == {"flowstore.dev/flowstorage": "data/images"}
    assert cosign.verify_image(client, repo, repository, digest, serialization.load_pem_public_key(public.read_bytes()))

    # another key: refused
    done = cosign_verify(cosign_bin, f"{repository}@{digest}", other_public, **creds)
    assert done.returncode != 0

    # a tampered image (another digest, the same tag): no signature covers it
    tampered = push_image(client, repo, b"import os; os.system('curl evil')\n")
    done = cosign_verify(cosign_bin, f"{repository}@{tampered}", public, **creds)
    assert done.returncode != 0 and "no signatures found" in done.stderr.lower()

    # the genuine signature copied to the tampered image's signature tag: it names the other digest
    genuine = client.manifest(repo, tag, resolve_index=False)
    client.push_manifest(repo, cosign.signature_tag(tampered), genuine.raw, MEDIA_OCI_MANIFEST)
    done = cosign_verify(cosign_bin, f"{repository}@{tampered}", public, **creds)
    assert done.returncode != 0

    # a signature whose bytes were changed: refused
    doc = json.loads(genuine.raw)
    raw = base64.b64decode(doc["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION])
    doc["layers"][0]["annotations"][cosign.SIGNATURE_ANNOTATION] = base64.b64encode(
        bytes([raw[0] ^ 1]) + raw[1:]).decode()
    client.push_manifest(repo, tag, json.dumps(doc).encode(), MEDIA_OCI_MANIFEST)
    done = cosign_verify(cosign_bin, f"{repository}@{digest}", public, **creds)
    assert done.returncode != 0

    # signing again (a key rotation) keeps the signature image, adds a layer: both keys verify
    client.push_manifest(repo, tag, genuine.raw, MEDIA_OCI_MANIFEST)
    cosign.sign_image(client, repo, repository, digest, other)
    assert len(cosign.signatures(client, repo, digest)) == 2
    for key in (public, other_public):
        done = cosign_verify(cosign_bin, f"{repository}@{digest}", key, **creds)
        assert done.returncode == 0, done.stderr


def test_hmac_keys_do_not_sign_images(docker_env: dict[str, str]) -> None:
    client = RegistryClient(docker_env["registry"], docker_env["username"], docker_env["password"], scheme="http")
    hmac_signer = signer_from_secret(b"k3y-for-signing-flows-0123456789", "hmac", where="test")
    with pytest.raises(Exception, match="only ed25519 keys sign images"):
        cosign.sign_image(client, "test/x", "registry/test/x", "sha256:" + "0" * 64, hmac_signer)
