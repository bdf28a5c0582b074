"""The Webhook storage as a tenant, a status writer or a hostile service would use it (issue 20,
items 2 and 3), against the real HTTP service (tests/helpers/webhook_server.py): requests that
reach metadata or private addresses are refused before anything is sent, a build response keeps
only what the get-flow request needs, and a status cannot make an agent send its environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from flowstore.storage import TemplateValueMissing, from_serialized
from flowstore.storage.endpoints import EndpointNotAllowed, EndpointPolicy
from flowstore.storage.policy import ServePolicy
from flowstore.storage.webhook import Webhook
from tests.helpers.webhook_server import EXTRA_SECRET, WebhookServer

TOKEN = "canary-webhook-token-91be-do-not-leak"
AUTH = {"Authorization": "Bearer ${WEBHOOK_TOKEN}"}
#: the operator's policy with private endpoints allowed (the local service is on 127.0.0.1)
PRIVATE_OK = ServePolicy(endpoints=EndpointPolicy(allow_private=True))


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    with WebhookServer(token=TOKEN) as running:
        yield running


def config(build_url: str, get_url: str, **extra: Any) -> dict[str, Any]:
    return {"buildRequest": {"method": "POST", "url": build_url, "headers": AUTH},
            "getFlowRequest": {"method": "GET", "url": get_url, "headers": AUTH}, **extra}


def served(spec: dict[str, Any], policy: ServePolicy = PRIVATE_OK) -> Webhook:
    """As the operator opens a FlowStorage's Webhook: the spec, the Secret, its policy."""
    return Webhook.for_operator(spec, credentials={"WEBHOOK_TOKEN": TOKEN}, policy=policy)


# ---------------------------------------------------------------------- item 3: SSRF
@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/api/token",
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
    "http://2852039166/",  # 169.254.169.254 as one number: the resolver turns it into the address
    "http://0xa9fea9fe/",
    "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud's metadata service
    "http://0.0.0.0:9/",
])
def test_metadata_and_link_local_addresses_are_refused_whatever_the_policy(url: str, server: WebhookServer) -> None:
    storage = served(config(url, f"{server.url}/flows/${{response.json.id}}"))
    with pytest.raises(EndpointNotAllowed, match="buildRequest refused") as info:
        storage.put_bytes("etl", b"flow")
    assert info.value.reason == "EndpointNotAllowed" and not info.value.retryable
    assert TOKEN not in str(info.value)
    assert server.hits == {}


def test_a_redirect_to_the_metadata_service_is_refused(server: WebhookServer) -> None:
    target = "http://169.254.169.254/latest/meta-data/"
    storage = served(config(f"{server.url}/redirect?to={target}", f"{server.url}/flows/${{response.json.id}}"))
    with pytest.raises(EndpointNotAllowed, match=r"169\.254\.169\.254"):
        storage.put_bytes("etl", b"flow")
    assert server.hits["/redirect"] == 1  # the first hop was allowed; the second never left


def test_private_and_loopback_endpoints_need_the_operators_flag(server: WebhookServer) -> None:
    spec = config(f"{server.url}/flows", f"{server.url}/flows/${{response.json.id}}")
    for url in (server.url, f"http://localhost:{server.port}"):  # a literal, and a name resolved here
        spec["buildRequest"]["url"] = f"{url}/flows"
        with pytest.raises(EndpointNotAllowed, match="--allow-private-endpoints") as info:
            served(spec, ServePolicy()).put_bytes("etl", b"flow")
        assert "webhook.allowPrivateEndpoints" in str(info.value)
    assert server.hits == {}
    served(spec).put_bytes("etl", b"flow")  # with the flag
    assert server.hits["/flows"] == 1


def test_the_class_alone_refuses_metadata_but_not_private_addresses(server: WebhookServer) -> None:
    """A flow's author (or an agent) using the class has their own network: private services
    are theirs to reach; metadata addresses never serve flows."""
    storage = Webhook({"url": f"{server.url}/flows", "headers": AUTH}, "POST",
                      {"url": f"{server.url}/flows/${{response.json.id}}", "headers": AUTH}, "GET",
                      secret_values={"WEBHOOK_TOKEN": TOKEN})
    storage.put_bytes("etl", b"flow")
    storage.get_flow_request_kwargs["url"] = "http://169.254.169.254/${response.json.id}"
    with pytest.raises(EndpointNotAllowed):
        storage.get_bytes("etl")


