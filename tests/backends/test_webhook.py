"""Webhook storage against a real HTTP service (tests/helpers/webhook_server.py): the conformance
suite on an addressable endpoint (``/objects/${location}``), then the seed's pattern (POST
returns an id, the get request reads ``${response.json.id}``), secrets, retries and errors."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.storage import (
    AuthFailed,
    InvalidConfig,
    NotFound,
    Rejected,
    TemplateValueMissing,
    Unavailable,
    from_serialized,
)
from flowstore.storage.base import sha256_hex
from flowstore.storage.webhook import Webhook
from tests.helpers.webhook_server import WebhookServer

from .conformance import SCRIPT_SOURCE, StorageConformance, StorageFactory, make_flow

TOKEN = "canary-webhook-token-7f3a9c1e-do-not-leak"
AUTH = {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with WebhookServer(token=TOKEN) as running:
        yield running


def seed_config(server: WebhookServer, **extra: Any) -> dict[str, Any]:
    """The seed's pattern: POST stores and answers {"id"}, GET reads /flows/<id>."""
    return {
        "buildRequest": {"method": "POST", "url": f"{server.url}/flows", "headers": AUTH},
        "getFlowRequest": {"method": "GET", "url": f"{server.url}/flows/${{response.json.id}}", "headers": AUTH},
        "deleteRequest": {"method": "DELETE", "url": f"{server.url}/flows/${{response.json.id}}", "headers": AUTH},
        **extra,
    }


def operator_storage(config: dict[str, Any], token: str = TOKEN) -> Webhook:
    """As the operator builds it: the FlowStorage spec plus the Secret's data."""
    storage = Webhook.from_config(config, credentials={"WEBHOOK_TOKEN": token})
    assert isinstance(storage, Webhook)
    return storage


def assert_no_token(*things: Any) -> None:
    for thing in things:
        rendered = (
            "".join(traceback.format_exception(thing)) + repr(thing)
            if isinstance(thing, BaseException) else json.dumps(thing) if isinstance(thing, dict) else str(thing)
        )
        assert TOKEN not in rendered


class TestWebhook(StorageConformance):
    """The shared suite on an addressable service: ``{server}/objects/${location}``.

    The seed's Webhook holds one flow; the operator enforces that (``single_flow``), while the
    library keeps the base class's add_flow (several flows, names unique), so with a
    ``${location}`` URL every shared test applies except the default-key one (below)."""

    default_label_prefix = "webhook-flow-storage"

    @pytest.fixture
    def storage_factory(self, server: WebhookServer, monkeypatch: pytest.MonkeyPatch) -> StorageFactory:
        # Agents (from_serialized, the env runner's child) read the token from the environment,
        # as their FLOWSTORE_ALLOWED_ENV allows.
        monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
        monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "WEBHOOK_TOKEN")
        objects = f"{server.url}/objects/${{location}}"

        def make(**kwargs: Any) -> Webhook:
            return Webhook(
                build_request_kwargs={"url": objects, "headers": AUTH},
                build_request_http_method="PUT",
                get_flow_request_kwargs={"url": objects, "headers": AUTH},
                get_flow_request_http_method="GET",
                delete_request_kwargs={"url": objects, "headers": AUTH},
                delete_request_http_method="DELETE",
                secret_values={"WEBHOOK_TOKEN": TOKEN},
                allowed_env=[],
                **kwargs,
            )

        return make

    location_is_flow_name = True  # the seed's Webhook.add_flow returns the flow name


