"""How a flow gets into one family of storages: the interface every publisher implements.

The StoredFlow steps (``storedflow.py``) call a publisher at fixed points: ``check_spec`` when
the storage is resolved (step 1), ``resolve_source`` (step 2), ``fixed_format`` and
``extra_inputs`` while planning (step 3), ``verify`` for a due drift check or a revert (step 4),
``publish`` to build and store (steps 6-7), and ``delete_revision`` for retention and deletion
(``reconcile/retention.py``). A Storage class names its family (``Storage.family``);
:func:`~flowstore.reconcile.publishers.publisher_for` maps it here.
"""

from __future__ import annotations

import abc
import dataclasses
import posixpath
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from flowstore.api.history import Retired, Revision
from flowstore.api.models import FlowSpec, SpecError, StorageSpec
from flowstore.api.seals import Seals
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import Event, Outcome, Ports
from flowstore.reconcile.sources import read_source
from flowstore.storage import InvalidConfig, Storage

S = TypeVar("S", bound=Storage)

#: what ``verify`` says of a recorded artifact the backend no longer holds as recorded
MISSING, CHANGED = "is missing", "has changed"


@dataclasses.dataclass(frozen=True)
class RetireScope:
    """Whose object a ``delete_revision`` deletes: the StoredFlow, its FlowStorage, and what the
    storage must be left holding afterwards (the storage is shared: its current state)."""

    ports: Ports
    namespace: str
    name: str
    storage_name: str
    current_state: Mapping[str, Any] | None = None
    #: object keys (``api.history.object_key``) this StoredFlow still names: never deleted
    keep: frozenset[str] = frozenset()
    #: the StoredFlow's spec.flowName and spec.key: where its objects can be (a status is hostile
    #: input: a record naming another place is not deleted)
    flow_name: str = ""
    key: str | None = None
    #: the operator's seals for this StoredFlow's records: a recorded backend state addresses an
    #: object only when sealed (None: no state is trusted)
    seals: Seals | None = None


class Publisher(abc.ABC, Generic[S]):
    """Publishes to storages of one family, whose classes share `storage_type` (S)."""

    family: ClassVar[str]
    #: the only format this family stores (None: the spec decides)
    fixed_format: ClassVar[str | None] = None
    #: the class every storage of this family is (``Docker``, ``GitHosted``, ``Storage``)
    storage_type: type[S]

    def storage(self, ctx: FlowContext) -> S:
        """The storage opened for this pass (``ctx.storage``), as this family's type."""
        storage = ctx.storage
        if not isinstance(storage, self.storage_type):  # a backend row naming the wrong family
            raise InvalidConfig(f"{type(storage).__name__} storage is not a {self.storage_type.__name__}, which "
                                f"the {self.family!r} publisher needs; its class names the wrong family")
        return storage

    def check_spec(self, spec: FlowSpec, storage: StorageSpec, storage_name: str) -> None:
        """Raise SpecError for a StoredFlow this family cannot store. Default: the source is
        given to the operator (inline or a ConfigMap), never a path in a repository."""
        if spec.source.path is not None:
            raise SpecError(
                f"spec.source.path is for git-hosted storages, but FlowStorage {storage_name!r} is "
                f"{storage.backend!r}; use spec.source.inline or spec.source.configMapRef"
            )

    def resolve_source(self, ctx: FlowContext, ports: Ports) -> None:
        """Step 2: fill ``ctx.source`` (default: inline or a ConfigMap key)."""
        read_source(ctx, ports)

    def extra_inputs(self, ctx: FlowContext) -> dict[str, Any]:
        """Step 3: what else decides this family's artifact, beyond the common inputs."""
        return {}

    def verify(self, ctx: FlowContext, entry: Revision) -> str | None:
        """Step 4, when a drift check of the current revision is due or a revision is made
        current again: None when the backend still holds its artifact as recorded, else MISSING
        or CHANGED. Leaves the storage in the revision's state (it becomes current)."""
        storage = self.storage(ctx)
        artifact = entry.artifact
        storage.restore_state(artifact.storage_state)
        info = storage.stat(entry.location)
        recorded = artifact.digest.removeprefix("sha256:")
        if info is None:
            return MISSING
        if info.size != artifact.size or (info.sha256 and info.sha256 != recorded):
            return CHANGED
        return None

    def settle(self, ctx: FlowContext) -> list[Event]:
        """Step 4, when status records the artifact of the current inputs: clear up what earlier
        publishes left (default: nothing to clear up). Returns the Events to post."""
        return []

    @abc.abstractmethod
    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        """Steps 6-7: build the flow's bytes and put them where agents find them; Ready."""

    def delete_revision(self, storage: S, record: Retired, scope: RetireScope) -> str | None:
        """Delete the object of `record` (a retired revision, or one a deleted StoredFlow held).
        None when it is gone (already gone counts), else why it was left in place. Raises
        StorageError (a retryable one keeps the record for the next pass). Default: the object at
        its location, addressed with its recorded state — only where this flow's objects go (its
        spec.key, or the directory of its generated keys)."""
        if not owned(storage, record.location, scope):
            return (f"it is not where flow {scope.flow_name!r} stores (status may have been written by someone "
                    "else); delete it by hand if it must go")
        if (unsealed := forged(record, scope)) is not None:
            return unsealed
        try:
            storage.restore_state(record.storage_state or {})
            storage.delete(record.location)
        finally:
            storage.restore_state(scope.current_state)
        return None


def forged(record: Retired, scope: RetireScope) -> str | None:
    """Why `record`'s backend state may not address a deletion: the operator did not seal it for
    this StoredFlow (``api/seals.py``). None when it did, or when there is no state (the location
    alone addresses the object: :func:`owned` checks it)."""
    state = record.storage_state
    if not state or (scope.seals is not None and scope.seals.holds_state(record.location, state, record.state_seal)):
        return None
    return ("its recorded storage state carries no seal of this operator (status may have been written by someone "
            "else, or before flowstore sealed its records); delete it by hand if it must go")


def owned(storage: Storage, location: str, scope: RetireScope) -> bool:
    """Whether `location` is one this flow's stores produce: its fixed place (spec.key, the
    storage's own key or path), or under the directory of its generated keys
    (``<prefix><slug(flow name)>/``)."""
    fixed = storage.location_for(scope.flow_name, key=scope.key)
    generated = posixpath.dirname(storage.location_for(scope.flow_name))
    return location == fixed or (bool(generated) and location.startswith(generated.rstrip("/") + "/"))
