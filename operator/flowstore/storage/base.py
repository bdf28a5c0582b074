"""The seed's Storage interface (Prefect 1.x `environments.storage.base.Storage`), on a small
byte-level contract that each backend implements.

A backend implements five primitives on *bytes at a location* (`put_bytes`, `get_bytes`,
`stat`, `delete`, `url_for`) plus its two documents. Everything the seed exposes (`flows`,
`add_flow`, `__contains__`, `build`, `get_flow`, `run_basic_healthchecks`,
`get_env_runner`) is written once here on top of them, so every backend behaves alike and
the shared conformance suite (tests/backends/conformance.py) can hold them to it.

A storage is written down in two ways:

* :meth:`Storage.serialize` is the seed's own: snake_case keys and ``__version__``, exactly what
  Prefect 1.4.1's ``prefect.serialization.storage.StorageSchema`` loads (a backend's
  :meth:`Storage._seed_config`). What the seed has no field for is left out.
* :meth:`Storage.to_status` is the Kubernetes one: camelCase, complete (key prefixes, endpoints,
  the image digest, the Webhook's build response), written to ``status.storage`` by the operator
  and read back by agents (a backend's :meth:`Storage._status_config`).

:func:`flowstore.storage.from_serialized` rebuilds a storage from either.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from flowstore.artifacts import envelope, loading
from flowstore.artifacts.keys import default_key
from flowstore.storage.errors import IntegrityError, InvalidConfig, NotFound
from flowstore.storage.identity import WorkloadIdentity
from flowstore.storage.policy import ServePolicy
from flowstore.storage.refs import ConfigRef

#: the Prefect release whose storage schemas :meth:`Storage.serialize` writes (its ``__version__``)
SEED_SCHEMA_VERSION = "1.4.1"
#: the key that marks a document as the seed's (Prefect's schemas add it to everything they dump)
SEED_VERSION_KEY = "__version__"


class Shared:
    """A resource made once, on first use, and shared by a storage and its forks
    (:meth:`Storage.fork`): an SDK client, an HTTP session (thread-safe ones)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value: Any = None

    def get(self, make: Callable[[], Any]) -> Any:
        with self._lock:
            if self.value is None:
                self.value = make()
            return self.value


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about a stored object without downloading it."""

    size: int
    sha256: str | None  # hex digest recorded at upload (object metadata), if the backend keeps one


@dataclasses.dataclass(frozen=True)
class StoredArtifact:
    """The result of one upload: enough to fill StoredFlow `status.artifact`."""

    location: str
    url: str
    sha256: str  # hex
    size: int
    #: backend state an agent needs to load this artifact besides the configuration (e.g. the
    #: Webhook's build response); merged into the serialized storage. Never secret values.
    storage_state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: the service's answer to the upload proves it holds exactly these bytes (a checksum it computed
    #: over what it stored, compared with ours), so the publisher need not read the object back
    verified: bool = False


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_by_reading(storage: Storage, location: str) -> ObjectInfo | None:
    """:meth:`Storage.stat` for backends that keep no size or digest beside an object (a file in
    an image or at a commit): read it whole and measure it. None when absent."""
    try:
        data = storage.get_bytes(location)
    except NotFound:
        return None
    return ObjectInfo(size=len(data), sha256=sha256_hex(data))


class Storage(abc.ABC):
    """Base interface for storing flows. All keyword arguments are valid on every subclass.

    Args (the seed's):
        secrets: names of secrets made available to flow runs (recorded, never resolved here).
        labels: labels to associate with this storage.
        add_default_labels: add the backend's default label (e.g. ``s3-flow-storage``).
        stored_as_script: flows are kept as ``.py`` source rather than pickled.
    """

    #: ``type`` in :meth:`serialize` and :meth:`to_status`; the registry maps it back to the class.
    type_name: ClassVar[str]
    #: the seed's default label for this backend, or None.
    default_label: ClassVar[str | None] = None
    #: the backend holds one flow only (the seed's Webhook): any second flow is a name conflict.
    single_flow: ClassVar[bool] = False
    #: how the operator puts a flow in this storage: ``objects`` (upload bytes to a location),
    #: ``image`` (a layer of the storage's one image) or ``git`` (pin a file at a commit; the
    #: storage is read-only). The controller keeps one publisher per family.
    family: ClassVar[str] = "objects"
    #: the operator deletes objects it stored here (deletionPolicy Delete, retention); False
    #: where it only reads (git-hosted storages: a commit is never deleted)
    deletes_objects: ClassVar[bool] = True
    #: the fields of this backend's FlowStorage block that name ConfigMaps or Secrets, and what
    #: the storage gets in their place (:mod:`flowstore.storage.refs`); the operator reads them
    config_refs: ClassVar[tuple[ConfigRef, ...]] = ()
    #: the cloud whose workload identity this backend can act as (``aws``, ``gcp``, ``azure``;
    #: :mod:`flowstore.storage.identity`), or None when it has none
    identity_cloud: ClassVar[str | None] = None

    def __init__(
        self,
        secrets: list[str] | None = None,
        labels: list[str] | None = None,
        add_default_labels: bool = True,
        stored_as_script: bool = False,
        result: Any = None,
    ) -> None:
        self.secrets = list(secrets or [])
        self.stored_as_script = stored_as_script
        self.result = result
        self.add_default_labels = add_default_labels
        self._labels = list(labels or [])
        #: the seed's ``flows``: flow name -> location
        self.flows: dict[str, str] = {}
        #: the seed's local_script_path (flow_script_path for Webhook): where build() reads the
        #: script of a flow added in script mode without its source
        self.local_script_path: str | None = None
        # flow name -> pending payload (flow object, or script bytes) until build()
        self._pending: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None) -> Storage:
        """Build from a camelCase config: the CRD's backend block merged with the common
        FlowStorage fields (``storedAsScript``, ``labels``, ``addDefaultLabels``, ``secrets``),
        or :meth:`to_status` output (``type``/``flows`` are ignored). `credentials` holds the
        referenced Secret's data (already decoded); None means the SDK's default chain.

        A config with ``type`` is a document an agent reads (status, or the seed's schema turned
        into a config by :meth:`config_from_seed`), never a FlowStorage spec (the CRD has no such
        field): backends use it to tell an agent, which may use its own environment, from the
        operator, which must not."""

    @classmethod
    def for_operator(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None,
                     policy: ServePolicy) -> Storage:
        """:meth:`from_config` for a FlowStorage the operator serves, under the operator's
        `policy` (what it lends the spec's author). Backends that reach places the spec names
        (a directory, URLs, the environment) override it; the others have nothing to apply."""
        return cls.from_config(config, credentials=credentials)

    @classmethod
    def with_identity(cls, config: Mapping[str, Any], identity: WorkloadIdentity) -> Storage:
        """:meth:`from_config` acting as a Kubernetes ServiceAccount (a workload identity)
        instead of with a Secret's credentials. Backends of :attr:`identity_cloud` override it."""
        raise InvalidConfig(f"{cls.type_name} storage cannot use a ServiceAccount's identity "
                            "(spec.serviceAccountName): it is for S3, CodeCommit, GCS and Azure")

    @classmethod
    def uses_ambient_identity(cls, config: Mapping[str, Any]) -> bool:
        """Whether this configuration, opened with no credentials and no workload identity, acts
        as whoever the process is (the SDK's default chain: the operator's own IRSA role, GKE
        or AKS identity, environment keys). The operator refuses that unless its policy allows."""
        return False

    @staticmethod
    def common_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
        """The base-class keyword arguments spelled in `config` (camelCase)."""
        return {
            "stored_as_script": bool(config.get("storedAsScript", False)),
            "labels": list(config.get("labels") or []),
            "add_default_labels": bool(config.get("addDefaultLabels", True)),
            "secrets": list(config.get("secrets") or []),
        }

    # ------------------------------------------------------------------ primitives
    @abc.abstractmethod
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        """Store `data` at `location` atomically (readers see all of it or nothing), recording
        its sha256 where the backend can keep metadata. Overwrites. Raises StorageError.

        `idempotency_key` names the version being stored: a retry of the same store (after a
        crash, say) carries the same key. Backends addressed by location need none (storing
        again overwrites); a service that assigns ids (Webhook) is sent it, so it can answer a
        retry with the object it already made."""

    @abc.abstractmethod
    def get_bytes(self, location: str) -> bytes:
        """Return the bytes at `location`. Raises NotFound, or another StorageError."""

    def get_bytes_bounded(self, location: str, max_bytes: int) -> bytes:
        """The bytes at `location`, refusing more than `max_bytes` (IntegrityError): an agent
        reads an artifact bounded by the size recorded for it. Backends that can stream read at
        most ``max_bytes + 1`` bytes (so a larger object is never all in memory); this default
        reads it whole, then checks."""
        data = self.get_bytes(location)
        check_bounded(len(data), max_bytes, self.url_for(location))
        return data

    @abc.abstractmethod
    def stat(self, location: str) -> ObjectInfo | None:
        """Size and recorded digest of the object at `location`, or None when absent."""

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        """Remove the object. Already gone counts as success."""

    @property
    def location_names_object(self) -> bool:
        """Whether a location alone names one object (True: objects addressed by key or path).
        False where a service assigns ids (Webhook): every version has the same location, and
        only its recorded state tells them apart."""
        return True

    def unrecorded_state(self, location: str, *, idempotency_key: str,
                         data: Callable[[], bytes]) -> Mapping[str, Any] | None:
        """The `storage_state` that addresses what an interrupted ``put_bytes(location, …,
        idempotency_key=…)`` may have left (its answer never reached a status), for
        :meth:`restore_state` then :meth:`delete`: ``{}``, the default, where the location alone
        names the object; None when it cannot be found. `data` gives bytes a backend may have to
        send to find it (see Webhook)."""
        return {}

    @abc.abstractmethod
    def url_for(self, location: str) -> str:
        """A human- and agent-readable URL for `location` (e.g. ``s3://bucket/key``)."""

    @classmethod
    def config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        """The camelCase config (with ``type``) equal to the seed's serialized storage `doc`
        (:meth:`serialize` output, or Prefect 1.4.1's own), for :meth:`from_config`."""
        return {
            "type": cls.type_name,
            **cls._config_from_seed(doc),
            "storedAsScript": bool(doc.get("stored_as_script") or False),
            "secrets": list(doc.get("secrets") or []),
        }

    @classmethod
    @abc.abstractmethod
    def _config_from_seed(cls, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Backend-specific camelCase config fields from the seed's fields in `doc`."""

    @abc.abstractmethod
    def _status_config(self) -> dict[str, Any]:
        """Backend-specific fields of :meth:`to_status` (camelCase keys, never secret values)."""

    @abc.abstractmethod
    def _seed_config(self) -> dict[str, Any]:
        """Backend-specific fields of :meth:`serialize`: only fields of the class's schema in
        Prefect 1.4.1 (``prefect/serialization/storage.py``), snake_case, never secret values.
        None values are left out."""

    def check_container(self) -> None:
        """Verify the bucket/container/directory exists and is accessible. Raises StorageError.
        Backends without a container to check keep this default."""
        return None

    def fork(self) -> Storage:
        """This storage for one reconcile pass: its clients shared (they are thread-safe), the
        state ``restore_state`` sets its own. The operator keeps one storage per FlowStorage for
        all its StoredFlows, whose passes run at once: a state restored by one pass must never
        address another pass's request (a delete of another flow's object)."""
        return copy.copy(self)

    def restore_state(self, state: Mapping[str, Any] | None) -> None:
        """Re-apply the `storage_state` recorded with an artifact (e.g. from StoredFlow status
        after an operator restart) before reading, checking or deleting that artifact.
        Backends whose artifacts are addressed by location alone keep this default."""
        return None

    def location_for(self, flow_name: str, key: str | None = None) -> str:
        """Where a flow named `flow_name` goes: `key` if given, else the seed's default key
        ``<slug(flow name)>/<slug(UTC now)>`` under the backend's prefix."""
        return key or default_key(flow_name)

    # ------------------------------------------------------------------ seed interface
    @property
    def labels(self) -> list[str]:
        labels = list(self._labels)
        if self.add_default_labels and self.default_label and self.default_label not in labels:
            labels.append(self.default_label)
        return labels

    def __contains__(self, obj: Any) -> bool:
        """True if a flow (object with ``name``) or flow name is in this storage."""
        name = obj if isinstance(obj, str) else getattr(obj, "name", None)
        return isinstance(name, str) and name in self.flows

    def add_flow(self, flow: Any, source: bytes | None = None) -> str:
        """Add a flow (pickled at build) or, with ``stored_as_script``, its script `source`.

        Returns the location it will have after :meth:`build`. Raises ValueError if a flow
        with the same name is already in this storage (the seed's name-conflict rule).
        """
        name = flow if isinstance(flow, str) else flow.name
        if name in self:
            raise ValueError(f'Name conflict: Flow with the name "{name}" is already present in this storage.')
        if self.stored_as_script and source is None and not self.local_script_path:
            raise ValueError("stored_as_script=True needs the script's source bytes: add_flow(flow, source=...), "
                             "or a local_script_path to read them from at build()")
        location = self.location_for(name)
        self.flows[name] = location
        # script mode without source: None, read from local_script_path at build() (the seed's way)
        self._pending[name] = source if self.stored_as_script else flow
        return location

    def _load_local_scripts(self) -> None:
        for name, payload in self._pending.items():
            if self.stored_as_script and payload is None and self.local_script_path:
                try:
                    self._pending[name] = Path(self.local_script_path).read_bytes()
                except OSError as exc:
                    raise InvalidConfig(
                        f"cannot read the flow script {self.local_script_path}: {exc.strerror}") from None

    #: concurrent uploads in build(): uploads mostly wait on the network
    build_concurrency: ClassVar[int] = 8

    def build(self) -> Storage:
        """Upload every flow added since the last build, several at a time. Returns self.
        A failed upload raises (the first error) after the others finished; flows that were
        uploaded are no longer pending, so calling build() again retries only the rest."""
        from concurrent.futures import ThreadPoolExecutor

        self._load_local_scripts()
        pending = list(self._pending.items())
        payloads = [(name, payload if self.stored_as_script else envelope.dumps(payload)) for name, payload in pending]

        def upload(item: tuple[str, bytes]) -> str:
            name, data = item
            self.put_bytes(self.flows[name], data)
            return name

        errors: list[BaseException] = []
        with ThreadPoolExecutor(max_workers=max(1, min(self.build_concurrency, len(payloads)))) as pool:
            for future in [pool.submit(upload, item) for item in payloads]:
                try:
                    self._pending.pop(future.result(), None)
                except Exception as exc:  # keep going: report after every upload settled
                    errors.append(exc)
        if errors:
            raise errors[0]
        return self

    def get_flow(self, flow_location: str | None = None, *, sha256: str | None = None,
                 flow_name: str | None = None, object_name: str | None = None) -> Any:
        """Return the flow stored at `flow_location`.

        With `sha256`, the bytes are verified before anything is unpickled or executed
        (IntegrityError on mismatch). Script-mode flows are executed *here*, in the caller's
        process, to extract the flow object (the agent's job), chosen by `object_name` or
        `flow_name`.
        """
        location = flow_location or self._default_location()
        if location not in self.flows.values() and self.flows:
            raise ValueError(f"Flow is not contained in this Storage: {location}")
        data = self.get_bytes(location)
        verify_digest(data, sha256, what=self.url_for(location))
        if flow_name is None and self.stored_as_script:  # the seed's: the flow stored at that location
            flow_name = next((n for n, loc in self.flows.items() if loc == location), None)
        return loading.load(data, artifact_format(data, stored_as_script=self.stored_as_script),
                            flow_name=flow_name, object_name=object_name)

    def _default_location(self) -> str:
        if len(self.flows) == 1:
            return next(iter(self.flows.values()))
        raise ValueError("flow_location is required when this storage does not hold exactly one flow")

    def serialize(self) -> dict[str, Any]:
        """The seed's serialized storage: ``type``, ``__version__``, ``flows``, ``secrets`` and the
        class's fields, snake_case, as Prefect 1.4.1's ``StorageSchema`` loads them (so a Prefect 1
        agent or server can use it). Labels and flowstore's own fields are not part of it: see
        :meth:`to_status`."""
        fields = {k: v for k, v in self._seed_config().items() if v is not None}
        return {
            "type": self.type_name,
            SEED_VERSION_KEY: SEED_SCHEMA_VERSION,
            **fields,
            "flows": dict(self.flows),
            "secrets": list(self.secrets),
        }

    def to_status(self) -> dict[str, Any]:
        """The camelCase document the operator writes to ``status.storage`` (type, the backend's
        configuration, format, labels, flows): everything an agent needs to find and load the
        flows, never a secret value. :func:`flowstore.storage.from_serialized` reads it back."""
        return {
            "type": self.type_name,
            **self._status_config(),
            "storedAsScript": self.stored_as_script,
            "labels": self.labels,
            "secrets": list(self.secrets),
            "flows": dict(self.flows),
        }

    def run_basic_healthchecks(self) -> None:
        """The seed's healthchecks: the container is reachable, and every added flow either
        pickles (pickle mode) or compiles (script mode)."""
        self._load_local_scripts()
        self.check_container()
        for name, payload in self._pending.items():
            if self.stored_as_script:
                compile(payload, f"<flow {name}>", "exec")
            else:
                envelope.dumps(payload)

    def get_env_runner(self, flow_location: str) -> EnvRunner:
        """Something with ``run(env)`` that runs the flow at `flow_location` in a subprocess."""
        return EnvRunner(self, flow_location)


def artifact_format(data: bytes, *, stored_as_script: bool) -> str:
    """pickle, script or bundle. A bundle (a flow of several files) is a gzip stream: neither a
    pickle envelope (JSON), a bare pickle (0x80) nor a Python script starts with gzip's magic."""
    if data[:2] == b"\x1f\x8b":
        return "bundle"
    return "script" if stored_as_script else "pickle"


def check_bounded(size: int, max_bytes: int, what: str) -> None:
    """IntegrityError when `size` bytes (read so far) are more than `max_bytes`."""
    if size > max_bytes:
        raise IntegrityError(
            f"{what}: holds more than the {max_bytes} bytes recorded for it; the artifact was replaced, or the "
            "status names another object. Refusing to read further; re-store the flow (e.g. touch its StoredFlow)."
        )


def read_bounded(stream: Any, max_bytes: int, what: str, chunk: int = 1024 * 1024) -> bytes:
    """At most `max_bytes` bytes of a file-like `stream` (``read(n)``); one more is an IntegrityError."""
    parts: list[bytes] = []
    total = 0
    while True:
        part = stream.read(min(chunk, max_bytes + 1 - total))
        if not part:
            return b"".join(parts)
        parts.append(part)
        total += len(part)
        check_bounded(total, max_bytes, what)


def verify_digest(data: bytes, expected_hex: str | None, *, what: str) -> None:
    """Raise IntegrityError unless `data` hashes to `expected_hex` (``sha256:`` prefix allowed)."""
    if expected_hex is None:
        return
    expected = expected_hex.removeprefix("sha256:")
    actual = sha256_hex(data)
    if actual != expected:
        raise IntegrityError(
            f"{what}: content digest sha256:{actual} ({len(data)} bytes) does not match the recorded "
            f"sha256:{expected}; the artifact was modified or truncated. Refusing to load it; "
            "re-store the flow (e.g. touch its StoredFlow) or restore the object."
        )


class EnvRunner:
    """The seed's env runner: runs a stored flow's ``run()`` in a child process with `env`."""

    def __init__(self, storage: Storage, flow_location: str) -> None:
        self.storage = storage
        self.flow_location = flow_location

    def run(self, env: Mapping[str, str] | None = None) -> int:
        import json
        import os
        import subprocess
        import sys

        # the status document: complete (endpoints, prefixes), unlike the seed's schema
        spec = json.dumps({"storage": self.storage.to_status(), "location": self.flow_location})
        child_env = {**os.environ, **(env or {}), "FLOWSTORE_RUN_SPEC": spec}
        return subprocess.call([sys.executable, "-m", "flowstore.storage._run_flow"], env=child_env)
