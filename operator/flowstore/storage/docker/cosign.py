"""Signatures others can verify: a Docker storage's image signed the way cosign signs, pushed
beside it in the registry.

Whoever pulls a Docker storage's image — a kubelet, a Flux ``OCIRepository``, an admission
controller — can check, with the FlowStorage's public key and no flowstore code, that flowstore
built exactly that image. The signature is cosign's "simple signing" format, stored as cosign
stores it, so ``cosign verify --key flowstore.pub --insecure-ignore-tlog IMAGE@DIGEST`` accepts
it offline (no Rekor transparency log, no Fulcio certificate: a key pair, as ``cosign sign
--key`` with ``--tlog-upload=false`` makes):

* the **payload** is the simple-signing JSON naming the image's repository and manifest digest
  (``{"critical": {"identity": {"docker-reference": REPO}, "image": {"docker-manifest-digest":
  DIGEST}, "type": "cosign container image signature"}, "optional": …}``);
* the **signature** is the FlowStorage's ed25519 key over the payload (cosign verifies ed25519
  keys over the payload itself, ECDSA keys over its SHA-256), base64 in the layer annotation
  ``dev.cosignproject.cosign/signature``;
* the **signature image** is an OCI manifest whose layers are payloads
  (``application/vnd.dev.cosign.simplesigning.v1+json``), tagged ``sha256-<hex>.sig`` in the
  image's own repository (cosign's tag scheme). Signing again with another key (a rotation) adds
  a layer; the same key and payload are never added twice.

Only ed25519 keys sign images (an HMAC key cannot: nobody else could verify it). The optional
annotations carry the FlowStorage and its flows, which ``cosign verify -a`` can require.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from typing import Any

from flowstore.artifacts.signing import ED25519_PREFIX, Signer
from flowstore.storage.docker.oci import MEDIA_OCI_MANIFEST, RegistryClient, sha256_digest
from flowstore.storage.errors import NotFound, Rejected

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
COSIGN_TYPE = "cosign container image signature"
#: one signer at a time per repository in this process: the StoredFlows of one storage share its
#: image, and two reconciles uploading the same signature blobs at once can make the registry
#: refuse the manifest that names them (a blob it has not committed yet)
_repository_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def signature_tag(digest: str) -> str:
    """cosign's tag for the signatures of the manifest `digest`: ``sha256-<hex>.sig``."""
    algorithm, _, hex_digest = digest.partition(":")
    return f"{algorithm}-{hex_digest}.sig"


def payload(repository: str, digest: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """The simple-signing payload for the image `repository@digest` (`repository` as the image is
    pulled, ``registry/path/name``), with cosign's member order and compact separators."""
    doc = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_TYPE,
        },
        "optional": dict(annotations) if annotations else None,
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def sign_image(client: RegistryClient, repo: str, repository: str, digest: str, signer: Signer, *,
               annotations: Mapping[str, str] | None = None) -> str:
    """Sign the image `repo@digest` (`repo`: its path in the registry; `repository`: the full name
    the payload names) with `signer`'s ed25519 key and push the signature image, keeping the
    signatures already there. Returns the signature image's tag. Nothing is pushed when this
    payload is already signed by this key."""
    if signer.provider != "ed25519":
        raise Rejected("only ed25519 keys sign images (an HMAC signature could be checked by nobody else): set "
                       "spec.signing.provider: ed25519")
    with _repository_lock(client.host, repo):
        return _sign_image(client, repo, repository, digest, signer, annotations)


def _repository_lock(host: str, repo: str) -> threading.Lock:
    with _locks_guard:
        return _repository_locks.setdefault((host, repo), threading.Lock())


def _sign_image(client: RegistryClient, repo: str, repository: str, digest: str, signer: Signer,
                annotations: Mapping[str, str] | None) -> str:
    body = payload(repository, digest, annotations)
    signature = signer.sign(body)
    raw_signature = signature[len(ED25519_PREFIX):]
    layer = {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": len(body), "digest": sha256_digest(body),
             "annotations": {SIGNATURE_ANNOTATION: raw_signature}}
    tag = signature_tag(digest)
    layers = _existing_layers(client, repo, tag)
    if any(_same(existing, layer) for existing in layers):
        return tag
    layers.append(layer)
    client.push_blob(repo, body)
    config = json.dumps({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z", "config": {},
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
        "rootfs": {"type": "layers", "diff_ids": [entry["digest"] for entry in layers]},
    }, separators=(",", ":")).encode()
    client.push_blob(repo, config)
    manifest = {
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": len(config), "digest": sha256_digest(config)},
        "layers": layers,
    }
    client.push_manifest(repo, tag, json.dumps(manifest, separators=(",", ":")).encode(), MEDIA_OCI_MANIFEST)
    return tag


def signatures(client: RegistryClient, repo: str, digest: str) -> list[tuple[bytes, str]]:
    """(payload, base64 signature) of every signature pushed for `repo@digest` (each payload
    read from the registry and checked against its digest)."""
    out = []
    for layer in _existing_layers(client, repo, signature_tag(digest)):
        signature = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if layer.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE and isinstance(signature, str):
            out.append((client.blob(repo, str(layer["digest"])), signature))
    return out


def verify_image(client: RegistryClient, repo: str, repository: str, digest: str, public_key: Any) -> bool:
    """Whether a signature of `repo@digest` verifies with the ed25519 `public_key` and names
    exactly that repository and digest (what ``cosign verify --key`` checks)."""
    from cryptography.exceptions import InvalidSignature

    for body, signature in signatures(client, repo, digest):
        try:
            doc = json.loads(body)
            critical = doc["critical"]
            named = (critical["identity"]["docker-reference"], critical["image"]["docker-manifest-digest"],
                     critical["type"])
        except (ValueError, KeyError, TypeError):
            continue
        if named != (repository, digest, COSIGN_TYPE):
            continue
        try:
            public_key.verify(base64.b64decode(signature), body)
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def _existing_layers(client: RegistryClient, repo: str, tag: str) -> list[dict[str, Any]]:
    try:
        manifest = client.manifest(repo, tag, resolve_index=False)
    except NotFound:
        return []
    return [dict(layer) for layer in manifest.layers if layer.get("mediaType") == SIMPLE_SIGNING_MEDIA_TYPE]


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("digest") == b.get("digest") and (a.get("annotations") or {}).get(SIGNATURE_ANNOTATION) == (
        b.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
