"""The one error taxonomy every backend raises instead of SDK exceptions.

Each error says whether retrying can help (`retryable`), so the controller's single
translation point (:mod:`flowstore.reconcile.failures`) never has to know an SDK.
Messages are written for a person and never contain secret values.
"""

from __future__ import annotations

from flowstore.api.constants import Reason


class StorageError(Exception):
    """Base class. `retryable` tells whether the same call may succeed later unchanged."""

    retryable: bool = False
    reason: str = Reason.BACKEND_ERROR

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidConfig(StorageError):
    """The storage's configuration cannot work (a person must change it)."""

    reason = Reason.INVALID_SPEC


class MissingDependency(InvalidConfig):
    """The backend's SDK is not installed; the message names the extra to install."""


class TemplateValueMissing(InvalidConfig):
    """A ``${NAME}`` template names a value that is not available; the message names it."""

    reason = Reason.TEMPLATE_VALUE_MISSING


class LocalStorageDisabled(StorageError):
    """The operator serves no Local storage (it was started without a Local root)."""

    reason = Reason.LOCAL_STORAGE_DISABLED


class OutsideLocalRoot(StorageError):
    """A Local directory outside the operator's Local root for the FlowStorage's namespace."""

    reason = Reason.OUTSIDE_LOCAL_ROOT


class Rejected(StorageError):
    """The backend refused the request for a reason retrying cannot fix (an HTTP 4xx other
    than auth, not found or throttling); the message carries the status and a short body."""

    reason = Reason.REQUEST_REJECTED


class NotFound(StorageError):
    """The object (flow artifact) does not exist at the location."""

    reason = Reason.ARTIFACT_MISSING


class ContainerNotFound(StorageError):
    """The bucket / container / directory that should hold flows does not exist."""

    reason = Reason.BUCKET_NOT_FOUND


class AuthFailed(StorageError):
    """Credentials were rejected or lack permission."""

    reason = Reason.AUTH_FAILED


class IdentityNotConfigured(InvalidConfig):
    """A workload identity's settings are missing or malformed (annotate the ServiceAccount or
    fill in the spec's identity block)."""

    reason = Reason.IDENTITY_NOT_CONFIGURED


class IdentityRejected(AuthFailed):
    """The cloud's token service refused the ServiceAccount token it was offered (wrong
    audience, an issuer it does not trust, a trust policy that does not name the account)."""

    reason = Reason.IDENTITY_REJECTED


class IdentityUnavailable(StorageError):
    """No ServiceAccount token could be had to offer the cloud (the TokenRequest was refused,
    the account is gone, the projected token file is unreadable)."""

    reason = Reason.TOKEN_REQUEST_FAILED


class Unavailable(StorageError):
    """The backend could not be reached or answered with a temporary failure."""

    retryable = True
    reason = Reason.BACKEND_UNAVAILABLE


class IntegrityError(StorageError):
    """Downloaded bytes do not match the digest they were stored with."""

    reason = Reason.INTEGRITY_ERROR


class RateLimited(Unavailable):
    """The provider throttled us (HTTP 429, or 403 with rate-limit headers); `retry_after`
    holds the seconds until the reset time the provider gave."""

    reason = Reason.RATE_LIMITED


class RepositoryNotFound(ContainerNotFound):
    """The git repository does not exist, or the credentials cannot see it."""

    reason = Reason.REPOSITORY_NOT_FOUND


class RefNotFound(StorageError):
    """The branch, tag or commit named by ``ref`` does not exist in the repository."""

    reason = Reason.REF_NOT_FOUND


class FileNotFound(NotFound):
    """The flow file is not in the repository at the resolved commit."""

    reason = Reason.FILE_NOT_FOUND