# ---------------------------------------------------------------------- item 3: read-back
def test_a_build_response_keeps_only_what_the_get_request_uses(server: WebhookServer) -> None:
    storage = served(config(f"{server.url}/flows?extra=1", f"{server.url}/flows/${{response.json.id}}"))
    artifact = storage.put_bytes("etl", b"flow")
    flow_id = next(iter(server.bodies))
    kept = {"status": 201, "json": {"id": flow_id}}
    assert artifact.storage_state == {"buildResponse": kept}
    assert storage.to_status()["buildResponse"] == kept
    assert EXTRA_SECRET not in json.dumps([artifact.storage_state, storage.to_status(), storage.serialize()])
    assert storage.get_bytes("etl") == b"flow"


def test_a_referenced_secret_is_not_kept_when_too_long_and_a_recorded_body_is_trimmed(server: WebhookServer) -> None:
    storage = served(config(f"{server.url}/flows?extra=1", f"{server.url}/flows/${{response.json.notes}}"))
    with pytest.raises(TemplateValueMissing, match="cannot be fetched"):
        storage.put_bytes("etl", b"flow")
    # a status written before this version (the whole body) is trimmed when it is read back
    old = {"status": 201, "json": {"id": "abc", "credentials": {"SecretAccessKey": EXTRA_SECRET}}}
    reader = served(config(f"{server.url}/flows", f"{server.url}/flows/${{response.json.id}}"))
    reader.restore_state({"buildResponse": old})
    assert reader.build_response == {"status": 201, "json": {"id": "abc"}}
    assert EXTRA_SECRET not in json.dumps(reader.to_status())


# ---------------------------------------------------------------------- item 4: templates
def test_a_spec_gets_only_the_environment_the_operator_lends(server: WebhookServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-cloud-key-canary")
    monkeypatch.setenv("REGION", "eu-west-1")
    spec = config(f"{server.url}/flows?k=${{AWS_SECRET_ACCESS_KEY}}", f"{server.url}/flows/${{response.json.id}}",
                  allowedEnv=["AWS_SECRET_ACCESS_KEY", "REGION"])
    with pytest.raises(TemplateValueMissing, match="--webhook-allowed-env") as info:
        served(spec).put_bytes("etl", b"flow")
    assert "operator-cloud-key-canary" not in str(info.value)
    assert server.hits == {}
    spec["buildRequest"]["url"] = f"{server.url}/flows?region=${{REGION}}"
    lent = ServePolicy(endpoints=PRIVATE_OK.endpoints, webhook_env=frozenset({"REGION"}))
    served(spec, lent).put_bytes("etl", b"flow")
    assert server.hits["/flows"] == 1


def test_templates_see_only_the_referenced_secrets_keys(server: WebhookServer) -> None:
    """A FlowStorage's templates have the keys of its credentialsSecretRef and nothing else: the
    operator never looks up another Secret by a template's name."""
    spec = config(f"{server.url}/flows?x=${{OTHER_SECRET_KEY}}", f"{server.url}/flows/${{response.json.id}}")
    with pytest.raises(TemplateValueMissing, match=r"Secret's keys \(WEBHOOK_TOKEN\)"):
        served(spec).put_bytes("etl", b"flow")
    assert server.hits == {}


# ---------------------------------------------------------------------- item 2: agents
def test_a_status_cannot_make_an_agent_send_its_environment(server: WebhookServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever may write storedflows/status points the get-flow request at their own server with
    the agent's signing key in it: the agent sends nothing, even when the status also claims an
    allowedEnv."""
    monkeypatch.setenv("FLOWSTORE_SIGNING_KEY", "agent-signing-key-canary")
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "WEBHOOK_TOKEN")
    edited = {"type": "Webhook", "flows": {"etl": "etl"}, "allowedEnv": ["FLOWSTORE_SIGNING_KEY"],
              "buildRequest": {"method": "POST", "url": f"{server.url}/flows"},
              "getFlowRequest": {"method": "GET", "url": f"{server.url}/status/200?k=${{FLOWSTORE_SIGNING_KEY}}",
                                 "headers": {"X-Key": "${FLOWSTORE_SIGNING_KEY}"}}}
    agent = from_serialized(edited)
    assert isinstance(agent, Webhook) and agent.allowed_env == ["WEBHOOK_TOKEN"]
    with pytest.raises(TemplateValueMissing, match="not listed in FLOWSTORE_ALLOWED_ENV") as info:
        agent.get_bytes("etl")
    assert "agent-signing-key-canary" not in str(info.value)
    assert server.hits == {}
