"""classify(): the one translation from an exception to what `kubectl describe` shows and
whether the operator retries on its own (retryable) or waits for a person (stalled)."""

from __future__ import annotations

import pytest

from flowstore.api import conditions as cond
from flowstore.api.constants import Reason
from flowstore.api.models import SpecError
from flowstore.reconcile.failures import ClusterUnavailable, ReconcileError, StatusRefused, classify
from flowstore.reconcile.outcomes import RECHECK_FIRST_SECONDS, RECHECK_SECONDS, recheck_after
from flowstore.sandbox import BuildError
from flowstore.storage import errors


@pytest.mark.parametrize(
    ("exc", "reason", "stalled"),
    [
        (errors.AuthFailed("denied"), Reason.AUTH_FAILED, True),
        (errors.ContainerNotFound("no bucket"), Reason.BUCKET_NOT_FOUND, True),
        (errors.InvalidConfig("bad"), Reason.INVALID_SPEC, True),
        (errors.TemplateValueMissing("${X}"), Reason.TEMPLATE_VALUE_MISSING, True),
        (errors.Rejected("400"), Reason.REQUEST_REJECTED, True),
        (errors.NotFound("gone"), Reason.ARTIFACT_MISSING, True),
        (errors.IntegrityError("digest"), Reason.INTEGRITY_ERROR, True),
        (errors.RepositoryNotFound("repo"), Reason.REPOSITORY_NOT_FOUND, True),
        (errors.RefNotFound("ref"), Reason.REF_NOT_FOUND, True),
        (errors.FileNotFound("file"), Reason.FILE_NOT_FOUND, True),
        (errors.Unavailable("down"), Reason.BACKEND_UNAVAILABLE, False),
        (errors.RateLimited("slow down", retry_after=42.0), Reason.RATE_LIMITED, False),
        (BuildError(Reason.SCRIPT_FAILED, "boom"), Reason.SCRIPT_FAILED, True),
        (BuildError(Reason.BUILD_IMAGE_UNUSABLE, "no python"), Reason.BUILD_IMAGE_UNUSABLE, True),
        (ClusterUnavailable("503"), Reason.BACKEND_UNAVAILABLE, False),
        (StatusRefused("422 too long"), Reason.BACKEND_ERROR, False),
        (ReconcileError(Reason.NAME_CONFLICT, "taken", stalled=True), Reason.NAME_CONFLICT, True),
    ],
)
def test_each_error_maps_to_its_reason_and_retry_policy(exc: BaseException, reason: str, stalled: bool) -> None:
    failure = classify(exc)
    assert (failure.reason, failure.stalled) == (reason, stalled)
    assert failure.message


def test_retry_after_is_carried_for_throttling() -> None:
    assert classify(errors.RateLimited("x", retry_after=42.0)).retry_after == 42.0
    assert classify(errors.AuthFailed("x")).retry_after is None


def test_spec_errors_say_what_to_do() -> None:
    failure = classify(SpecError("spec.source: exactly one of inline, configMap, git"))
    assert failure.reason == Reason.INVALID_SPEC and failure.stalled
    assert failure.message.startswith("spec.source: exactly one")
    assert "Fix the spec and apply it again" in failure.message


def test_unexpected_exceptions_never_raise_and_are_retried() -> None:
    failure = classify(KeyError("surprise"))
    assert failure.reason == Reason.BACKEND_ERROR and not failure.stalled
    assert "KeyError" in failure.message and "operator log" in failure.message


def _stalled_since(seconds_ago: float, reason: str) -> list[dict]:
    import datetime as dt

    when = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = cond.mark_failed(None, reason, "m", 1, stalled=True)
    for c in conditions:
        c["lastTransitionTime"] = when
    return conditions


def test_recheck_starts_soon_then_doubles_up_to_a_minute() -> None:
    reason = Reason.SECRET_NOT_FOUND
    assert recheck_after(None, reason, 300) == RECHECK_FIRST_SECONDS
    assert 9 <= recheck_after(_stalled_since(10, reason), reason, 300) <= 12
    assert recheck_after(_stalled_since(3600, reason), reason, 300) == RECHECK_SECONDS
    # a storage interval shorter than a minute bounds it
    assert recheck_after(_stalled_since(3600, reason), reason, 15) == 15
