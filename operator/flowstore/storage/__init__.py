"""The seed's Storage classes, usable with no cluster: ``from flowstore.storage import S3``.

Backends are imported lazily (their SDKs are optional extras); a missing SDK raises
:class:`~flowstore.storage.errors.MissingDependency` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from flowstore.storage.base import ObjectInfo, Storage, StoredArtifact
from flowstore.storage.errors import (
    AuthFailed,
    ContainerNotFound,
    IntegrityError,
    InvalidConfig,
    MissingDependency,
    NotFound,
    Rejected,
    StorageError,
    TemplateValueMissing,
    Unavailable,
)

# class name -> (module, serialized ``type``, pip extra). ``type`` is what serialize() writes.
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "Local": ("flowstore.storage.local", "Local", None),
    "S3": ("flowstore.storage.s3", "S3", "s3"),
    "GCS": ("flowstore.storage.gcs", "GCS", "gcs"),
    "Azure": ("flowstore.storage.azure", "Azure", "azure"),
    "Webhook": ("flowstore.storage.webhook", "Webhook", None),
    "Docker": ("flowstore.storage.docker", "Docker", "docker"),
    "GitHub": ("flowstore.storage.github", "GitHub", None),
    "GitLab": ("flowstore.storage.gitlab", "GitLab", None),
    "Bitbucket": ("flowstore.storage.bitbucket", "Bitbucket", None),
    "CodeCommit": ("flowstore.storage.codecommit", "CodeCommit", "codecommit"),
    "Git": ("flowstore.storage.git", "Git", None),
}
#: CRD backend block key -> class name
BACKEND_CLASSES: dict[str, str] = {
    "local": "Local", "s3": "S3", "gcs": "GCS", "azure": "Azure", "webhook": "Webhook", "docker": "Docker",
    "github": "GitHub", "gitlab": "GitLab", "bitbucket": "Bitbucket", "codecommit": "CodeCommit", "git": "Git",
}


def backend_class(name: str) -> type[Storage]:
    """The Storage class for a class name (``S3``) or CRD block key (``s3``)."""
    class_name = BACKEND_CLASSES.get(name, name)
    if class_name not in _REGISTRY:
        raise InvalidConfig(f"unknown storage type {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    module_name, _, extra = _REGISTRY[class_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # the backend SDK is an optional extra
        hint = f"pip install 'flowstore[{extra}]'" if extra else "reinstall flowstore"
        raise MissingDependency(f"{class_name} storage needs {exc.name or 'its SDK'}: {hint}") from exc
    cls: type[Storage] = getattr(module, class_name)
    return cls


def from_serialized(doc: dict[str, Any], **overrides: Any) -> Storage:
    """Rebuild a Storage from :meth:`Storage.serialize` output (e.g. a StoredFlow's
    ``status.storage``). `overrides` adds what serialization leaves out (credentials)."""
    cls = backend_class(str(doc["type"]))
    storage = cls.from_config(doc, **overrides)  # type: ignore[attr-defined]
    storage.flows.update(doc.get("flows") or {})
    return storage


def __getattr__(name: str) -> Any:
    if name in _REGISTRY:
        return backend_class(name)
    raise AttributeError(name)


__all__ = [
    "AuthFailed",
    "ContainerNotFound",
    "IntegrityError",
    "InvalidConfig",
    "MissingDependency",
    "NotFound",
    "ObjectInfo",
    "Rejected",
    "Storage",
    "StorageError",
    "StoredArtifact",
    "TemplateValueMissing",
    "Unavailable",
    "backend_class",
    "from_serialized",
]
