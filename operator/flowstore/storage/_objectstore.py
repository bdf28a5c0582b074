"""The small base of the object-store backends (S3, GCS, Azure): blobs in one bucket/container.

What the three share lives here once: a lazily made, thread-safe SDK client; the primitives
(upload with a recorded sha256, download whole or bounded, stat, delete, check the container)
around a few SDK calls each backend supplies; and the one translation of SDK failures into
:mod:`flowstore.storage.errors`. A backend reads an SDK exception into a :class:`Reading` (which
failure it is, and the words to quote); the messages a person reads are written here, so they
say the same thing the same way for every cloud. Failures only one cloud has (an identity its
token service refused, a checksum its server recomputed, ...) the backend returns as errors.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn, TypeVar

from flowstore.artifacts.keys import default_key, join_prefix
from flowstore.storage.base import ObjectInfo, Shared, Storage, StoredArtifact, check_bounded, sha256_hex
from flowstore.storage.errors import (
    AuthFailed,
    ContainerNotFound,
    IntegrityError,
    InvalidConfig,
    NotFound,
    Rejected,
    StorageError,
    Unavailable,
)
from flowstore.storage.identity import WorkloadIdentity

_T = TypeVar("_T")

#: seconds to wait before retrying a throttled call
THROTTLED_RETRY_AFTER = 5.0
#: HTTP connections one SDK client keeps per host. One client serves every pass on a FlowStorage's
#: flows, up to the operator's workers (64 by default) at once; a connection its pool cannot keep
#: is dropped after the call (urllib3 warns "Connection pool is full") and the next call pays a new
#: TLS handshake. The SDKs' own pools hold 10.
POOL_CONNECTIONS = 64


def widen_pools(session: Any) -> None:
    """Let a requests `session` (the GCS and Azure SDKs' transport) keep POOL_CONNECTIONS
    connections per host, through the adapters the SDK mounted. An adapter that builds its pools
    its own way (mutual TLS, say) is left as it is."""
    from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE, HTTPAdapter

    for adapter in {id(a): a for a in session.adapters.values()}.values():
        if isinstance(adapter, HTTPAdapter) and type(adapter).init_poolmanager is HTTPAdapter.init_poolmanager:
            adapter.init_poolmanager(DEFAULT_POOLSIZE, POOL_CONNECTIONS, block=DEFAULT_POOLBLOCK)


class Failure(enum.Enum):
    """What an SDK exception means, as far as a person (and the retry policy) cares."""

    UNREACHABLE = "unreachable"  #: no answer, a timeout, a dropped connection
    TEMPORARY = "temporary"  #: a 5xx or other answer that may pass
    THROTTLED = "throttled"  #: the service asked us to slow down
    CONTAINER_MISSING = "container-missing"  #: the bucket / container does not exist
    DENIED = "denied"  #: credentials rejected, or no permission
    MISSING = "missing"  #: no object at the location
    INVALID = "invalid"  #: the configuration (bucket name, region, ...) cannot work
    REJECTED = "rejected"  #: another 4xx: retrying cannot help
    OTHER = "other"


@dataclasses.dataclass(frozen=True)
class Reading:
    """A backend's reading of one SDK exception: the failure, and what the message quotes."""

    failure: Failure
    #: the provider's error code and/or HTTP status, as the message shows it
    shown: str = ""
    #: the SDK's own message, redacted
    detail: str = ""
    #: the SDK exception's class name
    kind: str = ""


class ObjectStore(Storage):
    """Flows as objects in one bucket (S3, GCS) or container (Azure) of an object store.

    A subclass names its container field (its ``type_name`` names the service), makes its SDK client
    (:meth:`_make_client`), performs the five SDK calls (:meth:`_upload`, :meth:`_download`,
    :meth:`_head`, :meth:`_remove`, :meth:`_probe_container`) and reads SDK exceptions
    (:meth:`_read`); all of them may raise SDK exceptions freely.
    """

    #: the attribute (and spec field) naming the bucket or container
    container_field: ClassVar[str] = "bucket"
    #: what that is, in words
    container_noun: ClassVar[str] = "bucket"
    #: status field -> attribute, for :meth:`_status_config` (None values are left out)
    status_fields: ClassVar[Mapping[str, str]]

    #: what a subclass's credentials are, for "... or a workload identity, not both"
    credentials_noun: ClassVar[str] = "credentials"

    def __init__(self, container: str, *, key_prefix: str | None = None, identity: WorkloadIdentity | None = None,
                 credentials: object = None, **kwargs: Any) -> None:
        """`key_prefix` prefixes generated object names (``<prefix>/<slug>/<timestamp>``);
        `identity`: act as a Kubernetes ServiceAccount (:mod:`flowstore.storage.identity`), not
        together with `credentials`; `kwargs`: the base :class:`Storage` options."""
        super().__init__(**kwargs)
        if not container or not isinstance(container, str):
            raise InvalidConfig(f"{self.type_name} storage needs `{self.container_field}` "
                                f"(the {self.container_noun} flows are stored in)")
        if identity is not None and credentials is not None:
            raise InvalidConfig(f"{self.type_name} storage takes {self.credentials_noun} or a workload identity, "
                                "not both")
        setattr(self, self.container_field, container)
        self.key_prefix = key_prefix
        self.identity = identity
        self._clients = Shared()  # one SDK client for the storage and its per-pass forks

    # ------------------------------------------------------------------ construction
    @classmethod
    def _container_from(cls, config: Mapping[str, Any]) -> str:
        """The spec's bucket/container name; InvalidConfig when it is missing."""
        name = config.get(cls.container_field)
        if not name or not isinstance(name, str):
            raise InvalidConfig(f"{cls.type_name} storage needs `{cls.container_field}` "
                                f"(spec.{cls.type_name.lower()}.{cls.container_field})")
        return name

    @classmethod
    def _common_config(cls, config: Mapping[str, Any], identity: WorkloadIdentity | None) -> dict[str, Any]:
        """The keyword arguments every object store takes from its spec block."""
        return {"key_prefix": config.get("keyPrefix"), "identity": identity, **cls.common_kwargs(config)}

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any], *, credentials: Mapping[str, str] | None = None,
                    identity: WorkloadIdentity | None = None) -> ObjectStore:
        """From a FlowStorage spec block (or :meth:`to_status` output), acting as `identity` if given."""

    @classmethod
    def with_identity(cls, config: Mapping[str, Any], identity: WorkloadIdentity) -> ObjectStore:
        return cls.from_config(config, identity=identity)

    def _status_config(self) -> dict[str, Any]:
        doc = {field: getattr(self, attribute) for field, attribute in self.status_fields.items()}
        return {k: v for k, v in doc.items() if v is not None}

    # ------------------------------------------------------------------ locations
    def _fixed_key(self) -> str | None:
        """The seed's fixed object name for a single flow (``key``), if one was given."""
        key: str | None = getattr(self, "key", None)
        return key

    def location_for(self, flow_name: str, key: str | None = None) -> str:
        return key or self._fixed_key() or join_prefix(self.key_prefix, default_key(flow_name))

    def _container_name(self) -> str:
        name: str = getattr(self, self.container_field)
        return name

    # ------------------------------------------------------------------ client
    def _client(self) -> Any:
        """The instance's SDK client (created once, under a lock; the clients are thread-safe)."""
        return self._clients.get(self._make_client)

    @property
    def _client_instance(self) -> Any:
        """The client if one was made yet (None: none)."""
        return self._clients.value

    @abc.abstractmethod
    def _make_client(self) -> Any:
        """A new SDK client; a StorageError (MissingDependency, InvalidConfig, ...) if none can be made."""

    # ------------------------------------------------------------------ SDK calls (subclasses)
    @abc.abstractmethod
    def _upload(self, location: str, data: bytes, digest: str, content_type: str) -> bool:
        """Store `data` at `location`, recording `digest` as the ``sha256`` metadata. True when the
        service's answer proves it stored exactly `data` (``StoredArtifact.verified``)."""

    def _corrupted(self, location: str, problem: str, remove: Callable[[], None]) -> NoReturn:
        """The upload's answer shows the service stored other bytes (`problem`): `remove()` what was
        just written (best effort: no reader may load it), then an IntegrityError."""
        try:
            remove()
        except Exception:  # noqa: S110 - best effort: the IntegrityError below is what matters
            pass
        raise IntegrityError(f"upload of {self.url_for(location)} was corrupted in transit: the service stored "
                             f"{problem}; the object was removed, store the flow again")

    @abc.abstractmethod
    def _download(self, location: str, max_bytes: int | None) -> bytes:
        """The object's bytes; with `max_bytes`, at most ``max_bytes + 1`` of them."""

    @abc.abstractmethod
    def _head(self, location: str) -> ObjectInfo:
        """Size and recorded sha256 of the object (an SDK not-found exception when absent)."""

    @abc.abstractmethod
    def _remove(self, location: str) -> None:
        """Delete the object."""

    @abc.abstractmethod
    def _probe_container(self) -> None:
        """The cheapest call that fails when the container is missing or out of reach."""

    # ------------------------------------------------------------------ primitives
    def put_bytes(self, location: str, data: bytes, *, idempotency_key: str | None = None) -> StoredArtifact:
        digest = sha256_hex(data)
        content_type = "text/x-python" if self.stored_as_script else "application/octet-stream"
        verified = self._call(lambda: self._upload(location, data, digest, content_type), "upload", location)
        return StoredArtifact(location=location, url=self.url_for(location), sha256=digest, size=len(data),
                              verified=verified)

    def get_bytes(self, location: str) -> bytes:
        return self._call(lambda: self._download(location, None), "download", location)

    def get_bytes_bounded(self, location: str, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes are read (the caller verifies the sha256)."""
        if max_bytes <= 0:
            return super().get_bytes_bounded(location, max_bytes)
        data = self._call(lambda: self._download(location, max_bytes), "download", location)
        check_bounded(len(data), max_bytes, self.url_for(location))
        return data

    def stat(self, location: str) -> ObjectInfo | None:
        return self._call(lambda: self._head(location), "inspect", location, missing=lambda: None)

    def delete(self, location: str) -> None:
        self._call(lambda: self._remove(location), "delete", location, missing=lambda: None)  # gone is deleted

    def check_container(self) -> None:
        self._call(self._probe_container, "access", None)

    def _call(self, fn: Callable[[], _T], action: str, location: str | None, *,
              missing: Callable[[], _T] | None = None) -> _T:
        """`fn()`, its SDK failures translated; `missing()` instead when the object is missing.

        A translated auth failure is not chained to the SDK exception (its text can echo key ids
        or the string the SDK signed); any other is, which helps whoever debugs."""
        try:
            return fn()
        except StorageError:
            raise
        except Exception as exc:
            error = self._translate(exc, action, location)
            if missing is not None and isinstance(error, NotFound):
                return missing()
            raise error from (None if isinstance(error, AuthFailed) else exc)

    # ------------------------------------------------------------------ errors
    @abc.abstractmethod
    def _read(self, exc: BaseException, action: str, target: str, key: str | None) -> Reading | StorageError:
        """Read one SDK exception raised while doing `action` on `target` (`key` None: the
        container): a :class:`Reading`, or the error itself for a failure only this cloud has."""

    @abc.abstractmethod
    def _place(self) -> str:
        """Where the storage is, for messages (an endpoint URL)."""

    def _service_at(self) -> str:
        return f"{self.type_name} at {self._place()}"

    @abc.abstractmethod
    def _credentials_hint(self) -> str:
        """What to check when the service rejected the credentials."""

    @abc.abstractmethod
    def _identity_hint(self) -> str:
        """What to grant when the service denied the workload identity access."""

    def _container_not_found(self) -> ContainerNotFound:
        return ContainerNotFound(
            f"{self.container_field} {self._container_name()} does not exist at {self._place()}; "
            f"create it or fix spec.{self.type_name.lower()}.{self.container_field}"
        )

    def _translate(self, exc: BaseException, action: str, key: str | None) -> StorageError:
        """Map one SDK exception to the project's taxonomy, with a message for a person."""
        if isinstance(exc, StorageError):
            return exc
        target = self.url_for(key) if key is not None else f"{self.container_field} {self._container_name()}"
        reading = self._read(exc, action, target, key)
        if isinstance(reading, StorageError):
            return reading
        failure, shown, detail = reading.failure, reading.shown, reading.detail
        at = self._service_at()
        if failure is Failure.UNREACHABLE:
            return Unavailable(f"cannot {action} {target}: {at} is unreachable or timed out ({reading.kind}: {detail})")
        if failure in (Failure.TEMPORARY, Failure.THROTTLED):
            return Unavailable(f"cannot {action} {target}: {at} answered a temporary failure ({shown}: {detail})",
                               retry_after=THROTTLED_RETRY_AFTER if failure is Failure.THROTTLED else None)
        if failure is Failure.CONTAINER_MISSING:
            return self._container_not_found()
        if failure is Failure.DENIED and self.identity is not None:
            return AuthFailed(f"cannot {action} {target}: {at} denied access ({shown}) to "
                              f"{self.identity.describe()}; {self._identity_hint()}")
        if failure is Failure.DENIED:
            return AuthFailed(f"cannot {action} {target}: {at} rejected the credentials or denied access "
                              f"({shown}); {self._credentials_hint()}")
        if failure is Failure.MISSING:
            return NotFound(f"no flow artifact at {target} ({shown}); was the flow built (stored)?")
        if failure is Failure.INVALID:
            return InvalidConfig(f"cannot {action} {target}: {shown}: {detail}")
        if failure is Failure.REJECTED:
            return Rejected(f"cannot {action} {target}: {at} refused the request ({shown}: {detail})")
        return StorageError(f"cannot {action} {target} at {self._place()}: {shown}: {detail}")
