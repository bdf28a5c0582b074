"""Hostile build responses and addresses (issue 20, item 3), as pure functions: what a Webhook
keeps of a response is exactly what its templates use, bounded, whatever the service answered;
the endpoint policy refuses every spelling of a metadata or link-local address."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy, resolve
from flowstore.storage.errors import TemplateValueMissing
from flowstore.storage.templating import MAX_KEPT_VALUE_CHARS, keep_response, render

KEYS = st.sampled_from(["id", "token", "items", "0", "1", "-1", "a.b", "", "x"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    | st.builds(lambda n, c: c * n, st.integers(MAX_KEPT_VALUE_CHARS - 2, MAX_KEPT_VALUE_CHARS + 2),
                st.sampled_from(["a", '"', "\\", "\u00e9", "\x01"])),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=30)
PATHS = st.lists(st.sampled_from(["id", "token", "items", "0", "1", "-1", "x"]), max_size=4)
NAMES = st.lists(PATHS.map(lambda parts: ".".join(["response", "json", *parts])), max_size=5)


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return set().union(*(_leaf_paths(v, (*prefix, k)) for k, v in value.items()))
    return {prefix}


@settings(max_examples=300, deadline=None)
@given(body=JSON, names=NAMES, status=st.one_of(st.integers(), st.text(), st.none(), st.booleans()))
def test_kept_is_what_the_templates_render_and_nothing_else(body: Any, names: list[str], status: Any) -> None:
    response = {"status": status, "json": body}
    kept = keep_response(response, names)
    assert kept is not None and isinstance(kept["status"], int)
    text = json.dumps(kept, ensure_ascii=False)  # JSON escapes at most 6 characters for one
    assert len(text) <= 64 + len(names) * (MAX_KEPT_VALUE_CHARS * 6 + 64)
    for name in names:
        try:
            original = render(f"${{{name}}}", response=response)
        except TemplateValueMissing:
            continue
        if len(original) <= MAX_KEPT_VALUE_CHARS:
            assert render(f"${{{name}}}", response=kept) == original
    # every kept leaf lies on (or under) a referenced path: nothing else of the body survives
    referenced = [tuple(n.split(".")[2:]) for n in names]
    if kept["json"] is not None and not any(r == () for r in referenced):
        for leaf in _leaf_paths(kept["json"]):
            assert any(leaf[:len(r)] == r for r in referenced), (leaf, referenced)


def test_deep_responses_do_not_break_keeping() -> None:
    body: Any = None
    for _ in range(100_000):  # deeper than any recursion limit
        body = [body]
    kept = keep_response({"status": 200, "json": body}, ["response.json.0.0.0", "response.json"])
    # neither value can be rendered (too deep), so neither is kept: their templates have no value
    assert kept == {"status": 200, "json": None}


@pytest.mark.parametrize("response", [None, "text", 7, [], {"json": {"id": 1}}, {"status": "200", "json": []}])
def test_any_shape_of_response(response: Any) -> None:
    kept = keep_response(response, ["response.json.id", "response.status"])
    assert kept is None or set(kept) == {"status", "json"}


ALWAYS = ["169.254.169.254", "169.254.0.1", "fd00:ec2::254", "fe80::1", "100.100.100.200", "0.0.0.0",  # noqa: S104
          "::",
          "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::", "224.0.0.1", "255.255.255.255",
          "ff02::1"]
PRIVATE = ["127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "fd12::1",
           "::ffff:127.0.0.1", "::ffff:10.1.2.3"]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "172.32.0.1", "100.128.0.1"]


@pytest.mark.parametrize("address", ALWAYS)
def test_metadata_link_local_and_reserved_are_refused_by_every_policy(address: str) -> None:
    for policy in (EndpointPolicy(allow_private=True), EndpointPolicy(allow_private=False)):
        assert policy.refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PRIVATE)
def test_private_and_loopback_only_with_the_flag(address: str) -> None:
    assert EndpointPolicy(allow_private=True).refusal(ipaddress.ip_address(address)) is None
    refusal = EndpointPolicy(allow_private=False).refusal(ipaddress.ip_address(address))
    assert "--allow-private-endpoints" in str(refusal)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert EndpointPolicy(allow_private=False).refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host", ["metadata.google.internal", "METADATA.google.internal.", "metadata",
                                  "instance-data.ec2.internal", "x.metadata.google.internal"])
def test_metadata_host_names_are_refused_before_resolving(host: str) -> None:
    with pytest.raises(EndpointNotAllowed, match="metadata"):
        EndpointPolicy().check_host(host)


def test_names_are_checked_after_resolution() -> None:
    assert resolve("localhost") and all(a.is_loopback for a in resolve("localhost"))
    with pytest.raises(EndpointNotAllowed, match="localhost"):
        EndpointPolicy(allow_private=False).check_host("localhost")
    # the resolver's other spellings of an IPv4 address are resolved, then checked
    for spelling in ("2852039166", "0xa9fea9fe", "169.254.43518"):
        with pytest.raises(EndpointNotAllowed, match=r"169\.254\.169\.254"):
            EndpointPolicy().check_host(spelling)


# ---------------------------------------------------------------------- who chooses the host
@pytest.mark.parametrize("url", ["https://${response.json.host}/flows", "${response.json.url}",
                                 "https://svc:${response.json.port}/x", "http://${location}/flows",
                                 "https://user:${response.json.id}@svc/x", "${response.json.scheme}://svc/x"])
def test_a_status_or_a_storedflow_cannot_choose_where_requests_go(url: str) -> None:
    """A build response is recorded in status (writable by whoever may patch storedflows/status)
    and ${location} is a StoredFlow's key: neither may decide the host the FlowStorage's Secret
    values are sent to."""
    from flowstore.storage import InvalidConfig
    from flowstore.storage.webhook import Webhook

    config = {"buildRequest": {"method": "POST", "url": "https://svc/flows"},
              "getFlowRequest": {"method": "GET", "url": url, "headers": {"Authorization": "Bearer ${TOKEN}"}}}
    with pytest.raises(InvalidConfig, match="scheme or host"):
        Webhook.from_config(config, credentials={"TOKEN": "t"})


def test_the_host_may_come_from_the_secret_and_the_path_from_the_response() -> None:
    from flowstore.storage.webhook import Webhook

    config = {"buildRequest": {"method": "POST", "url": "https://${HOST}/flows"},
              "getFlowRequest": {"method": "GET", "url": "https://${HOST}/flows/${response.json.id}?v=${location}"}}
    storage = Webhook.from_config(config, credentials={"HOST": "svc.example.com"})
    storage.restore_state({"buildResponse": {"status": 201, "json": {"id": "@evil.example/x"}}})
    assert storage.url_for("etl") == "https://${HOST}/flows/@evil.example/x?v=etl"


@pytest.mark.parametrize("value", ["../admin/delete", "x/../../admin", ".", "a/./b", "x?purge=all", "x#frag",
                                   "%2e%2e%2fadmin", "..\\admin", "x\r\nHost: evil", "x\x00"])
def test_a_status_cannot_move_a_request_elsewhere_on_the_host(value: str) -> None:
    """The host is fixed by the template, and the path must be too: a build response written
    into status with dot segments, a query of its own or escapes a server decodes would send the
    FlowStorage's Secret values to another endpoint of the same service (``/admin/…``)."""
    from flowstore.storage import InvalidConfig
    from flowstore.storage.webhook import Webhook

    config = {"buildRequest": {"method": "POST", "url": "https://svc/flows"},
              "getFlowRequest": {"method": "GET", "url": "https://svc/flows/${response.json.id}",
                                 "headers": {"Authorization": "Bearer ${TOKEN}"}}}
    storage = Webhook.from_config(config, credentials={"TOKEN": "t"})
    storage.restore_state({"buildResponse": {"status": 201, "json": {"id": value}}})
    with pytest.raises(InvalidConfig, match=r"getFlowRequest\.url: the value of \$\{response\.json\.id\}"):
        storage.get_bytes("etl")
    # the same value anywhere but the URL (a header, a param) is not a place to go, and is kept
    assert render({"headers": {"X-Id": "${response.json.id}"}},
                  response={"status": 201, "json": {"id": value}})["headers"]["X-Id"] == value


@pytest.mark.parametrize("value", ["abc123", "team/etl/flow.py", "@evil.example/x", "v1.2", "..x", "a..b/c"])
def test_ordinary_ids_and_keys_fill_in_the_path(value: str) -> None:
    assert render({"url": "https://svc/flows/${response.json.id}"},
                  response={"status": 201, "json": {"id": value}})["url"] == f"https://svc/flows/{value}"
    assert render({"url": "https://svc/f?key=${location}"}, location=value)["url"] == f"https://svc/f?key={value}"