# ---------------------------------------------------------------------- the seed's pattern
def test_store_then_read_the_id_from_the_response(server: WebhookServer) -> None:
    storage = operator_storage(seed_config(server))
    location = storage.add_flow(make_flow("seed flow", {"answer": 42}))
    assert location == "seed flow"
    storage.build()

    assert len(server.bodies) == 1
    flow_id, body = next(iter(server.bodies.items()))
    assert storage.build_response == {"status": 201, "json": {"id": flow_id}}
    assert server.log[0][2]["Content-Type"] == "application/octet-stream"
    assert storage.get_flow(location).run() == {"answer": 42}
    assert storage.get_flow(location, sha256=sha256_hex(body)).name == "seed flow"
    assert storage.url_for(location) == f"{server.url}/flows/{flow_id}"

    artifact = storage.put_bytes(location, b"replaced")
    new_id = artifact.storage_state["buildResponse"]["json"]["id"]
    assert new_id != flow_id
    assert artifact.url == f"{server.url}/flows/{new_id}" == storage.url_for(location)
    assert (artifact.sha256, artifact.size) == (sha256_hex(b"replaced"), 8)
    assert artifact.storage_state == {"buildResponse": {"status": 201, "json": {"id": new_id}}}
    info = storage.stat(location)
    assert info is not None and (info.size, info.sha256) == (8, sha256_hex(b"replaced"))

    storage.delete(location)
    assert new_id not in server.bodies
    storage.delete(location)  # already gone: 404 counts as deleted
    assert storage.stat(location) is None
    with pytest.raises(NotFound, match=new_id):
        storage.get_bytes(location)


def test_token_never_leaves_the_request(server: WebhookServer) -> None:
    config = seed_config(server)
    config["getFlowRequest"]["params"] = {"key": "${WEBHOOK_TOKEN}"}
    storage = operator_storage(config)
    location = storage.add_flow(make_flow("secret flow", 1))
    storage.build()
    artifact = storage.put_bytes(location, b"again")
    assert all(entry[2].get("Authorization") == f"Bearer {TOKEN}" for entry in server.log)  # it was sent

    doc = storage.to_status()
    assert doc["buildRequest"]["headers"] == AUTH  # the template, as written
    assert doc["getFlowRequest"]["params"] == {"key": "${WEBHOOK_TOKEN}"}
    assert_no_token(doc, repr(storage), artifact.url, storage.url_for(location), dict(artifact.storage_state))
    assert storage.url_for(location).endswith(artifact.storage_state["buildResponse"]["json"]["id"])


def test_serialize_shape(server: WebhookServer) -> None:
    config = seed_config(server, allowedEnv=["REGION"], labels=["prod"])
    config["buildRequest"].update(params={"v": "1"}, timeoutSeconds=7, verify=True, allowRedirects=False)
    storage = operator_storage(config)
    location = storage.add_flow(make_flow("shape", 1))
    storage.build()
    doc = storage.to_status()
    assert doc == {
        "type": "Webhook",
        "buildRequest": {"method": "POST", "url": f"{server.url}/flows", "headers": AUTH, "params": {"v": "1"},
                         "timeoutSeconds": 7, "verify": True, "allowRedirects": False},
        "getFlowRequest": config["getFlowRequest"],
        "deleteRequest": config["deleteRequest"],
        "buildResponse": storage.build_response,
        "storedAsScript": False,
        "labels": ["prod", "webhook-flow-storage"],
        "secrets": [],
        "flows": {"shape": location},
    }
    assert "allowedEnv" not in doc  # operator policy, not the agent's


def test_agent_loads_from_serialized_with_env(server: WebhookServer, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = operator_storage(seed_config(server))
    location = storage.add_flow(make_flow("agent flow", "ran"))
    storage.build()
    doc = json.loads(json.dumps(storage.to_status()))  # what status.storage holds

    monkeypatch.delenv("WEBHOOK_TOKEN", raising=False)
    monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "WEBHOOK_TOKEN")
    with pytest.raises(TemplateValueMissing, match=r"\$\{WEBHOOK_TOKEN\}.*environment") as info:
        from_serialized(doc).get_flow()
    assert_no_token(info.value)

    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)  # the agent's own environment, allowed by the agent
    agent = from_serialized(doc)
    assert isinstance(agent, Webhook) and agent.allowed_env == ["WEBHOOK_TOKEN"] and agent.secret_values is None
    assert agent.get_flow(location).run() == "ran"
    assert agent.to_status() == storage.to_status()
    # the argument instead of the variable
    monkeypatch.delenv("FLOWSTORE_ALLOWED_ENV")
    assert from_serialized(doc, allowed_env=["WEBHOOK_TOKEN"]).get_flow(location).run() == "ran"
    with pytest.raises(TemplateValueMissing, match="FLOWSTORE_ALLOWED_ENV is empty"):
        from_serialized(doc).get_flow(location)


