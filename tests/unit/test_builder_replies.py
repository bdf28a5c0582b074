"""Builder replies are hostile (issue 20, item 8): the flow's code writes to the same log (and
can read the nonce from its request), and in the sandbox it shares the process that writes the
reply. Whatever they hold, the operator gets a Built or a BuildError whose reason is one of
ours: never an exception that leaves a Job behind, never a reason the API server refuses."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstore.api.constants import Reason
from flowstore.artifacts import builder
from flowstore.controller.jobs import result_from_log
from flowstore.sandbox import BuildError, Built

NONCE = "0123456789abcdef"
DECLARED = {v for k, v in vars(Reason).items() if k.isupper()}


def framed(header: Any, payload: bytes = b"", *, fix_digest: bool = True) -> str:
    if isinstance(header, dict) and fix_digest:
        header = {**header, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = base64.b64encode(payload).decode()
    return "\n".join(["flow output", f"{builder.FRAME_BEGIN} {NONCE}", json.dumps(header), encoded,
                      f"{builder.FRAME_END} {NONCE}", "more output"]) + "\n"


def outcome(text: str) -> Built | BuildError:
    try:
        return result_from_log(text, NONCE, job="flowstore-build-x", image="runtime:1")
    except BuildError as exc:
        return exc


def test_a_reason_builders_do_not_report_is_not_copied_into_status() -> None:
    for reason in ("Not A Reason!", "Succeeded", "AuthFailed", "", None, 7, "x" * 10_000):
        result = outcome(framed({"ok": False, "reason": reason, "message": "m"}))
        assert isinstance(result, BuildError) and result.reason == Reason.SCRIPT_FAILED, reason
        assert "reason builders do not report" in result.message
    assert outcome(framed({"ok": False, "reason": "FlowNotFound", "message": "no flow"})).reason == "FlowNotFound"


@pytest.mark.parametrize("header", [[], "ok", 3, None, {"ok": "yes"}, {"no": "ok"}])
def test_a_header_that_is_not_an_object_is_a_clear_failure(header: Any) -> None:
    result = outcome(framed(header, fix_digest=False))
    assert isinstance(result, BuildError) and result.reason == Reason.SCRIPT_FAILED
    assert "cannot be used" in result.message


@pytest.mark.parametrize("versions", ["3.11", ["python", "3.11"], {"python": 3}, {"p" * 200: "1"},
                                      {str(i): "1" for i in range(50)}])
def test_versions_that_are_not_short_strings_are_refused(versions: Any) -> None:
    result = outcome(framed({"ok": True, "versions": versions}, b"pickle"))
    assert isinstance(result, BuildError) and "versions" in result.message


def test_a_good_reply_and_a_long_message() -> None:
    built = outcome(framed({"ok": True, "versions": {"python": "3.11.7", "cloudpickle": "3.0.0"}}, b"pickle"))
    assert isinstance(built, Built) and built.pickle == b"pickle" and built.versions["python"] == "3.11.7"
    long = outcome(framed({"ok": False, "reason": "ScriptFailed", "message": "a" * 100_000}))
    assert isinstance(long, BuildError) and len(long.message) < 12_000


HEADERS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["ok", "reason", "message", "versions", "size", "sha256", "x"]), c, max_size=5),
    max_leaves=15)
LINES = st.lists(st.one_of(
    st.text(max_size=30), st.just(f"{builder.FRAME_BEGIN} {NONCE}"), st.just(f"{builder.FRAME_END} {NONCE}"),
    HEADERS.map(json.dumps), st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())), max_size=8)


@settings(max_examples=400, deadline=None)
@given(lines=LINES, header=HEADERS, payload=st.binary(max_size=40), fix=st.booleans())
def test_any_log_gives_a_result_or_one_of_our_failures(lines: list[str], header: Any, payload: bytes,
                                                       fix: bool) -> None:
    for text in ("\n".join(lines), framed(header, payload, fix_digest=fix), "\n".join(lines) + framed(header, payload)):
        result = outcome(text)
        if isinstance(result, Built):
            assert isinstance(result.pickle, bytes)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.versions.items())
        else:
            assert result.reason in DECLARED and isinstance(result.message, str)
