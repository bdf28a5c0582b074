"""What the reconcile core needs from the world, and what one reconcile decides.

:class:`Ports` is implemented by ``controller.kube.KubePorts`` (the operator) and by the test
fakes in ``tests/fakes/ports.py``; its image builder (:class:`ImageBuilds`) by
``controller.images.ImageBuilder``. The core never imports kopf, the Kubernetes client or
``flowstore.controller`` (import-linter contracts keep it so).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Protocol

from flowstore.api.models import BuildSpec, StorageSpec
from flowstore.api.selectors import LabelSelector
from flowstore.reconcile.failures import Failure
from flowstore.sandbox import Built
from flowstore.storage import Storage
from flowstore.storage.identity import WorkloadIdentity


class Ports(Protocol):
    """The cluster, the builder and the storages, as the core sees them."""

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FlowStorage, also when it is outside this operator's shard (read by name when no
        cache holds it), so a StoredFlow can tell "on another shard" from "missing"."""
    def shard(self) -> LabelSelector | None:
        """The label selector of the objects this operator serves (--watch-label-selector), or None."""
    @property
    def record_key(self) -> bytes:
        """The operator's record key (``api/seals.py``); empty: nothing is sealed or trusted."""
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]: ...
    def list_flowstorage_names(self, namespace: str) -> list[str]: ...
    def build(self, request: BuildRequest) -> Built | Pending:
        """Run the flow's code and pickle its flow object: in the operator's sandbox when
        ``request.spec`` is None (always done at once), else as a builder Job in that image
        (Pending until the Job has finished). Raises BuildError for the flow's own failures."""
    def check_script(self, source: bytes, *, filename: str = "<flow script>") -> None: ...
    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str,
                    identity: WorkloadIdentity | None = None, *, namespace: str = "") -> Storage:
        """The storage of a FlowStorage in `namespace` (the operator applies its policy for it),
        with a Secret's `credentials` or acting as `identity`."""
    def workload_identity(self, namespace: str, service_account: str, cloud: str, settings: Mapping[str, Any], *,
                          where: str, session_name: str) -> WorkloadIdentity:
        """ServiceAccount ``namespace/service_account`` as `cloud`'s workload identity: the spec's
        `settings` over the account's annotations, tokens from the cluster. ReconcileError
        (ServiceAccountNotFound) when it does not exist; IdentityNotConfigured when incomplete."""
    def ambient_identity_refusal(self, namespace: str) -> str | None:
        """Why a FlowStorage of `namespace` may not act as the operator itself, or None."""

    @property
    def images(self) -> ImageBuilds:
        """The debounced one-image-per-storage builder (Docker storages)."""


@dataclasses.dataclass
class ImageJob:
    """One flow's request to be in the next image of its storage."""

    flow_name: str
    inputs_digest: str
    waiter: Hashable  # what on_done wakes (the StoredFlow's loop key)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None  # BuiltImage
    error: BaseException | None = None
    #: the error was handed to a reconcile once; the next lookup submits again (retry)
    reported: bool = False
    #: the ImageFlow submitted (its bytes and location, recorded in status once built)
    payload: Any = None


class ImageBuilds(Protocol):
    """Builds one image per Docker storage from the flows submitted to it, once per burst of
    changes (``controller.images.ImageBuilder``)."""

    def lookup(self, batch_key: Hashable, flow_name: str, inputs_digest: str) -> ImageJob | None:
        """The job for exactly these inputs, if one was submitted (pending or done)."""

    def submit(self, batch_key: Hashable, storage: Any, flow: Any, inputs_digest: str, waiter: Hashable,
               others: Callable[[set[str]], list[Any]]) -> ImageJob:
        """Put `flow` (an ImageFlow) into the next image of the storage identified by `batch_key`."""


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
