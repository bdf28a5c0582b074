"""The seed's Storage classes, usable with no cluster: ``from flowstore.storage import S3``.

Backends are imported lazily (their SDKs are optional extras); a missing SDK raises
:class:`~flowstore.storage.errors.MissingDependency` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

from flowstore.api.backends import BACKENDS, backend, install_hint
from flowstore.storage.base import SEED_VERSION_KEY, ObjectInfo, Storage, StoredArtifact
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


def backend_class(name: str) -> type[Storage]:
    """The Storage class for a class name (``S3``) or CRD block key (``s3``), imported now."""
    row = backend(name)
    if row is None:
        raise InvalidConfig(f"unknown storage type {name!r}; known: {', '.join(b.class_name for b in BACKENDS)}")
    try:
        module = importlib.import_module(row.module)
    except ImportError as exc:  # the backend SDK is an optional extra
        raise MissingDependency(f"{row.class_name} storage needs {exc.name or 'its SDK'}; "
                                f"hint: {install_hint(row.extra)}") from exc
    cls: type[Storage] = getattr(module, row.class_name)
    return cls


def from_serialized(doc: dict[str, Any], **overrides: Any) -> Storage:
    """Rebuild a Storage, as an agent: from a StoredFlow's or FlowStorage's ``status.storage``
    (:meth:`Storage.to_status`, camelCase), or from the seed's serialized storage
    (:meth:`Storage.serialize`, or what Prefect 1.4.1 registered: it has ``__version__``).
    `overrides` adds what neither carries (credentials), as :meth:`Storage.from_config` takes it.
    Credentials otherwise come from the agent's environment, as in the seed."""
    cls = backend_class(str(doc["type"]))
    config = cls.config_from_seed(doc) if SEED_VERSION_KEY in doc else doc
    storage = cls.from_config(config, **overrides)  # type: ignore[attr-defined]
    storage.flows.update(doc.get("flows") or {})
    return storage


def __getattr__(name: str) -> Any:
    if any(name == b.class_name for b in BACKENDS):
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
