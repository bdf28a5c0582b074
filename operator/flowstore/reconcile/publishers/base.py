"""How a flow gets into one family of storages: the interface every publisher implements.

The StoredFlow steps (``storedflow.py``) call a publisher at fixed points: ``check_spec`` when
the storage is resolved (step 1), ``resolve_source`` (step 2), ``fixed_format`` and
``extra_inputs`` while planning (step 3), ``verify`` for a due drift check (step 4), and
``publish`` to build and store (steps 6-7). A Storage class names its family
(``Storage.family``); :func:`~flowstore.reconcile.publishers.publisher_for` maps it here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Generic, TypeVar

from flowstore.api.models import FlowSpec, SpecError, StorageSpec
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import Event, Outcome, Ports
from flowstore.reconcile.sources import read_source
from flowstore.storage import InvalidConfig, Storage

S = TypeVar("S", bound=Storage)

#: what ``verify`` says of a recorded artifact the backend no longer holds as recorded
MISSING, CHANGED = "is missing", "has changed"


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

    def verify(self, ctx: FlowContext, location: str) -> str | None:
        """Step 4, when a drift check is due: None when the backend still holds the recorded
        artifact at `location`, else MISSING or CHANGED."""
        storage = self.storage(ctx)
        artifact = ctx.recorded
        assert artifact is not None  # up_to_date only verifies a recorded artifact
        storage.restore_state(artifact.storage_state)
        info = storage.stat(location)
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