def test_operator_never_reads_its_environment_unless_allowed(
    server: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("OPERATOR_PRIVATE", "private-value-123")
    config = seed_config(server)
    config["buildRequest"]["params"] = {"leak": "${OPERATOR_PRIVATE}"}
    # a spec without a Secret, or with one: the operator's environment is not looked at
    for credentials, missing in ((None, "WEBHOOK_TOKEN"), ({"WEBHOOK_TOKEN": TOKEN}, "OPERATOR_PRIVATE")):
        storage = Webhook.from_config(config, credentials=credentials)
        assert storage.allowed_env == []
        with pytest.raises(TemplateValueMissing, match=rf"\$\{{{missing}\}}.*allowedEnv is empty") as info:
            storage.put_bytes("f", b"x")
        assert_no_token(info.value)
        assert "private-value-123" not in str(info.value)
    assert server.hits == {}  # nothing was sent

    allowed = Webhook.from_config({**config, "allowedEnv": ["OPERATOR_PRIVATE", "WEBHOOK_TOKEN"]})
    allowed.put_bytes("f", b"x")
    assert server.log[-1][1] == "/flows"


def test_check_container_resolves_templates_without_requests(server: WebhookServer) -> None:
    operator_storage(seed_config(server)).check_container()
    with pytest.raises(TemplateValueMissing, match="WEBHOOK_TOKEN"):
        Webhook.from_config(seed_config(server), credentials={}).check_container()
    assert server.hits == {}


def test_flow_script_path(server: WebhookServer, tmp_path: Path) -> None:
    script = tmp_path / "flow.py"
    script.write_bytes(SCRIPT_SOURCE)
    storage = Webhook(
        {"url": f"{server.url}/flows", "headers": {**AUTH, "Content-Type": "text/x-python"}}, "POST",
        {"url": f"{server.url}/flows/${{response.json.id}}", "headers": AUTH}, "GET",
        stored_as_script=True, flow_script_path=str(script), secret_values={"WEBHOOK_TOKEN": TOKEN},
    )
    location = storage.add_flow(make_flow("script flow", None))
    storage.run_basic_healthchecks()
    storage.build()
    assert list(server.bodies.values()) == [SCRIPT_SOURCE]
    assert server.log[0][2]["Content-Type"] == "text/x-python"  # the user's header wins
    assert storage.get_flow(location, flow_name="script flow").run() == 42


# ---------------------------------------------------------------------- errors and retries
def test_wrong_token_is_auth_failed_without_retry(server: WebhookServer) -> None:
    storage = operator_storage(seed_config(server), token="wrong-token-value")
    with pytest.raises(AuthFailed) as info:
        storage.put_bytes("f", b"x")
    assert server.hits["/flows"] == 1
    assert info.value.retryable is False
    assert str(info.value) == (f"the webhook answered 401 for POST {server.url}/flows; check the Secret "
                               "values the buildRequest headers use")
    assert "wrong-token-value" not in str(info.value)


def test_get_and_stat_with_wrong_token(server: WebhookServer) -> None:
    good = operator_storage(seed_config(server))
    good.put_bytes("f", b"x")
    bad = operator_storage(seed_config(server), token="wrong-token-value")
    bad.build_response = good.build_response
    for call in (lambda: bad.get_bytes("f"), lambda: bad.stat("f")):
        with pytest.raises(AuthFailed, match="getFlowRequest"):
            call()


def _status_storage(server: WebhookServer, code: int, query: str = "", timeout: float | None = None) -> Webhook:
    url = f"{server.url}/status/{code}{query}"
    request: dict[str, Any] = {"method": "POST", "url": url, "headers": AUTH}
    if timeout is not None:
        request["timeoutSeconds"] = timeout
    return operator_storage({"buildRequest": request, "getFlowRequest": {**request, "method": "GET"}})


def test_build_404_is_rejected(server: WebhookServer) -> None:
    with pytest.raises(Rejected, match="the URL does not exist") as info:
        _status_storage(server, 404).put_bytes("f", b"x")
    assert server.hits["/status/404"] == 1
    assert info.value.reason == "RequestRejected" and info.value.retryable is False


def test_get_404_is_not_found_and_stat_none(server: WebhookServer) -> None:
    storage = _status_storage(server, 404)
    with pytest.raises(NotFound, match="/status/404"):
        storage.get_bytes("f")
    assert storage.stat("f") is None


def test_other_4xx_is_rejected_with_a_redacted_excerpt(server: WebhookServer) -> None:
    with pytest.raises(Rejected) as info:
        _status_storage(server, 422).put_bytes("f", b"x")
    message = str(info.value)
    assert message.startswith(f"the webhook answered 422 for POST {server.url}/status/422: status 422; you sent")
    assert "Bearer ***" in message  # the service echoed the header; the token is stripped
    assert_no_token(info.value)
    assert server.hits["/status/422"] == 1


def test_5xx_is_retried_then_unavailable(server: WebhookServer) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="answered 500") as info:
        _status_storage(server, 500).put_bytes("f", b"x")
    assert server.hits["/status/500"] == 3
    assert 0.6 <= time.monotonic() - started < 5  # 0.2 s + 0.4 s of backoff
    assert info.value.retryable is True and info.value.retry_after is None
    assert_no_token(info.value)


