"""The reconcile core's Ports over dicts (an in-memory cluster): for unit tests of the core.

Builds run in the real sandbox and are counted; storages are the real backend classes, with
their uploads counted.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from flowstore import sandbox
from flowstore.api.models import StorageSpec
from flowstore.controller.images import ImageBuilder
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
        self.images = ImageBuilder(debounce=0.0)

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.storages.get(name))

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get(name)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.flows.values())

    def build_pickle(self, source: bytes, *, flow_name: str, object_name: str | None,
                     bundle: bool = False) -> sandbox.Built:
        self.builds += 1
        return sandbox.build_pickle(None if bundle else source, bundle=source if bundle else None,
                                    flow_name=flow_name, object_name=object_name, timeout=20)

    def check_script(self, source: bytes, *, filename: str = "<flow script>") -> None:
        sandbox.check_script(source, filename)

    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str) -> Storage:
        storage = backend_class(spec.backend).from_config(spec.config, credentials=credentials)
        original = storage.put_bytes

        def counted(location: str, data: bytes, **kwargs: Any) -> Any:
            self.uploads += 1
            return original(location, data, **kwargs)

        storage.put_bytes = counted  # type: ignore[method-assign]
        return storage
