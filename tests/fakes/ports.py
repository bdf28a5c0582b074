"""The reconcile core's Ports over dicts (an in-memory cluster): for unit tests of the core.

Builds run in the real sandbox and are counted; storages are the real backend classes, with
their uploads counted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from flowstore import sandbox
from flowstore.api.constants import Reason
from flowstore.api.models import StorageSpec
from flowstore.api.selectors import LabelSelector
from flowstore.controller.images import ImageBuilder
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.ports import BuildRequest, Pending
from flowstore.storage import Storage, backend_class
from flowstore.storage.identity import WorkloadIdentity, identity_from_settings, settings_for


class _FixedToken:
    def __init__(self, value: str) -> None:
        self.value = value

    def token(self) -> str:
        return self.value


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
        #: ServiceAccount name -> its annotations; their tokens are "token-for-<name>"
        self.service_accounts: dict[str, dict[str, str]] = {}
        #: what ambient_identity_refusal answers (None: FlowStorages may act as the operator)
        self.ambient_refusal: str | None = None
        #: the identities handed to storages
        self.identities: list[WorkloadIdentity] = []
        #: what shard() answers: the operator's --watch-label-selector (None: every object)
        self.selector: LabelSelector | None = None
        #: the operator's record key (controller/record_key.py reads the real one from a Secret)
        self.record_key = b"record key of the unit tests' operator!"

    def shard(self) -> LabelSelector | None:
        return self.selector

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.storages.get(name))

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.configmaps.get(name)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.secrets.get(name)

    def list_flowstorage_names(self, namespace: str) -> list[str]:
        return sorted(self.storages)

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

    def workload_identity(self, namespace: str, service_account: str, cloud: str, settings: Mapping[str, Any], *,
                          where: str, session_name: str) -> WorkloadIdentity:
        if service_account not in self.service_accounts:
            raise ReconcileError(Reason.SERVICE_ACCOUNT_NOT_FOUND, f"no ServiceAccount {service_account}",
                                 stalled=True)
        subject = f"ServiceAccount {namespace}/{service_account}"
        resolved = settings_for(cloud, settings, self.service_accounts[service_account], where=where, account=subject)
        return identity_from_settings(cloud, resolved, _FixedToken(f"token-for-{service_account}"), subject=subject,
                                      token_subject=f"system:serviceaccount:{namespace}:{service_account}",
                                      session_name=session_name)

    def ambient_identity_refusal(self, namespace: str) -> str | None:
        return self.ambient_refusal

    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str,
                    identity: WorkloadIdentity | None = None, *, namespace: str = "") -> Storage:
        self.opened += 1
        cls = backend_class(spec.backend)
        if identity is not None:
            self.identities.append(identity)
        storage = (cls.with_identity(spec.config, identity) if identity is not None
                   else cls.from_config(spec.config, credentials=credentials))
        original = storage.put_bytes

        def counted(location: str, data: bytes, **kwargs: Any) -> Any:
            self.uploads += 1
            return original(location, data, **kwargs)

        storage.put_bytes = counted  # type: ignore[method-assign]
        # a new storage per pass already (the operator's ports share one per FlowStorage and hand
        # each pass a fork); a copy would keep the wrappers bound to this one
        storage.fork = lambda: storage  # type: ignore[method-assign]
        return storage