def test_429_honours_retry_after(server: WebhookServer) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="throttled") as info:
        _status_storage(server, 429, "?retry_after=1").get_bytes("f")
    assert server.hits["/status/429"] == 3
    assert time.monotonic() - started >= 2  # slept Retry-After (1 s) twice
    assert info.value.retry_after == 1.0


def test_long_retry_after_ends_the_retries(server: WebhookServer) -> None:
    with pytest.raises(Unavailable) as info:
        _status_storage(server, 503, "?retry_after=120").put_bytes("f", b"x")
    assert server.hits["/status/503"] == 1
    assert info.value.retry_after == 120.0


def test_flaky_service_succeeds_after_retries(server: WebhookServer) -> None:
    config = {
        "buildRequest": {"method": "PUT", "url": f"{server.url}/flaky/one?fail=2&code=503"},
        "getFlowRequest": {"method": "GET", "url": f"{server.url}/flaky/${{response.json.id}}?fail=0"},
    }
    storage = operator_storage(config)
    artifact = storage.put_bytes("f", b"eventually")
    assert server.hits["/flaky/one"] == 3
    assert artifact.storage_state["buildResponse"] == {"status": 201, "json": {"id": "one"}}
    assert storage.get_bytes("f") == b"eventually"

    throttled = operator_storage({**config, "buildRequest": {"method": "PUT",
                                                             "url": f"{server.url}/flaky/two?fail=1&code=429"}})
    throttled.put_bytes("f", b"x")
    assert server.hits["/flaky/two"] == 2


def test_slow_service_times_out_within_bounds(server: WebhookServer) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="timed out") as info:
        slow = operator_storage({
            "buildRequest": {"method": "POST", "url": f"{server.url}/slow?seconds=5", "timeoutSeconds": 0.3},
            "getFlowRequest": {"method": "GET", "url": f"{server.url}/slow?seconds=5", "timeoutSeconds": 0.3},
        })
        slow.put_bytes("f", b"x")
    elapsed = time.monotonic() - started
    assert server.hits["/slow"] == 3
    assert elapsed < 3, elapsed  # 3 x 0.3 s + 0.6 s of backoff, not 3 x 5 s
    assert info.value.retryable is True


