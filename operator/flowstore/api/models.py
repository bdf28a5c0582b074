"""Typed views of the two resources' specs, parsed from the API server's dicts.

The API server has already applied the CRD schema (defaults, CEL), so parsing here only
adds types and the few rules a schema cannot express.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from flowstore.api.backends import BACKEND_KEYS

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: spec.revisionHistoryLimit's bound (the CRD's maximum)
MAX_HISTORY_LIMIT = 100
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
#: floor of spec.interval: the schema accepts "0s" or "1ms", which made every loop of the
#: storage reconcile (GETs, a LIST, S3 HEADs) back to back, forever
MIN_INTERVAL_SECONDS = 1.0


class SpecError(ValueError):
    """A spec the schema accepted but that cannot work; the message says what to change."""


def parse_duration(text: str) -> float:
    """Go-style duration ("10m", "1h30m", "500ms") in seconds."""
    parts = _DURATION_PART.findall(text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        raise SpecError(f"{text!r} is not a duration like 30s, 10m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """spec.build: build flows as Jobs in their own runtime image (see the CRD's description)."""

    image: str
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    service_account_name: str | None = None
    resources: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    timeout_seconds: int = 300
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def parse(cls, block: Mapping[str, Any] | None) -> BuildSpec | None:
        if not block:
            return None
        if not block.get("image"):
            raise SpecError("spec.build.image is required: the runtime image the flow is built in")
        return cls(
            image=str(block["image"]),
            image_pull_policy=block.get("imagePullPolicy") or None,
            image_pull_secrets=tuple(str(s["name"]) for s in block.get("imagePullSecrets") or [] if s.get("name")),
            service_account_name=block.get("serviceAccountName") or None,
            resources={k: dict(v) for k, v in (block.get("resources") or {}).items() if v},
            timeout_seconds=int(block.get("timeoutSeconds") or 300),
            node_selector={str(k): str(v) for k, v in (block.get("nodeSelector") or {}).items()},
            tolerations=tuple(dict(t) for t in block.get("tolerations") or []),
        )


@dataclasses.dataclass(frozen=True)
class SigningSpec:
    """FlowStorage spec.signing: the Secret key holding the signing key, and the provider
    (ed25519 | hmac; None: inferred from the key, a private key being ed25519)."""

    secret_name: str
    key: str
    provider: str | None = None


def storage_ref(spec: Mapping[str, Any] | None) -> str:
    """The FlowStorage a StoredFlow spec names (``spec.storageRef.name``), "" when it names none."""
    return str(((spec or {}).get("storageRef") or {}).get("name") or "")


@dataclasses.dataclass(frozen=True)
class Pin:
    """StoredFlow spec.pin: the revision to keep current, by number or by artifact digest."""

    revision: int | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, block: Mapping[str, Any] | None) -> Pin | None:
        if not block:
            return None
        revision, digest = block.get("revision"), block.get("digest")
        if (revision is None) == (digest is None):
            raise SpecError("spec.pin needs exactly one of revision or digest")
        if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 1):
            raise SpecError(f"spec.pin.revision must be a revision number (1 or more), not {revision!r}")
        if digest is not None and not _DIGEST.match(str(digest)):
            raise SpecError(f"spec.pin.digest must be sha256:<64 hex digits>, not {digest!r}")
        return cls(revision=revision, digest=str(digest) if digest is not None else None)

    def describe(self) -> str:
        return f"revision {self.revision}" if self.revision is not None else f"digest {self.digest}"


