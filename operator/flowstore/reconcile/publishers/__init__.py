"""One publisher per backend family; each Storage class names its family (``Storage.family``)."""

from __future__ import annotations

from typing import Any

from flowstore.api.models import StorageSpec
from flowstore.reconcile.publishers.base import Publisher
from flowstore.reconcile.publishers.git import GitPinPublisher
from flowstore.reconcile.publishers.image import ImagePublisher
from flowstore.reconcile.publishers.objects import ObjectStorePublisher
from flowstore.reconcile.publishers.oci import OCIPublisher
from flowstore.storage import backend_class

PUBLISHERS: dict[str, Publisher[Any]] = {
    p.family: p for p in (ObjectStorePublisher(), ImagePublisher(), GitPinPublisher(), OCIPublisher())}


def publisher_for(spec: StorageSpec) -> Publisher[Any]:
    """The publisher of the family the spec's backend class declares."""
    return PUBLISHERS[backend_class(spec.backend).family]


__all__ = ["PUBLISHERS", "Publisher", "publisher_for"]
