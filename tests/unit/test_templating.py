"""``${NAME}`` templating of the Webhook storage's requests (pure functions)."""

from __future__ import annotations

import pytest

from flowstore.storage import InvalidConfig, TemplateValueMissing
from flowstore.storage.templating import render, render_public, template_names

RESPONSE = {"status": 201, "json": {"id": "abc", "a": {"b": [{"c": 7}, "second"]}, "ok": True, "none": None}}
SECRET = "s3cr3t-value-42"


def test_nested_dicts_lists_and_partial_strings() -> None:
    value = {
        "url": "https://svc/${REGION}/flows/${response.json.id}?v=${response.status}",
        "headers": {"Authorization": "Bearer ${TOKEN}", "X-Static": "plain"},
        "params": {"ids": ["${response.json.a.b.0.c}", "${response.json.a.b.1}", 3]},
        "timeout": 5,
        "verify": True,
    }
    out = render(value, response=RESPONSE, secrets={"TOKEN": SECRET}, environ={"REGION": "eu"}, allowed_env=None)
    assert out == {
        "url": "https://svc/eu/flows/abc?v=201",
        "headers": {"Authorization": f"Bearer {SECRET}", "X-Static": "plain"},
        "params": {"ids": ["7", "second", 3]},
        "timeout": 5,
        "verify": True,
    }
    assert value["url"].startswith("https://svc/${REGION}")  # the input is not modified


def test_response_values_render_as_text() -> None:
    assert render("${response.json.ok}", response=RESPONSE) == "true"
    assert render("${response.json.a.b.0}", response=RESPONSE) == '{"c":7}'
    assert render("${response.json.a.b.-1}", response=RESPONSE) == "second"


@pytest.mark.parametrize(("template", "fragment"), [
    ("${response.json.missing}", "no item 'missing'"),
    ("${response.json.a.b.5}", "no item '5'"),
    ("${response.json.id.deeper}", "not an object or a list"),
    ("${response.json.none}", "null"),
    ("${response}", "needs a field"),
])
def test_missing_response_paths(template: str, fragment: str) -> None:
    with pytest.raises(TemplateValueMissing, match=fragment) as info:
        render({"url": template}, response=RESPONSE, where="getFlowRequest")
    assert template in str(info.value)
    assert "getFlowRequest.url" in str(info.value)


def test_response_without_a_build_response_or_json_body() -> None:
    with pytest.raises(TemplateValueMissing, match="there is none yet"):
        render("${response.json.id}", response=None)
    with pytest.raises(TemplateValueMissing, match="no JSON body"):
        render("${response.json.id}", response={"status": 200, "json": None})


def test_location_name() -> None:
    assert render("https://svc/objects/${location}", location="a/b.bin") == "https://svc/objects/a/b.bin"
    assert render_public("https://svc/objects/${location}", None, "k") == "https://svc/objects/k"


def test_order_secrets_before_environment() -> None:
    out = render("${X}", secrets={"X": "from-secret"}, environ={"X": "from-env"}, allowed_env=None)
    assert out == "from-secret"


def test_environment_only_through_allowed_env() -> None:
    env = {"ALLOWED": "yes", "HIDDEN": "operator-secret"}
    assert render("${ALLOWED}", environ=env, allowed_env=["ALLOWED"], secrets={}) == "yes"
    with pytest.raises(TemplateValueMissing) as info:
        render({"h": "${HIDDEN}"}, environ=env, allowed_env=["ALLOWED"], secrets={"K": "v"}, where="buildRequest")
    message = str(info.value)
    assert "HIDDEN" in message and "buildRequest.h" in message
    assert "not listed in allowedEnv" in message and "Secret's keys (K)" in message
    assert "operator-secret" not in message
    with pytest.raises(TemplateValueMissing, match="allowedEnv is empty"):
        render("${ALLOWED}", environ=env, allowed_env=[])
    assert render("${HIDDEN}", environ=env, allowed_env=None) == "operator-secret"  # the seed's behaviour


def test_missing_name_is_named_never_a_value() -> None:
    with pytest.raises(TemplateValueMissing) as info:
        render({"headers": {"X-Key": "${API_KEY}"}}, secrets={"TOKEN": SECRET}, environ={}, allowed_env=[],
               where="buildRequest")
    message = str(info.value)
    assert "${API_KEY}" in message and "buildRequest.headers.X-Key" in message and "TOKEN" in message
    assert SECRET not in message
    assert info.value.reason == "TemplateValueMissing" and info.value.retryable is False
    assert isinstance(info.value, InvalidConfig)


def test_sensitive_values_are_collected() -> None:
    used: set[str] = set()
    render(["${A}", "${response.status}", "${location}", "${E}"], response=RESPONSE, location="loc",
           secrets={"A": "alpha"}, environ={"E": "echo"}, allowed_env=["E"], sensitive=used)
    assert used == {"alpha", "echo"}


def test_invalid_names() -> None:
    with pytest.raises(InvalidConfig, match="not a valid template name"):
        render("${has space}", secrets={"has space": "x"})
    assert render("no templates, $HOME, ${ unclosed", environ={}) == "no templates, $HOME, ${ unclosed"


def test_render_public_leaves_secrets() -> None:
    value = {"url": "https://svc/${response.json.id}?key=${API_KEY}", "headers": {"A": "Bearer ${TOKEN}"}}
    out = render_public(value, RESPONSE)
    assert out == {"url": "https://svc/abc?key=${API_KEY}", "headers": {"A": "Bearer ${TOKEN}"}}
    # no build response yet: response templates stay as written too
    assert render_public("https://svc/${response.json.id}", None) == "https://svc/${response.json.id}"
    assert render_public("https://svc/${response.json.nope}", RESPONSE) == "https://svc/${response.json.nope}"


def test_template_names() -> None:
    value = {"a": ["${X}-${Y}", {"b": "${response.json.id}"}], "n": 1, "empty": {}, "list": []}
    assert template_names(value) == {"X", "Y", "response.json.id"}
