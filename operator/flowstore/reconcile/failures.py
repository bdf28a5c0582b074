"""The one translation point from errors to what a person sees and how the operator retries.

Every failure becomes a :class:`Failure`: a condition reason, a message that says what to do,
whether it is *stalled* (a person must act; no retry until something referenced changes),
and when to try again otherwise. ``handlers.py`` turns a Failure into kopf's
Permanent/TemporaryError where kopf drives the retry (deletion).
"""

from __future__ import annotations

import dataclasses

from flowstore.api.constants import Reason
from flowstore.api.models import SpecError
from flowstore.sandbox import BuildError
from flowstore.storage.errors import StorageError


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str
    message: str
    stalled: bool
    retry_after: float | None = None


class ReconcileError(Exception):
    """Raised by reconcile steps with the failure already decided."""

    def __init__(self, reason: str, message: str, *, stalled: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.failure = Failure(reason, message, stalled, retry_after)


class ClusterUnavailable(Exception):
    """The Kubernetes API could not be reached or answered 5xx/429; try again."""


class StatusRefused(Exception):
    """The API server refused a status flowstore wrote (HTTP 400/422): a flowstore bug; the
    message carries the API server's reason."""


def classify(exc: BaseException) -> Failure:
    """Map any exception raised while reconciling to a Failure. Never raises."""
    if isinstance(exc, ReconcileError):
        return exc.failure
    if isinstance(exc, BuildError):
        return Failure(exc.reason, exc.message, stalled=True)
    if isinstance(exc, SpecError):
        return Failure(Reason.INVALID_SPEC, f"{exc}. Fix the spec and apply it again.", stalled=True)
    if isinstance(exc, StorageError):
        if exc.retryable:
            return Failure(exc.reason, exc.message, stalled=False, retry_after=exc.retry_after)
        # Credentials, buckets and directories are fixed outside this object's spec, so these
        # are rechecked at the storage's interval as well as on every referenced change.
        return Failure(exc.reason, exc.message, stalled=True)
    if isinstance(exc, ClusterUnavailable):
        return Failure(Reason.BACKEND_UNAVAILABLE, f"Kubernetes API unavailable: {exc}", stalled=False)
    if isinstance(exc, StatusRefused):
        return Failure(Reason.BACKEND_ERROR, str(exc), stalled=False)
    return Failure(
        Reason.BACKEND_ERROR,
        f"unexpected {type(exc).__name__}: {exc}. The operator will retry; if this persists, report it "
        "with the operator log.",
        stalled=False,
    )
