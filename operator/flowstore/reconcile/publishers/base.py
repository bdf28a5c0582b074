"""How a flow gets into one family of storages: the interface every publisher implements.

The StoredFlow steps (``storedflow.py``) call a publisher at fixed points: ``check_spec`` when
the storage is resolved (step 1), ``resolve_source`` (step 2), ``fixed_format`` and
``extra_inputs`` while planning (step 3), ``verify`` for a due drift check (step 4), and
``publish`` to build and store (steps 6-7). A Storage class names its family
(``Storage.family``); :func:`~flowstore.reconcile.publishers.publisher_for` maps it here.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from flowstore.api.models import FlowSpec, SpecError, StorageSpec
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import Event, Outcome, Ports
from flowstore.reconcile.sources import read_source
from flowstore.reconcile.storages import open_storage
from flowstore.storage import Storage

#: what ``verify`` says of a recorded artifact the backend no longer holds as recorded
MISSING, CHANGED = "is missing", "has changed"


class Publisher(abc.ABC):
    family: ClassVar[str]
    #: the only format this family stores (None: the spec decides)
    fixed_format: ClassVar[str | None] = None

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

    def verify(self, ctx: FlowContext, ports: Ports, location: str) -> tuple[str | None, Storage | None]:
        """Step 4, when a drift check is due: None when the backend still holds the recorded
        artifact at `location`, else MISSING or CHANGED; and the storage opened for it."""
        storage = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        artifact = ctx.recorded
        assert artifact is not None  # up_to_date only verifies a recorded artifact
        storage.restore_state(artifact.storage_state)
        info = storage.stat(location)
        recorded = artifact.digest.removeprefix("sha256:")
        if info is None:
            return MISSING, storage
        if info.size != artifact.size or (info.sha256 and info.sha256 != recorded):
            return CHANGED, storage
        return None, storage

    def settle(self, ctx: FlowContext, ports: Ports) -> list[Event]:
        """Step 4, when status records the artifact of the current inputs: clear up what earlier
        publishes left (default: nothing to clear up). Returns the Events to post."""
        return []

    @abc.abstractmethod
    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        """Steps 6-7: build the flow's bytes and put them where agents find them; Ready."""
