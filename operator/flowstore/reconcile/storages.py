"""Opening a FlowStorage's storage: its credentials Secret, the ConfigMaps and Secrets a Docker
block names, the signing key, and the part of its configuration that decides where artifacts go."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flowstore.api.backends import COMMON_FIELDS, backend
from flowstore.api.constants import Reason
from flowstore.api.models import SpecError, StorageSpec
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.identity import resolve_identity
from flowstore.reconcile.ports import Ports
from flowstore.storage import InvalidConfig, Storage, backend_class


def read_credentials(ports: Ports, namespace: str, spec: StorageSpec) -> tuple[dict[str, str] | None, str]:
    """The referenced Secret's data (decoded) and a cache key; (None, "") for the SDK default chain."""
    if not spec.secret_name:
        return None, ""
    secret = ports.get_secret(namespace, spec.secret_name)
    if secret is None:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {spec.secret_name!r} (spec.{spec.backend}.credentialsSecretRef) was not found in "
            f"namespace {namespace!r}; create it or fix the reference.",
            stalled=True,
        )
    data = dict(secret.get("data") or {})
    return data, f"{secret['metadata'].get('uid')}/{secret['metadata'].get('resourceVersion')}"


def read_signing_key(ports: Ports, namespace: str, spec: StorageSpec) -> bytes | None:
    """The HMAC key named by spec.signing.secretRef, or None when signing is off."""
    if spec.signing is None:
        return None
    name, key = spec.signing
    secret = ports.get_secret(namespace, name)
    if secret is None:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {name!r} (spec.signing.secretRef) was not found in namespace {namespace!r}; create it "
            "or remove spec.signing.", stalled=True)
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {name!r} has no key {key!r} (spec.signing.secretRef.key); add the signing key there.",
            stalled=True)
    if len(value) < 16:
        raise SpecError(f"the signing key in Secret {name!r} is shorter than 16 characters; use a random key")
    return str(value).encode("utf-8")


def open_storage(ports: Ports, namespace: str, fs: Mapping[str, Any], spec: StorageSpec) -> Storage:
    """The FlowStorage's storage, opened with its credentials (cached by the ports per
    configuration and Secret version)."""
    credentials, secret_version = read_credentials(ports, namespace, spec)
    identity = resolve_identity(ports, namespace, fs, spec)
    if identity is not None:
        secret_version = "identity:" + identity.cache_key()
    row = backend(spec.backend)
    if credentials is None and identity is None and row is not None and row.anonymous_without_secret:
        credentials = {}
    spec, refs_version = resolve_refs(ports, namespace, spec)
    if refs_version:
        secret_version += "|" + refs_version
    cache_key = json.dumps([fs["metadata"].get("uid"), spec.backend, spec.config, secret_version], sort_keys=True,
                           default=lambda b: hashlib.sha256(b).hexdigest())
    try:
        return ports.storage_for(spec, credentials, cache_key, identity, namespace=namespace)
    except InvalidConfig as exc:
        where = f" (Secret {spec.secret_name!r} in namespace {namespace!r})" if spec.secret_name else ""
        raise InvalidConfig(f"{exc.message}{where}") from None


def resolve_refs(ports: Ports, namespace: str, spec: StorageSpec) -> tuple[StorageSpec, str]:
    """A block may name ConfigMaps and Secrets whose contents its storage needs (Docker: the
    Dockerfile, files, daemon TLS); the storage gets the contents. Returns the spec with them
    filled in and a version key of what was read ("" when the block names none)."""
    config = dict(spec.config)
    versions: list[str] = []

    def read(ref: Mapping[str, Any], kind: str, field: str) -> bytes:
        name, key = ref["name"], ref["key"]
        obj = ports.get_configmap(namespace, name) if kind == "ConfigMap" else ports.get_secret(namespace, name)
        if obj is None:
            raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} ({field}) was not found in namespace "
                                 f"{namespace!r}; create it or fix the reference.", stalled=True)
        data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
        versions.append(f"{kind}/{name}@{obj['metadata'].get('resourceVersion')}")
        if key in data:
            return str(data[key]).encode("utf-8")
        if key in binary:
            return base64.b64decode(binary[key])
        raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} has no key {key!r} ({field}).", stalled=True)

    dockerfile = config.get("dockerfile")
    if isinstance(dockerfile, Mapping) and dockerfile.get("configMapRef"):
        config["dockerfile"] = read(dockerfile["configMapRef"], "ConfigMap", "spec.docker.dockerfile").decode()
    files: dict[str, bytes] = {}
    for i, item in enumerate(config.get("files") or []):
        if not isinstance(item, Mapping):
            continue
        ref, kind = (item["secretRef"], "Secret") if item.get("secretRef") else (item["configMapRef"], "ConfigMap")
        files[str(item["path"])] = read(ref, kind, f"spec.docker.files[{i}]")
    if config.get("files") is not None:
        config["files"] = files
    tls_ref = config.get("daemonTLSSecretRef")
    if isinstance(tls_ref, Mapping) and tls_ref.get("name"):
        name = str(tls_ref["name"])
        secret = ports.get_secret(namespace, name)
        if secret is None:
            raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"Secret {name!r} (spec.docker.daemonTLSSecretRef) was not "
                                 f"found in namespace {namespace!r}; create it with ca.crt, tls.crt and tls.key.",
                                 stalled=True)
        versions.append(f"Secret/{name}@{secret['metadata'].get('resourceVersion')}")
        config["daemonTLS"] = {key: str(value) for key, value in (secret.get("data") or {}).items()
                               if key in ("ca.crt", "tls.crt", "tls.key")}
    return dataclasses.replace(spec, config=config), ",".join(versions)


def storage_identity(spec: StorageSpec) -> dict[str, Any]:
    """The part of a storage's configuration that decides *where* artifacts go (not labels, not
    how the backend is reached)."""
    row = backend(spec.backend)
    ignored = COMMON_FIELDS | (row.reach_fields if row else frozenset())
    return {"type": backend_class(spec.backend).type_name,
            **{k: v for k, v in sorted(spec.config.items()) if k not in ignored}}
