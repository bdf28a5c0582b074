"""A registry's refusal becomes a failure the operator retries (Ready=False, RegistryUnavailable,
not stalled) when a later, unchanged push may succeed — the registry lost a blob or an upload
under a concurrent push (HTTP 400 MANIFEST_BLOB_UNKNOWN), timed out, or conflicted — and a
stalled RequestRejected that says what to fix otherwise. The bodies are the OCI distribution
spec's error format (https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes),
as the distribution registry (the local cloud's) writes them."""

from __future__ import annotations

import json

import pytest

from flowstore.api.constants import Reason
from flowstore.reconcile.failures import classify
from flowstore.storage.docker.errors import RegistryUnavailable
from flowstore.storage.docker.oci import error_codes, registry_error
from flowstore.storage.errors import NotFound, Rejected

HOST = "registry.example.com"
WHAT = "manifest flows/etl:sha256-ab.sig"


def body(*codes: str) -> str:
    return json.dumps({"errors": [{"code": code, "message": f"{code.lower()} said", "detail": {}} for code in codes]})


@pytest.mark.parametrize(("status", "text"), [
    (400, body("MANIFEST_BLOB_UNKNOWN")),  # the blob a manifest names went (two pushes raced)
    (400, body("BLOB_UNKNOWN")),
    (400, body("BLOB_UPLOAD_INVALID")),  # an upload session that expired
    (404, body("BLOB_UPLOAD_UNKNOWN")),
    (400, body("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN")),  # any transient code among several
    (408, ""), (409, body("UNKNOWN")), (425, ""), (429, body("TOOMANYREQUESTS")),
    (500, "oops"), (502, "<html>bad gateway</html>"), (503, ""),
])
def test_refusals_that_pass_are_retried(status: int, text: str) -> None:
    error = registry_error(HOST, status, text, WHAT)
    assert isinstance(error, RegistryUnavailable) and error.retryable
    failure = classify(error)
    assert failure.reason == Reason.REGISTRY_UNAVAILABLE and not failure.stalled
    assert f"HTTP {status}" in failure.message and WHAT in failure.message and HOST in failure.message
    for code in error_codes(text):
        assert code in failure.message


@pytest.mark.parametrize(("status", "text", "code"), [
    (400, body("MANIFEST_INVALID"), "MANIFEST_INVALID"),
    (400, body("TAG_INVALID"), "TAG_INVALID"),
    (400, body("NAME_INVALID"), "NAME_INVALID"),
    (400, body("DIGEST_INVALID"), "DIGEST_INVALID"),
    (400, body("SIZE_INVALID"), "SIZE_INVALID"),
    (405, body("UNSUPPORTED"), "UNSUPPORTED"),
    (413, "request entity too large", None),
    (400, "not json at all", None),
    (400, json.dumps({"errors": "not a list"}), None),
])
def test_refusals_a_person_must_fix_are_stalled(status: int, text: str, code: str | None) -> None:
    error = registry_error(HOST, status, text, WHAT)
    assert type(error) is Rejected and not error.retryable
    failure = classify(error)
    assert failure.reason == Reason.REQUEST_REJECTED and failure.stalled
    assert f"HTTP {status}" in failure.message and WHAT in failure.message
    if code is not None:
        assert code in failure.message


def test_a_404_is_not_found_unless_it_is_a_lost_upload() -> None:
    missing = registry_error(HOST, 404, body("MANIFEST_UNKNOWN"), WHAT)
    assert type(missing) is NotFound and not missing.retryable and "MANIFEST_UNKNOWN" in missing.message
    assert type(registry_error(HOST, 404, "", WHAT)) is NotFound
    assert isinstance(registry_error(HOST, 404, body("BLOB_UPLOAD_UNKNOWN"), WHAT), RegistryUnavailable)


def test_a_long_body_is_clipped_in_the_message() -> None:
    error = registry_error(HOST, 400, body("MANIFEST_BLOB_UNKNOWN") + " " + "x" * 5000, WHAT)
    assert len(error.message) < 600 and "MANIFEST_BLOB_UNKNOWN" in error.message


@pytest.mark.parametrize("text", ["", "null", "[]", '{"errors": [1, {"code": 7}, {"nocode": "x"}]}', "{"])
def test_error_codes_of_bodies_that_are_not_the_spec_format(text: str) -> None:
    assert error_codes(text) == []
