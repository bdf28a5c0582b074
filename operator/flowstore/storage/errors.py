"""The one error taxonomy every backend raises instead of SDK exceptions.

Each error says whether retrying can help (`retryable`), so the controller's single
translation point (:mod:`flowstore.reconcile.failures`) never has to know an SDK.
Messages are written for a person and never contain secret values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flowstore.api.constants import Reason


def redact(text: str, secrets: Iterable[object], *, shortest: int = 4) -> str:
    """`text` with every secret value (a string of at least `shortest` characters) masked, for
    a message built from an SDK's words, which can quote what it was given."""
    for value in secrets:
        if isinstance(value, str) and len(value) >= shortest:
            text = text.replace(value, "***")
    return text


class StorageError(Exception):
    """Base class. `retryable` tells whether the same call may succeed later unchanged.

    A subclass states its condition reason (and whether retrying helps, when that differs from
    its parent) in its header: ``class NotFound(StorageError, reason=Reason.ARTIFACT_MISSING)``.
    """

    retryable: bool = False
    reason: str = Reason.BACKEND_ERROR

    def __init_subclass__(cls, *, reason: str | None = None, retryable: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if reason is not None:
            cls.reason = reason
        if retryable is not None:
            cls.retryable = retryable

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidConfig(StorageError, reason=Reason.INVALID_SPEC):
    """The storage's configuration cannot work (a person must change it)."""


class MissingDependency(InvalidConfig):
    """The backend's SDK is not installed; the message names the extra to install."""


class TemplateValueMissing(InvalidConfig, reason=Reason.TEMPLATE_VALUE_MISSING):
    """A ``${NAME}`` template names a value that is not available; the message names it."""


class LocalStorageDisabled(StorageError, reason=Reason.LOCAL_STORAGE_DISABLED):
    """The operator serves no Local storage (it was started without a Local root)."""


class OutsideLocalRoot(StorageError, reason=Reason.OUTSIDE_LOCAL_ROOT):
    """A Local directory outside the operator's Local root for the FlowStorage's namespace."""


class Rejected(StorageError, reason=Reason.REQUEST_REJECTED):
    """The backend refused the request for a reason retrying cannot fix (an HTTP 4xx other
    than auth, not found or throttling); the message carries the status and a short body."""


class NotFound(StorageError, reason=Reason.ARTIFACT_MISSING):
    """The object (flow artifact) does not exist at the location."""


class ContainerNotFound(StorageError, reason=Reason.BUCKET_NOT_FOUND):
    """The bucket / container / directory that should hold flows does not exist."""


class AuthFailed(StorageError, reason=Reason.AUTH_FAILED):
    """Credentials were rejected or lack permission."""


class IdentityNotConfigured(InvalidConfig, reason=Reason.IDENTITY_NOT_CONFIGURED):
    """A workload identity's settings are missing or malformed (annotate the ServiceAccount or
    fill in the spec's identity block)."""


class IdentityRejected(AuthFailed, reason=Reason.IDENTITY_REJECTED):
    """The cloud's token service refused the ServiceAccount token it was offered (wrong
    audience, an issuer it does not trust, a trust policy that does not name the account)."""


class IdentityUnavailable(StorageError, reason=Reason.TOKEN_REQUEST_FAILED):
    """No ServiceAccount token could be had to offer the cloud (the TokenRequest was refused,
    the account is gone, the projected token file is unreadable)."""


class Unavailable(StorageError, retryable=True, reason=Reason.BACKEND_UNAVAILABLE):
    """The backend could not be reached or answered with a temporary failure."""


class IntegrityError(StorageError, reason=Reason.INTEGRITY_ERROR):
    """Downloaded bytes do not match the digest they were stored with."""


class RateLimited(Unavailable, reason=Reason.RATE_LIMITED):
    """The provider throttled us (HTTP 429, or 403 with rate-limit headers); `retry_after`
    holds the seconds until the reset time the provider gave."""


class RepositoryNotFound(ContainerNotFound, reason=Reason.REPOSITORY_NOT_FOUND):
    """The git repository does not exist, or the credentials cannot see it."""


class RefNotFound(StorageError, reason=Reason.REF_NOT_FOUND):
    """The branch, tag or commit named by ``ref`` does not exist in the repository."""


class FileNotFound(NotFound, reason=Reason.FILE_NOT_FOUND):
    """The flow file is not in the repository at the resolved commit."""