def test_unreachable_service_is_unavailable() -> None:
    with WebhookServer() as gone:
        url = gone.url
    storage = Webhook({"url": f"{url}/flows", "timeout": 1}, "POST", {"url": f"{url}/x"}, "GET")
    with pytest.raises(Unavailable, match=r"unreachable .*after 3 tries"):
        storage.put_bytes("f", b"x")


def test_missing_template_value_names_it(server: WebhookServer) -> None:
    config = seed_config(server)
    config["buildRequest"]["headers"] = {"X-Api-Key": "${API_KEY}"}
    with pytest.raises(TemplateValueMissing, match=r"buildRequest\.headers\.X-Api-Key: template \$\{API_KEY\}"):
        operator_storage(config).put_bytes("f", b"x")
    assert server.hits == {}


def test_build_response_without_the_id_fails_the_store(server: WebhookServer) -> None:
    config = seed_config(server)
    config["getFlowRequest"]["url"] = f"{server.url}/flows/${{response.json.flowId}}"
    with pytest.raises(TemplateValueMissing, match=r"cannot be fetched.*response\.json\.flowId"):
        operator_storage(config).put_bytes("f", b"x")


def test_get_before_any_build_names_the_missing_response(server: WebhookServer) -> None:
    with pytest.raises(TemplateValueMissing, match="build response"):
        operator_storage(seed_config(server)).get_bytes("f")


def test_delete_without_a_delete_request_is_a_no_op(server: WebhookServer) -> None:
    config = seed_config(server)
    del config["deleteRequest"]
    storage = operator_storage(config)
    storage.put_bytes("f", b"kept")
    storage.delete("f")
    assert list(server.bodies.values()) == [b"kept"]


@pytest.mark.parametrize(("config", "fragment"), [
    ({}, "needs `buildRequest`"),
    ({"buildRequest": {"method": "POST", "url": "http://x"}}, "needs `getFlowRequest`"),
    ({"buildRequest": {"method": "TRACE", "url": "http://x"}, "getFlowRequest": {"method": "GET", "url": "u"}},
     "buildRequest.method"),
    ({"buildRequest": {"url": "http://x"}, "getFlowRequest": {"method": "GET", "url": "u"}}, "needs `method`"),
    ({"buildRequest": {"method": "POST"}, "getFlowRequest": {"method": "GET", "url": "u"}}, "buildRequest.url"),
    ({"buildRequest": {"method": "POST", "url": "u", "data": "x"}, "getFlowRequest": {"method": "GET", "url": "u"}},
     "unknown field"),
    ({"buildRequest": {"method": "POST", "url": "u", "timeoutSeconds": 0},
      "getFlowRequest": {"method": "GET", "url": "u"}}, "timeoutSeconds"),
    ({"buildRequest": {"method": "POST", "url": "u", "headers": {"A": {"nested": 1}}},
      "getFlowRequest": {"method": "GET", "url": "u"}}, "headers.A"),
    ({"buildRequest": {"method": "POST", "url": "u/${bad name}"}, "getFlowRequest": {"method": "GET", "url": "u"}},
     "not a valid template name"),
    ({"buildRequest": {"method": "POST", "url": "u"}, "getFlowRequest": {"method": "GET", "url": "u"},
      "allowedEnv": "HOME"}, "allowedEnv"),
    ({"buildRequest": {"method": "POST", "url": "u"}, "getFlowRequest": {"method": "GET", "url": "u"},
      "buildResponse": {"json": {}}}, "buildResponse"),
])
def test_from_config_validation(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidConfig, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        Webhook.from_config(config)


def test_bad_url_is_invalid_config() -> None:
    storage = Webhook({"url": "not a url"}, "POST", {"url": "ftp://example.invalid/x"}, "GET")
    for call in (lambda: storage.put_bytes("f", b"x"), lambda: storage.get_bytes("f")):
        with pytest.raises(InvalidConfig, match="fix"):
            call()
