"""The reconcile core's Ports over dicts (an in-memory cluster): for unit tests of the core.

Builds run in the real sandbox and are counted; storages are the real backend classes, with
their uploads counted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from flowstore import sandbox
from flowstore.api.models import StorageSpec
from flowstore.controller.images import ImageBuilder
from flowstore.reconcile.ports import BuildRequest, Pending
from flowstore.storage import Storage, backend_class


class FakeCluster:
    """The Ports protocol over dicts; builds run in the real sandbox and are counted."""

    def __init__(self) -> None:
        self.storages: dict[str, dict[str, Any]] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}
        self.flows: dict[str, dict[str, Any]] = {}
        self.builds = 0
        self.uploads = 0
        #: storages opened (``storage_for`` calls): the core opens one per pass
        self.opened = 0
        self.images = ImageBuilder(debounce=0.0)
        self.jobs: Callable[[BuildRequest], sandbox.Built | Pending] | None = None

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.storages.get(name))

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get(name)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.flows.values())

    def build(self, request: BuildRequest) -> sandbox.Built | Pending:
        """The real sandbox; a request for a builder Job (spec.build) goes to `jobs`, a fake
        that tests set (the real Job builder needs a node: tests/cluster)."""
        if request.spec is not None:
            assert self.jobs is not None, "spec.build in a unit test: set FakeCluster.jobs"
            return self.jobs(request)
        self.builds += 1
        source, bundle = (None, request.source) if request.bundle else (request.source, None)
        return sandbox.build_pickle(source, bundle=bundle, flow_name=request.flow_name,
                                    object_name=request.object_name, timeout=20)

    def check_script(self, source: bytes, *, filename: str = "<flow script>") -> None:
        sandbox.check_script(source, filename)

    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str) -> Storage:
        self.opened += 1
        storage = backend_class(spec.backend).from_config(spec.config, credentials=credentials)
        original = storage.put_bytes

        def counted(location: str, data: bytes, **kwargs: Any) -> Any:
            self.uploads += 1
            return original(location, data, **kwargs)

        storage.put_bytes = counted  # type: ignore[method-assign]
        return storage
