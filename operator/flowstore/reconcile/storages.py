"""Opening a FlowStorage's storage: its credentials Secret, the ConfigMaps and Secrets its block
names (as the backend's Storage class declares them), and the part of its configuration that
decides where artifacts go. (The signing key: reconcile/signatures.py.)"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from flowstore.api.backends import COMMON_FIELDS, backend
from flowstore.api.constants import Reason
from flowstore.api.models import StorageSpec
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.identity import resolve_identity
from flowstore.reconcile.ports import Ports
from flowstore.storage import InvalidConfig, Storage, backend_class
from flowstore.storage.refs import FileRefs, KeyRef, SecretKeys


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
    try:  # shared by the FlowStorage's passes; the state a pass restores is its own
        return ports.storage_for(spec, credentials, cache_key, identity, namespace=namespace).fork()
    except InvalidConfig as exc:
        where = f" (Secret {spec.secret_name!r} in namespace {namespace!r})" if spec.secret_name else ""
        raise InvalidConfig(f"{exc.message}{where}") from None


def try_open_storage(ports: Ports, namespace: str, fs: Mapping[str, Any],
                     spec: StorageSpec) -> tuple[Storage | None, Exception | None]:
    """:func:`open_storage`, with a failure returned rather than raised (the StoredFlow steps
    raise it where they first need the storage: ``FlowContext.storage``)."""
    try:
        return open_storage(ports, namespace, fs, spec), None
    except Exception as exc:  # every failure becomes a condition, later
        return None, exc


def resolve_refs(ports: Ports, namespace: str, spec: StorageSpec) -> tuple[StorageSpec, str]:
    """The ConfigMaps and Secrets the backend's block names (as its Storage class declares:
    ``Storage.config_refs``), read and put in their place. Returns the spec with them filled
    in and a version key of what was read ("" when the block names none)."""
    declared = backend_class(spec.backend).config_refs
    if not declared:
        return spec, ""
    reader = _RefReader(ports, namespace, spec.backend)
    config = dict(spec.config)
    for ref in declared:
        value = config.get(ref.field)
        if isinstance(ref, KeyRef):
            if isinstance(value, Mapping) and (value.get("configMapRef") or value.get("secretRef")):
                data = reader.key(value, ref.field)
                config[ref.field] = data.decode() if ref.text else data
        elif isinstance(ref, FileRefs):
            if value is not None:
                config[ref.field] = {str(item["path"]): reader.key(item, f"{ref.field}[{i}]")
                                     for i, item in enumerate(value or []) if isinstance(item, Mapping)}
        else:  # SecretKeys: its field may be a path into the block (git's verify.secretRef)
            named = _at(config, ref.field)
            if isinstance(named, Mapping) and named.get("name"):
                config[ref.into] = reader.secret_keys(str(named["name"]), ref)
    return dataclasses.replace(spec, config=config), ",".join(reader.versions)


def _at(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted `path` of a block (None where any step is missing)."""
    value: Any = config
    for step in path.split("."):
        value = value.get(step) if isinstance(value, Mapping) else None
    return value


class _RefReader:
    """Reads what a block's declared fields name; remembers the versions it read."""

    def __init__(self, ports: Ports, namespace: str, backend: str) -> None:
        self.ports, self.namespace, self.backend = ports, namespace, backend
        self.versions: list[str] = []

    def _get(self, kind: str, name: str, field: str, hint: str = "") -> dict[str, Any]:
        get = self.ports.get_configmap if kind == "ConfigMap" else self.ports.get_secret
        obj = get(self.namespace, name)
        if obj is None:
            raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} (spec.{self.backend}.{field}) was not "
                                 f"found in namespace {self.namespace!r}; {hint or 'create it or fix the reference'}.",
                                 stalled=True)
        self.versions.append(f"{kind}/{name}@{obj['metadata'].get('resourceVersion')}")
        return obj

    def key(self, holder: Mapping[str, Any], field: str) -> bytes:
        """The content of ``holder``'s configMapRef or secretRef {name, key}."""
        ref, kind = (holder["secretRef"], "Secret") if holder.get("secretRef") else (holder["configMapRef"],
                                                                                     "ConfigMap")
        name, key = ref["name"], ref["key"]
        obj = self._get(kind, name, field)
        data, binary = obj.get("data") or {}, obj.get("binaryData") or {}
        if key in data:
            return str(data[key]).encode("utf-8")
        if key in binary:
            return base64.b64decode(binary[key])
        raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"{kind} {name!r} has no key {key!r} "
                             f"(spec.{self.backend}.{field}).", stalled=True)

    def secret_keys(self, name: str, ref: SecretKeys) -> dict[str, str]:
        secret = self._get("Secret", name, ref.field, ref.hint)
        return {key: str(value) for key, value in (secret.get("data") or {}).items()
                if key in ref.keys or (ref.suffixes and key.endswith(ref.suffixes))}


def storage_marker(spec: StorageSpec) -> str:
    """A short name of :func:`storage_identity` (``status.historyStorage``: the place the
    revisions of a history are in)."""
    identity = json.dumps(storage_identity(spec), sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def storage_identity(spec: StorageSpec) -> dict[str, Any]:
    """The part of a storage's configuration that decides *where* artifacts go (not labels, not
    how the backend is reached)."""
    row = backend(spec.backend)
    ignored = COMMON_FIELDS | (row.reach_fields if row else frozenset())
    return {"type": backend_class(spec.backend).type_name,
            **{k: v for k, v in sorted(spec.config.items()) if k not in ignored}}