def history_limit(spec: Mapping[str, Any], where: str) -> int | None:
    """spec.revisionHistoryLimit (1..100, as the CRD bounds it), or None when unset."""
    value = spec.get("revisionHistoryLimit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HISTORY_LIMIT:
        raise SpecError(f"{where}.revisionHistoryLimit must be a number from 1 to {MAX_HISTORY_LIMIT}, not {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class StorageSpec:
    """FlowStorage.spec: one backend block plus the common fields."""

    backend: str  # the block's key: "s3", "local", …
    config: Mapping[str, Any]  # the block merged with the common fields, camelCase (Storage.from_config)
    secret_name: str | None
    deletion_policy: str
    interval_seconds: float
    suspend: bool
    stored_as_script: bool
    #: spec.signing: where the signing key is and which provider (docs/signing.md)
    signing: SigningSpec | None = None
    #: spec.build: flows of this storage are built as Jobs in this image
    build: BuildSpec | None = None
    #: spec.serviceAccountName: the storage acts as this ServiceAccount of its namespace
    service_account_name: str | None = None
    #: spec.revisionHistoryLimit: the default of its StoredFlows (None: flowstore's default)
    revision_history_limit: int | None = None
    #: spec.retention.minAge in seconds (None: flowstore's default)
    min_age_seconds: float | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> StorageSpec:
        present = [key for key in BACKEND_KEYS if spec.get(key) is not None]
        if len(present) != 1:
            raise SpecError(f"exactly one backend block ({', '.join(BACKEND_KEYS)}) must be set, found {present}")
        backend = present[0]
        block: dict[str, Any] = dict(spec[backend])
        secret_ref = block.pop("credentialsSecretRef", None) or {}
        if secret_ref.get("name") and spec.get("serviceAccountName"):
            raise SpecError(f"spec.{backend}.credentialsSecretRef and spec.serviceAccountName are two ways to give "
                            "the storage an identity; keep one")
        if secret_ref.get("key"):  # backends that read one key of the Secret (GCS, Azure)
            block["credentialsKey"] = secret_ref["key"]
        config = {
            **block,
            "storedAsScript": bool(spec.get("storedAsScript", False)),
            "labels": list(spec.get("labels") or []),
            "addDefaultLabels": bool(spec.get("addDefaultLabels", True)),
            "secrets": list(spec.get("secrets") or []),
        }
        signing_ref = (spec.get("signing") or {}).get("secretRef") or {}
        return cls(
            signing=SigningSpec(secret_name=str(signing_ref["name"]),
                                key=str(signing_ref.get("key") or "FLOWSTORE_SIGNING_KEY"),
                                provider=(spec.get("signing") or {}).get("provider") or None)
            if signing_ref.get("name") else None,
            backend=backend,
            config=config,
            secret_name=secret_ref.get("name"),
            deletion_policy=str(spec.get("deletionPolicy") or "Retain"),
            interval_seconds=max(MIN_INTERVAL_SECONDS, parse_duration(str(spec.get("interval") or "10m"))),
            suspend=bool(spec.get("suspend", False)),
            stored_as_script=bool(spec.get("storedAsScript", False)),
            build=BuildSpec.parse(spec.get("build")),
            service_account_name=str(spec["serviceAccountName"]) if spec.get("serviceAccountName") else None,
            revision_history_limit=history_limit(spec, "spec"),
            min_age_seconds=parse_duration(str(min_age)) if (min_age := (spec.get("retention") or {}).get("minAge"))
            is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class FlowSource:
    inline: str | None = None
    config_map: str | None = None
    #: one key: a one-file flow; None: every key of the ConfigMap is a file (unless `items`)
    config_map_key: str | None = None
    #: (key, path) pairs, the shape of a configMap volume's items: those keys, at those paths
    items: tuple[tuple[str, str], ...] = ()
    path: str | None = None
    #: gitignore-style patterns of files to leave out of a flow of several files
    ignore: tuple[str, ...] = ()

    @property
    def several_files(self) -> bool:
        """A ConfigMap without a key (or with items): a directory of files, not one script."""
        return self.config_map is not None and self.config_map_key is None

    def describe(self) -> str:
        if self.inline is not None:
            return "spec.source.inline"
        if self.config_map and self.config_map_key:
            return f"key {self.config_map_key!r} of ConfigMap {self.config_map!r}"
        if self.config_map:
            return f"ConfigMap {self.config_map!r}"
        return f"path {self.path!r}"


@dataclasses.dataclass(frozen=True)
class FlowSpec:
    """StoredFlow.spec."""

    storage_name: str
    flow_name: str
    source: FlowSource
    object_name: str | None
    stored_as_script: bool | None
    key: str | None
    suspend: bool
    #: ``path/to/file.py[:object]``: the module (and object) of a flow of several files
    entrypoint: str | None = None
    #: spec.build: replaces the FlowStorage's as a whole
    build: BuildSpec | None = None
    #: spec.revisionHistoryLimit (None: the FlowStorage's, else flowstore's default)
    revision_history_limit: int | None = None
    #: spec.pin: the revision kept current
    pin: Pin | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> FlowSpec:
        source = spec.get("source") or {}
        cm = source.get("configMapRef") or {}
        flow_source = FlowSource(
            inline=source.get("inline"),
            config_map=cm.get("name"),
            config_map_key=cm.get("key") or None,
            items=tuple((str(i["key"]), str(i["path"])) for i in cm.get("items") or []),
            path=source.get("path"),
            ignore=tuple(str(p) for p in source.get("ignore") or []),
        )
        if flow_source.config_map_key and flow_source.items:
            raise SpecError("spec.source.configMapRef takes key (one file) or items (several), not both")
        if sum(x is not None for x in (flow_source.inline, flow_source.config_map, flow_source.path)) != 1:
            raise SpecError("spec.source needs exactly one of configMapRef, inline or path")
        storage_name = storage_ref(spec)
        if not storage_name or not spec.get("flowName"):
            raise SpecError("spec.storageRef.name and spec.flowName are required")
        return cls(
            storage_name=storage_name,
            flow_name=spec["flowName"],
            source=flow_source,
            object_name=spec.get("objectName") or None,
            stored_as_script=spec.get("storedAsScript"),
            key=spec.get("key") or None,
            suspend=bool(spec.get("suspend", False)),
            entrypoint=spec.get("entrypoint") or None,
            build=BuildSpec.parse(spec.get("build")),
            revision_history_limit=history_limit(spec, "spec"),
            pin=Pin.parse(spec.get("pin")),
        )
