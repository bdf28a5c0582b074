"""Typed views of what the operator writes into a StoredFlow's status, built in one place and
read back in one place.

The status is the public API (agents, Argo CD, kstatus tools read it); it stays camelCase JSON.
It is also input the operator did not necessarily write: anyone allowed to patch the status
subresource can put anything there. So every record here is parsed as hostile input: a field
of the wrong type or shape is *not recorded* (the record reads as ``None``, or an optional field
as absent) — never an exception, never a value of the wrong type handed on.

Each record names its status key once (``KEY``) and has ``read(status)`` (the whole status in,
the record or None out), ``to_status()`` and ``write(status)``/``clear(status)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Self

#: a sha256 digest as status records it
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------- hostile reading
def text(doc: Mapping[str, Any], key: str) -> str | None:
    """``doc[key]`` when it is a non-empty string, else None."""
    value = doc.get(key)
    return value if isinstance(value, str) and value else None


def count(doc: Mapping[str, Any], key: str) -> int | None:
    """``doc[key]`` when it is a non-negative integer (not a bool), else None."""
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """``doc[key]`` when it is a non-empty mapping with string keys, else None."""
    value = doc.get(key)
    if not isinstance(value, Mapping) or not value or not all(isinstance(k, str) for k in value):
        return None
    return dict(value)


def digest(doc: Mapping[str, Any], key: str) -> str | None:
    """``doc[key]`` when it is a ``sha256:<64 hex>`` digest, else None."""
    value = text(doc, key)
    return value if value is not None and DIGEST.match(value) else None


def section(status: Mapping[str, Any] | None, key: str) -> Mapping[str, Any] | None:
    """``status[key]`` when status and it are mappings, else None."""
    if not isinstance(status, Mapping):
        return None
    value = status.get(key)
    return value if isinstance(value, Mapping) else None


def recorded_location(status: Mapping[str, Any] | None) -> str | None:
    """``status.location``: where the current artifact is, when recorded as a string."""
    return text(status, "location") if isinstance(status, Mapping) else None


def recorded_flow_name(status: Mapping[str, Any] | None) -> str | None:
    """``status.flowName``: the flow name the artifact was stored under, when recorded."""
    return text(status, "flowName") if isinstance(status, Mapping) else None


class Record:
    """A status section: ``KEY`` is its key in status."""

    KEY: ClassVar[str]

    def to_status(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Self | None:
        raise NotImplementedError

    @classmethod
    def read(cls, status: Mapping[str, Any] | None) -> Self | None:
        """The record in `status`, or None when absent or not readable."""
        return cls.from_status(section(status, cls.KEY))

    def write(self, status: dict[str, Any]) -> None:
        status[self.KEY] = self.to_status()

    @classmethod
    def clear(cls, status: dict[str, Any]) -> None:
        status.pop(cls.KEY, None)


# ---------------------------------------------------------------------- artifact
@dataclasses.dataclass(frozen=True)
class Artifact(Record):
    """StoredFlow ``status.artifact``: what was stored, where, and how to verify it."""

    KEY: ClassVar[str] = "artifact"

    url: str
    digest: str  # sha256:… of the stored bytes
    size: int
    format: str  # pickle | script | bundle
    source_digest: str  # sha256:… of the flow's source
    inputs_digest: str  # sha256:… of everything that decides the artifact (reconcile's plan step)
    last_update_time: str
    #: backend state an agent needs besides the configuration (e.g. a webhook's build response)
    storage_state: Mapping[str, Any] | None = None
    #: the operator's seal over `storage_state` at its location (``api/seals.py``): only a sealed
    #: state addresses what the operator deletes
    state_seal: str | None = None
    #: when the FlowStorage signs: the signature over this revision's statement
    #: (``artifacts/statement.py``) and the id of the key that made it
    signature: str | None = None
    key_id: str | None = None
    #: script: the name of the script's file (agents that need a file write it under this name)
    file_name: str | None = None
    #: built from several files: the entrypoint (``path/to/file.py[:object]``) and the file count
    entrypoint: str | None = None
    file_count: int | None = None
    #: pickle: the Python, cloudpickle (and prefect) versions that pickled it (the envelope's)
    versions: Mapping[str, str] | None = None
    #: the revision of status.history this artifact is (``api/history.py``), and how many times a
    #: revision was made current (only grows: a revert is a lower revision, a higher designation)
    revision: int | None = None
    designation: int | None = None

    def to_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "url": self.url, "digest": self.digest, "size": self.size, "format": self.format,
            "sourceDigest": self.source_digest, "inputsDigest": self.inputs_digest,
            "lastUpdateTime": self.last_update_time,
        }
        if self.storage_state:
            doc["storageState"] = dict(self.storage_state)
        if self.state_seal:
            doc["stateSeal"] = self.state_seal
        if self.signature:
            doc["signature"] = self.signature
        if self.key_id:
            doc["keyId"] = self.key_id
        if self.file_name:
            doc["fileName"] = self.file_name
        if self.entrypoint:
            doc["entrypoint"] = self.entrypoint
        if self.file_count is not None:
            doc["fileCount"] = self.file_count
        if self.versions:
            doc["versions"] = dict(self.versions)
        if self.revision:
            doc["revision"] = self.revision
        if self.designation:
            doc["designation"] = self.designation
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Artifact | None:
        """The recorded artifact, or None when status records none, or one that is not readable
        (no digest or inputs digest, a size that is not a count)."""
        if not isinstance(doc, Mapping):
            return None
        recorded, inputs, size = digest(doc, "digest"), digest(doc, "inputsDigest"), count(doc, "size")
        if recorded is None or inputs is None or size is None:
            return None
        versions = mapping(doc, "versions")
        return cls(
            url=text(doc, "url") or "", digest=recorded, size=size, format=text(doc, "format") or "",
            source_digest=digest(doc, "sourceDigest") or "", inputs_digest=inputs,
            last_update_time=text(doc, "lastUpdateTime") or "",
            storage_state=mapping(doc, "storageState"),
            state_seal=text(doc, "stateSeal"),
            signature=text(doc, "signature"),
            key_id=text(doc, "keyId"),
            file_name=text(doc, "fileName"),
            entrypoint=text(doc, "entrypoint"),
            file_count=count(doc, "fileCount"),
            versions={k: v for k, v in versions.items() if isinstance(v, str)} if versions else None,
            revision=count(doc, "revision") or None, designation=count(doc, "designation") or None,
        )


# ---------------------------------------------------------------------- work under way
@dataclasses.dataclass(frozen=True)
class Storing(Record):
    """``status.storing``: a store under way, recorded before anything is uploaded (crash
    consistency: ``reconcile/publishers/objects.py``). A retry of the same inputs goes to the
    same location, with the same idempotency key."""

    KEY: ClassVar[str] = "storing"

    inputs_digest: str
    location: str
    #: what the store's requests carry as their idempotency key (a service that assigns ids
    #: answers a retry with the object it made); records written before it existed: the digest
    key: str | None = None
    #: the operator's seal over the record (``api/seals.py``): an unsealed record is not acted on
    seal: str | None = None

    @property
    def idempotency_key(self) -> str:
        return self.key or self.inputs_digest

    def to_status(self) -> dict[str, Any]:
        doc = {"inputsDigest": self.inputs_digest, "location": self.location}
        if self.key:
            doc["idempotencyKey"] = self.key
        if self.seal:
            doc["seal"] = self.seal
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Storing | None:
        if not isinstance(doc, Mapping):
            return None
        inputs, location = digest(doc, "inputsDigest"), text(doc, "location")
        key = text(doc, "idempotencyKey")
        if key is not None and (len(key) > 128 or not key.isprintable() or '"' in key or "\\" in key):
            key = None  # not one the operator writes (it goes into a header as an sf-string)
        if inputs is None or location is None:
            return None
        return cls(inputs, location, key, text(doc, "seal"))


@dataclasses.dataclass(frozen=True)
class Superseded(Record):
    """``status.superseded``: an artifact status moved past, to be deleted (``deletionPolicy:
    Delete``), addressed by its own location and recorded backend state."""

    KEY: ClassVar[str] = "superseded"

    location: str
    storage_state: Mapping[str, Any] | None = None
    state_seal: str | None = None

    def to_status(self) -> dict[str, Any]:
        doc = {"location": self.location, "storageState": dict(self.storage_state or {})}
        if self.state_seal:
            doc["stateSeal"] = self.state_seal
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Superseded | None:
        if not isinstance(doc, Mapping):
            return None
        location = text(doc, "location")
        return cls(location, mapping(doc, "storageState"), text(doc, "stateSeal")) if location is not None else None


# ---------------------------------------------------------------------- backend pins
@dataclasses.dataclass(frozen=True)
class GitPin(Record):
    """``status.git`` (git-hosted storages): the commit the flow is pinned to."""

    KEY: ClassVar[str] = "git"

    repo: str
    path: str
    ref: str
    commit: str
    url: str
    #: with spec.<backend>.verify: which key signed the commit (and tag), as the storage says
    verification: Mapping[str, Any] | None = None

    def to_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"repo": self.repo, "path": self.path, "ref": self.ref, "commit": self.commit,
                               "url": self.url}
        if self.verification is not None:
            doc["verification"] = dict(self.verification)
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> GitPin | None:
        if not isinstance(doc, Mapping):
            return None
        commit, path = text(doc, "commit"), text(doc, "path")
        if commit is None or path is None:
            return None
        verification = doc.get("verification")
        return cls(repo=text(doc, "repo") or "", path=path, ref=text(doc, "ref") or "", commit=commit,
                   url=text(doc, "url") or "",
                   verification=dict(verification) if isinstance(verification, Mapping) else None)


@dataclasses.dataclass(frozen=True)
class ImageRef(Record):
    """``status.image`` (Docker storages): the image the flow is a layer of, and its path there."""

    KEY: ClassVar[str] = "image"

    name: str
    tag: str
    digest: str
    path: str
    #: with an ed25519 signing key: the cosign signature's tag in the registry, and the key's id
    signature_tag: str | None = None
    signature_key_id: str | None = None

    def to_status(self) -> dict[str, Any]:
        doc = {"name": self.name, "tag": self.tag, "digest": self.digest, "path": self.path}
        if self.signature_tag and self.signature_key_id:
            doc.update(signatureTag=self.signature_tag, signatureKeyId=self.signature_key_id)
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> ImageRef | None:
        if not isinstance(doc, Mapping):
            return None
        name, image_digest = text(doc, "name"), digest(doc, "digest")
        if name is None or image_digest is None:
            return None
        return cls(name=name, tag=text(doc, "tag") or "", digest=image_digest, path=text(doc, "path") or "",
                   signature_tag=text(doc, "signatureTag"), signature_key_id=text(doc, "signatureKeyId"))
