"""Typed views of what the operator writes into status, for the fields read back.

The status is the public API (agents, Argo CD, kstatus tools read it); it stays camelCase
JSON. These types are built in one place and read back in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Artifact:
    """StoredFlow ``status.artifact``: what was stored, where, and how to verify it."""

    url: str
    digest: str  # sha256:… of the stored bytes
    size: int
    format: str  # pickle | script | bundle
    source_digest: str  # sha256:… of the flow's source
    inputs_digest: str  # sha256:… of everything that decides the artifact (reconcile's plan step)
    last_update_time: str
    #: backend state an agent needs besides the configuration (e.g. a webhook's build response)
    storage_state: Mapping[str, Any] | None = None
    #: hmac-sha256:… over the flow name and digest, when the FlowStorage signs
    signature: str | None = None
    #: script: the name of the script's file (agents that need a file write it under this name)
    file_name: str | None = None
    #: built from several files: the entrypoint (``path/to/file.py[:object]``) and the file count
    entrypoint: str | None = None
    file_count: int | None = None
    #: pickle: the Python, cloudpickle (and prefect) versions that pickled it (the envelope's)
    versions: Mapping[str, str] | None = None

    def to_status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "url": self.url, "digest": self.digest, "size": self.size, "format": self.format,
            "sourceDigest": self.source_digest, "inputsDigest": self.inputs_digest,
            "lastUpdateTime": self.last_update_time,
        }
        if self.storage_state:
            doc["storageState"] = dict(self.storage_state)
        if self.signature:
            doc["signature"] = self.signature
        if self.file_name:
            doc["fileName"] = self.file_name
        if self.entrypoint:
            doc["entrypoint"] = self.entrypoint
        if self.file_count is not None:
            doc["fileCount"] = self.file_count
        if self.versions:
            doc["versions"] = dict(self.versions)
        return doc

    @classmethod
    def from_status(cls, doc: Mapping[str, Any] | None) -> Artifact | None:
        """The recorded artifact, or None when status records none (or an unreadable one)."""
        if not doc or not doc.get("digest") or not doc.get("inputsDigest"):
            return None
        return cls(
            url=str(doc.get("url", "")), digest=str(doc["digest"]), size=int(doc.get("size") or 0),
            format=str(doc.get("format", "")), source_digest=str(doc.get("sourceDigest", "")),
            inputs_digest=str(doc["inputsDigest"]), last_update_time=str(doc.get("lastUpdateTime", "")),
            storage_state=dict(doc["storageState"]) if doc.get("storageState") else None,
            signature=doc.get("signature") or None,
            file_name=doc.get("fileName") or None,
            entrypoint=doc.get("entrypoint") or None,
            file_count=int(doc["fileCount"]) if doc.get("fileCount") is not None else None,
            versions={str(k): str(v) for k, v in doc["versions"].items()} if isinstance(doc.get("versions"), dict)
            else None,
        )
