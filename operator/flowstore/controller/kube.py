"""The Kubernetes side of :class:`~flowstore.reconcile.Ports`, on the official client.

Reads that every pass makes come from memory, so a burst of flows costs no GET per flow:

- FlowStorages from the operator's own watch (``flowstorage_seen``, fed by the watch handler
  before it wakes the flows naming the storage, so a pass never reads an older spec than the
  one that woke it); a storage not seen yet is read with a GET;
- Secrets read by name (the operator may only ``get`` them: no list, no watch, so no Secret it
  was not asked for is ever in its memory) are reused for ``SECRET_TTL`` seconds, then read
  again; a pass that fails, one for a changed spec, or one asked for with
  ``flowstore.dev/requested-at`` drops its namespace's entries (credentials changed before a
  spec change or a request are read by that pass; a retry after a failure reads them again).
  At most ``SECRET_CACHE_MAX`` are kept.

The rest are fresh GETs. Status is written with JSON merge patches to the status subresource,
which never conflict with users' spec edits. API errors become :class:`ClusterUnavailable`
(retry) — never a crash.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from flowstore import sandbox
from flowstore.api.constants import FINALIZER, FLOWSTORAGE_PLURAL, GROUP, STOREDFLOW_PLURAL, VERSION, Reason
from flowstore.api.models import StorageSpec
from flowstore.api.selectors import LabelSelector
from flowstore.controller import metrics
from flowstore.controller.identity import AmbientPolicy, ServiceAccountTokens, workload_identity
from flowstore.controller.images import ImageBuilder
from flowstore.controller.jobs import JobBuilder
from flowstore.controller.policy import OperatorPolicy
from flowstore.reconcile.failures import ClusterUnavailable, ReconcileError, StatusRefused
from flowstore.reconcile.ports import BuildRequest, Pending
from flowstore.storage import Storage, backend_class
from flowstore.storage.endpoints import EndpointPolicy
from flowstore.storage.identity import WorkloadIdentity
from flowstore.storage.policy import ServePolicy

#: seconds a Secret read by name is reused before it is read again
SECRET_TTL = 30.0
#: Secrets kept at most (they are small: the keys a FlowStorage names)
SECRET_CACHE_MAX = 1024


def _not_found_is_none(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise ClusterUnavailable(f"HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # connection refused, timeouts
            raise ClusterUnavailable(f"{type(exc).__name__}: {exc}") from None

    return wrapper


class KubePorts:
    """Ports for the operator process. Thread-safe: used from the reconcile worker pool."""

    def __init__(self, api: client.ApiClient, *, build_timeout: float, build_memory: int,
                 max_builds: int = 2, max_build_jobs: int = 4, policy: OperatorPolicy | None = None,
                 ambient: AmbientPolicy | None = None, shard: LabelSelector | None = None,
                 record_key: bytes = b"") -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.build_timeout = build_timeout
        self.build_memory = build_memory
        self._builds = threading.BoundedSemaphore(max_builds)
        self._storages: dict[str, Storage] = {}
        self._lock = threading.Lock()
        self.policy = policy or OperatorPolicy()
        self.sandbox_policy = sandbox.SandboxPolicy(allow_unconfined=self.policy.allow_unconfined_builds)
        self.images = ImageBuilder()
        self.jobs = JobBuilder(api, max_jobs=max_build_jobs, policy=self.policy.builds)
        self.tokens = ServiceAccountTokens(self.core)
        self.ambient = ambient or AmbientPolicy()
        self._shard = shard
        self._record_key = record_key
        #: FlowStorages as the watch last saw them (metadata and spec only): (namespace, name) -> body
        self._flowstorages: dict[tuple[str, str], dict[str, Any]] = {}
        #: Secrets read recently: (namespace, name) -> (when read, monotonic; what was read)
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    def shard(self) -> LabelSelector | None:
        return self._shard

    @property
    def record_key(self) -> bytes:
        return self._record_key

    # ---------------------------------------------------------------- what the watches saw
    def flowstorage_seen(self, body: Mapping[str, Any], *, gone: bool = False) -> None:
        """A watch event of a FlowStorage (from kopf's event loop or its handler threads): keep its
        identity and spec — all a StoredFlow's pass reads of it — or forget it once it is gone."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if gone:
            self._flowstorages.pop(key, None)
            return
        slim = {k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "resourceVersion",
                                         "creationTimestamp", "deletionTimestamp", "labels", "annotations")
                if meta.get(k) is not None}
        self._flowstorages[key] = copy.deepcopy({"metadata": slim, "spec": body.get("spec") or {}})

    def forget_secrets(self, namespace: str) -> None:
        """Read the Secrets of `namespace` again next time (a pass there failed)."""
        for key in [k for k in list(self._secrets) if k[0] == namespace]:
            self._secrets.pop(key, None)

    # ---------------------------------------------------------------- reads
    def seen_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FlowStorage as the watch last saw it (never a GET: None when it has not; not a copy)."""
        return self._flowstorages.get((namespace, name))

    def add_finalizer(self, namespace: str, name: str, body: Mapping[str, Any]) -> bool:
        """Add flowstore's finalizer to StoredFlow `name` after those `body` shows (a merge patch
        with its resourceVersion: refused when the object changed since, then read again once).
        Whether it was added (False: gone, or it holds it already)."""
        for _ in range(2):
            meta = body.get("metadata") or {}
            held = list(meta.get("finalizers") or [])
            if FINALIZER in held or meta.get("deletionTimestamp"):
                return False
            patch = {"metadata": {"finalizers": [*held, FINALIZER], "resourceVersion": meta.get("resourceVersion")}}
            try:
                self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, STOREDFLOW_PLURAL, name, patch)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise ClusterUnavailable(f"adding the finalizer: HTTP {exc.status} {exc.reason}") from None
            read = self.get_storedflow(namespace, name)
            if read is None:
                return False
            body = read
        return False

    def get_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The FlowStorage as the watch last saw it; a GET when the watch has not (yet)."""
        seen = self._flowstorages.get((namespace, name))
        if seen is not None:
            return copy.deepcopy(seen)
        read: dict[str, Any] | None = self.read_flowstorage(namespace, name)
        return read

    @_not_found_is_none
    def read_flowstorage(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _as_dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, FLOWSTORAGE_PLURAL, name))

    @_not_found_is_none
    def get_storedflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        return _as_dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, STOREDFLOW_PLURAL, name))

    @_not_found_is_none
    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        cm = self.core.read_namespaced_config_map(name, namespace)
        meta = cm.metadata or client.V1ObjectMeta()
        return {"metadata": {"name": name, "resourceVersion": meta.resource_version},
                "data": cm.data or {}, "binaryData": cm.binary_data or {}}

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, if the operator's Secret policy lets specs use it (else ReconcileError
        SecretNotAllowed, saying how to opt it in): every Secret a spec names comes here."""
        secret = self._recent_secret(namespace, name)
        if secret is None:
            return None
        refusal = self.policy.secret_refusal(namespace, name, secret)
        if refusal is not None:
            raise ReconcileError(Reason.SECRET_NOT_ALLOWED, refusal, stalled=True)
        return secret

    def _recent_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret read within SECRET_TTL seconds, else read now (a missing one is not kept)."""
        key, now = (namespace, name), time.monotonic()
        cached = self._secrets.get(key)
        if cached is not None and now - cached[0] < SECRET_TTL:
            return copy.deepcopy(cached[1])
        secret: dict[str, Any] | None = self._read_secret(namespace, name)
        if secret is None:
            self._secrets.pop(key, None)
            return None
        if len(self._secrets) >= SECRET_CACHE_MAX:
            for old in [k for k, (t, _) in list(self._secrets.items()) if now - t >= SECRET_TTL] or list(self._secrets):
                self._secrets.pop(old, None)
        self._secrets[key] = (now, secret)
        return copy.deepcopy(secret)

    @_not_found_is_none
    def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        secret = self.core.read_namespaced_secret(name, namespace)
        data = {k: base64.b64decode(v).decode("utf-8") for k, v in (secret.data or {}).items()}
        meta = secret.metadata or client.V1ObjectMeta()
        return {"metadata": {"uid": meta.uid, "resourceVersion": meta.resource_version,
                             "labels": dict(meta.labels or {})},
                "data": data}

    def list_storedflows(self, namespace: str) -> list[dict[str, Any]]:
        try:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, STOREDFLOW_PLURAL)
        except Exception as exc:
            raise ClusterUnavailable(f"listing StoredFlows: {exc}") from None
        return list(_as_dict(result).get("items") or [])

    def list_flowstorage_names(self, namespace: str) -> list[str]:
        try:
            result = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, FLOWSTORAGE_PLURAL)
        except Exception as exc:
            raise ClusterUnavailable(f"listing FlowStorages: {exc}") from None
        return sorted(str((item.get("metadata") or {}).get("name")) for item in _as_dict(result).get("items") or [])

    # ---------------------------------------------------------------- builds and storages
    def build(self, request: BuildRequest) -> sandbox.Built | Pending:
        """The operator's sandbox (at most `max_builds` at once), or a builder Job (spec.build)."""
        if request.spec is not None:
            return self.jobs.build(request)
        with self._builds, metrics.BUILD_SECONDS.time():
            source, bundle = (None, request.source) if request.bundle else (request.source, None)
            built = sandbox.build_pickle(source, bundle=bundle, flow_name=request.flow_name,
                                         object_name=request.object_name, timeout=self.build_timeout,
                                         memory_limit_bytes=self.build_memory, policy=self.sandbox_policy)
        _record_confinement(built.confinement)
        return built

    def probe_sandbox(self) -> dict[str, object]:
        """What this kernel gives the build sandbox, said in the log and the metrics (at start)."""
        log = logging.getLogger("flowstore.sandbox")
        try:
            found = sandbox.probe(self.sandbox_policy)
        except sandbox.BuildError as exc:
            log.warning("build sandbox: %s", exc.message)
            _record_confinement({})
            return {}
        missing = sandbox.missing_features(found)
        _record_confinement(found)
        if not missing:
            log.info("build sandbox: confined (Landlock ABI %s): files, network, signals and every process of a "
                     "build", found.get("landlockABI"))
        elif self.sandbox_policy.allow_unconfined:
            log.warning("build sandbox: this kernel cannot confine builds fully (no %s; Landlock ABI %s); sandbox "
                        "builds run anyway (--allow-unconfined-builds)", ", ".join(missing), found.get("landlockABI"))
        else:
            log.warning("build sandbox: this kernel cannot confine builds fully (no %s; Landlock ABI %s); StoredFlows "
                        "built in the operator's sandbox are refused (SandboxUnavailable): build them with spec.build, "
                        "or allow it with --allow-unconfined-builds", ", ".join(missing), found.get("landlockABI"))
        return found

    def check_script(self, source: bytes, *, filename: str = "<flow script>") -> None:
        sandbox.check_script(source, filename)

    def storage_for(self, spec: StorageSpec, credentials: Mapping[str, str] | None, cache_key: str,
                    identity: WorkloadIdentity | None = None, *, namespace: str = "") -> Storage:
        """One Storage (and SDK client) per FlowStorage config + credentials version (or identity),
        opened under the operator's policy for `namespace`. Uploads are counted in the metrics
        (``flowstore_artifacts_stored_total``), not here."""
        key = f"{namespace}|{cache_key}"
        with self._lock:
            storage = self._storages.get(key)
            if storage is None:
                cls = backend_class(spec.backend)
                storage = (cls.with_identity(spec.config, identity) if identity is not None
                           else cls.for_operator(spec.config, credentials=credentials,
                                                 policy=self.serve_policy(namespace)))
                if len(self._storages) > 256:
                    self._storages.clear()
                self._storages[key] = storage
        return storage

    def serve_policy(self, namespace: str = "") -> ServePolicy:
        """What storages opened for FlowStorages of `namespace` may do (the operator's flags)."""
        return ServePolicy(namespace=namespace, local_root=self.policy.local_root,
                           endpoints=EndpointPolicy(allow_private=self.policy.allow_private_endpoints),
                           webhook_env=self.policy.webhook_env)

    # ---------------------------------------------------------------- identity (controller/identity.py)
    def workload_identity(self, namespace: str, service_account: str, cloud: str, settings: Mapping[str, Any], *,
                          where: str, session_name: str) -> WorkloadIdentity:
        return workload_identity(self.core, self.tokens, namespace, service_account, cloud, settings, where=where,
                                 session_name=session_name)

    def ambient_identity_refusal(self, namespace: str) -> str | None:
        return self.ambient.refusal(namespace)

    # ---------------------------------------------------------------- writes
    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch `status`; returns the updated object, or None if it is gone."""
        try:
            return _as_dict(self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            ))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status in (400, 422):  # the API server refused what flowstore wrote: a bug, not an outage
                raise StatusRefused(f"the API server refused the status flowstore wrote (HTTP {exc.status}: "
                                    f"{_api_message(exc)}); report it with the operator log") from None
            raise ClusterUnavailable(f"writing status: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:
            raise ClusterUnavailable(f"writing status: {exc}") from None


def _record_confinement(found: Mapping[str, object] | None) -> None:
    if found is None:
        return
    for feature in sandbox.CONFINEMENT_FEATURES:
        metrics.SANDBOX_CONFINED.labels(feature=feature).set(1 if found.get(feature) is True else 0)
    abi = found.get("landlockABI")
    if isinstance(abi, int):
        metrics.SANDBOX_LANDLOCK_ABI.set(abi)


def _api_message(exc: ApiException) -> str:
    """The message of an API server error (its Status body), short."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)[:500]
    except (ValueError, AttributeError):
        return str(exc.reason)


def _as_dict(value: object) -> dict[str, Any]:
    """The custom-objects API returns plain dicts typed as `object`."""
    assert isinstance(value, dict)
    return value
