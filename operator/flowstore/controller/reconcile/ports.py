"""What the reconcile core needs from the world, and what one reconcile decides.

:class:`Ports` is implemented by ``controller.kube.KubePorts`` (the operator) and by the test
fakes in ``tests/fakes/ports.py``; the core never imports kopf or the Kubernetes client.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from flowstore.api.models import BuildSpec, StorageSpec
from flowstore.controller.failures import Failure
from flowstore.controller.images import ImageBuilder
from flowstore.sandbox import Built
from flowstore.storage import Storage


class Ports(Protocol):
    """The cluster, the builder and the storages, as the core sees them."""

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]: ...
    def build(self, request: BuildRequest) -> Built | Pending:
        """Run the flow's code and pickle its flow object: in the operator's sandbox when
        ``request.spec`` is None (always done at once), else as a builder Job in that image
        (Pending until the Job has finished). Raises BuildError for the flow's own failures."""
    def check_script(self, source: bytes, *, filename: str = "<flow script>") -> None: ...
    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str, *,
                    namespace: str = "") -> Storage:
        """The storage of a FlowStorage in `namespace` (the operator applies its policy for it)."""

    #: the debounced one-image-per-storage builder (Docker storages)
    images: ImageBuilder


@dataclasses.dataclass(frozen=True)
class BuildRequest:
    """One build of a flow: its source (a script, or a bundle), what to pickle, and where."""

    source: bytes
    bundle: bool
    flow_name: str
    object_name: str | None
    #: spec.build (a builder Job in that image), or None (the operator's sandbox)
    spec: BuildSpec | None
    #: the StoredFlow the build is for: a Job runs in its namespace and is owned by it
    namespace: str
    owner_name: str
    owner_uid: str
    #: sha256:… of everything the build depends on: the same request finds the same Job
    digest: str


@dataclasses.dataclass(frozen=True)
class Pending:
    """A build under way (a builder Job): say so, and look again after `retry_after` seconds."""

    message: str
    retry_after: float = 1.0


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    """What one reconcile decided: the full desired status, Events to post, and when to run
    again (None: only when something referenced changes)."""

    status: dict[str, Any]
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    failure: Failure | None = None
    uploaded: bool = False
    built: bool = False


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
