"""The GCS, Azure and Webhook backends end to end: the real operator and kube-apiserver against
real servers (fake-gcs-server, Azurite, tests/helpers/webhook_server.py), a namespace per test.

Every test stores flows through FlowStorage/StoredFlow resources only, reads the result from
status, loads the flow back as an agent would (flowstore.client.load_flow), checks that no
secret value reaches statuses, Events or the operator log, and that the operator survives.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flowstore import client
from tests.helpers.kube import apply, condition, delete_flows, get, kubectl, message, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import azure_storage, flow_storage, inline_flow, manifests, secret, webhook_storage
from tests.helpers.objects import azure_blobs, gcs_blobs
from tests.helpers.operator import OperatorProcess
from tests.helpers.webhook_server import WebhookServer


# --------------------------------------------------------------------------- helpers
def store_pickle_and_script(namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A pickled flow (etl) and a script (report) in the namespace's FlowStorage `store`: their
    statuses once Ready."""
    apply(inline_flow(namespace, "etl", "etl daily", body="return 6 * 7"))
    apply(inline_flow(namespace, "report", "report", body="return 'script'", storedAsScript=True))
    return wait_ready(namespace, "etl")["status"], wait_ready(namespace, "report")["status"]


def posts(server: WebhookServer) -> list[str]:
    """The paths of the uploads (POST /flows) the webhook server received."""
    return [path for method, path, _ in server.log if method == "POST" and path == "/flows"]


def deletes(server: WebhookServer) -> list[str]:
    return [path for method, path, _ in server.log if method == "DELETE"]


def assert_no_leak(operator: OperatorProcess, namespace: str, *values: str) -> None:
    """None of `values` appears in the namespace's statuses, its Events or the operator log."""
    time.sleep(1)  # let Events and log lines land
    statuses = kubectl("get", "storedflows,flowstorages", "-n", namespace, "-o", "json").stdout
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    for where, text in (("statuses", statuses), ("events", events), ("operator log", operator.logs())):
        for value in values:
            assert value not in text, f"a secret value leaked into {where}"


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    delete_flows(namespace)


# --------------------------------------------------------------------------- GCS
@pytest.fixture
def gcs_bucket(gcs_endpoint: str) -> str:
    """A new, empty bucket on the real GCS server (fake-gcs-server)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    name = f"flows-{uuid.uuid4().hex[:12]}"
    gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                   client_options={"api_endpoint": gcs_endpoint}).create_bucket(name)
    return name


def test_gcs_pickle_and_script_flows_are_stored_and_loaded(gcs_endpoint: str, operator: OperatorProcess,
                                                           namespace: str, gcs_bucket: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    apply(manifests(flow_storage(namespace, "store", "gcs",
                                 {"bucket": gcs_bucket, "keyPrefix": "prod/", "endpointURL": gcs_endpoint},
                                 labels=["team-a"])))
    etl, report = store_pickle_and_script(namespace)

    for status, fmt in ((etl, "pickle"), (report, "script")):
        assert status["artifact"]["format"] == fmt
        assert status["location"].startswith("prod/")
        assert status["artifact"]["url"] == f"gs://{gcs_bucket}/{status['location']}"
        assert status["artifact"]["digest"].startswith("sha256:") and status["artifact"]["size"] > 0
        assert status["labels"] == ["team-a", "gcs-flow-storage"]
        assert status["storage"]["type"] == "GCS" and status["storage"]["bucket"] == gcs_bucket
        assert status["storage"]["endpointURL"] == gcs_endpoint
        assert "credentials" not in json.dumps(status["storage"]).lower()
    assert etl["location"].startswith("prod/etl-daily/") and report["location"].startswith("prod/report/")
    assert gcs_blobs(gcs_endpoint, gcs_bucket) == sorted([etl["location"], report["location"]])

    storage = wait_for("flowstorage", namespace, "store",
                       lambda o: (o.get("status") or {}).get("flows")
                       == {"etl daily": etl["location"], "report": report["location"]},
                       what="to list both flows")
    assert condition(storage)["status"] == "True"
    assert storage["status"]["labels"] == ["team-a", "gcs-flow-storage"]

    # The agent rebuilds the storage from status.storage: endpointURL and no key -> anonymous,
    # without help from STORAGE_EMULATOR_HOST.
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    flow = client.load_flow("etl", namespace)
    assert flow.name == "etl daily" and flow.run() == 42
    script = client.load_flow("report", namespace)
    assert script.name == "report" and script.run() == "script"
    assert operator.alive()


def test_gcs_malformed_service_account_json_is_invalid_spec(gcs_endpoint: str, operator: OperatorProcess,
                                                            namespace: str, gcs_bucket: str) -> None:
    canary = f"canary-{uuid.uuid4()}"
    malformed = '{"type": "service_account", "private_key": "' + canary + '", "client_email": oops}'
    apply(manifests(
        secret(namespace, "gcs-key", {"service-account.json": malformed}),
        flow_storage(namespace, "store", "gcs", {"bucket": gcs_bucket, "endpointURL": gcs_endpoint,
                                                 "credentialsSecretRef": {"name": "gcs-key"}}),
        flow_storage(namespace, "good", "gcs", {"bucket": gcs_bucket, "endpointURL": gcs_endpoint}),
    ))
    apply(inline_flow(namespace, "bad", "bad"))
    apply(inline_flow(namespace, "ok", "ok", storage="good"))

    failed = wait_reason(namespace, "bad", "InvalidSpec")
    assert "not valid JSON" in message(failed) and "service-account.json" in message(failed)
    assert condition(failed, "Stalled").get("status") == "True"
    assert not failed["status"].get("location")
    storage = wait_reason(namespace, "store", "InvalidSpec", kind="flowstorage")
    assert "not valid JSON" in message(storage)
    wait_ready(namespace, "ok")
    assert gcs_blobs(gcs_endpoint, gcs_bucket) == [get("storedflow", namespace, "ok")["status"]["location"]]
    assert_no_leak(operator, namespace, canary)
    assert operator.alive()


def test_gcs_missing_bucket_is_bucket_not_found(gcs_endpoint: str, operator: OperatorProcess,
                                                namespace: str) -> None:
    missing = f"nope-{uuid.uuid4().hex[:10]}"
    apply(manifests(flow_storage(namespace, "store", "gcs", {"bucket": missing, "endpointURL": gcs_endpoint})))
    apply(inline_flow(namespace, "bad", "bad"))
    failed = wait_reason(namespace, "bad", "BucketNotFound")
    assert missing in message(failed) and "spec.gcs.bucket" in message(failed)
    assert condition(failed, "Stalled").get("status") == "True"
    storage = wait_reason(namespace, "store", "BucketNotFound", kind="flowstorage")
    assert missing in message(storage)
    assert operator.alive()


# --------------------------------------------------------------------------- Azure
def _connection_field(connection_string: str, name: str) -> str:
    return next(p.partition("=")[2] for p in connection_string.split(";") if p.startswith(f"{name}="))


def _with_key(connection_string: str, key: str) -> str:
    fields = [p for p in connection_string.split(";") if p]
    return ";".join(f"AccountKey={key}" if p.startswith("AccountKey=") else p for p in fields)


@pytest.fixture
def azure_container(azure_connection_string: str) -> Iterator[str]:
    """A new, empty container on the real Azure Blob server (Azurite)."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azure_connection_string)
    name = f"flows-{uuid.uuid4().hex[:12]}"
    service.create_container(name)
    yield name
    service.delete_container(name)


def test_azure_pickle_and_script_flows_are_stored_and_loaded(azure_connection_string: str,
                                                             operator: OperatorProcess, namespace: str,
                                                             azure_container: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = _connection_field(azure_connection_string, "BlobEndpoint").rstrip("/")
    apply(azure_storage(namespace, "store", azure_container, azure_connection_string, keyPrefix="prod/"))
    etl, report = store_pickle_and_script(namespace)

    for status, fmt in ((etl, "pickle"), (report, "script")):
        assert status["artifact"]["format"] == fmt
        assert status["location"].startswith("prod/")
        assert status["artifact"]["url"] == f"{endpoint}/{azure_container}/{status['location']}"
        assert status["labels"] == ["azure-flow-storage"]
        assert status["storage"]["type"] == "Azure" and status["storage"]["container"] == azure_container
        # where to look (the account's blob endpoint), never the key
        assert status["storage"].get("accountURL") == endpoint, status["storage"]
    assert azure_blobs(azure_connection_string, azure_container) == sorted([etl["location"], report["location"]])
    wait_for("flowstorage", namespace, "store",
             lambda o: (o.get("status") or {}).get("flows") == {"etl daily": etl["location"],
                                                                 "report": report["location"]},
             what="to list both flows")

    # The agent uses its own connection string (the seed's AZURE_STORAGE_CONNECTION_STRING).
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string)
    flow = client.load_flow("etl", namespace)
    assert flow.name == "etl daily" and flow.run() == 42
    assert client.load_flow("report", namespace).run() == "script"

    key = _connection_field(azure_connection_string, "AccountKey")
    assert_no_leak(operator, namespace, key)
    assert operator.alive()


def test_azure_wrong_key_is_auth_failed(azure_connection_string: str, operator: OperatorProcess,
                                        namespace: str, azure_container: str) -> None:
    # a valid base64 key that is not the account's: Azurite rejects its signatures
    canary = base64.b64encode(f"canary-{uuid.uuid4()}-do-not-leak-0123".encode()).decode()
    apply(azure_storage(namespace, "store", azure_container, _with_key(azure_connection_string, canary)))
    apply(azure_storage(namespace, "good", azure_container, azure_connection_string))
    apply(inline_flow(namespace, "bad", "bad"))
    apply(inline_flow(namespace, "ok", "ok", storage="good"))

    failed = wait_reason(namespace, "bad", "AuthFailed")
    assert condition(failed, "Stalled").get("status") == "True"
    assert not failed["status"].get("location")
    wait_reason(namespace, "store", "AuthFailed", kind="flowstorage")
    wait_ready(namespace, "ok")
    assert_no_leak(operator, namespace, canary)
    assert operator.alive()


def test_azure_missing_container_is_bucket_not_found(azure_connection_string: str, operator: OperatorProcess,
                                                     namespace: str) -> None:
    missing = f"nope-{uuid.uuid4().hex[:10]}"
    apply(azure_storage(namespace, "store", missing, azure_connection_string))
    apply(inline_flow(namespace, "bad", "bad"))
    failed = wait_reason(namespace, "bad", "BucketNotFound")
    assert missing in message(failed)
    assert condition(failed, "Stalled").get("status") == "True"
    storage = wait_reason(namespace, "store", "BucketNotFound", kind="flowstorage")
    assert missing in message(storage)
    assert operator.alive()


# --------------------------------------------------------------------------- Webhook
@pytest.fixture
def token() -> str:
    return f"tok-{uuid.uuid4().hex}"


@pytest.fixture
def webhook(token: str) -> Iterator[WebhookServer]:
    """The webhook service, in this process on 127.0.0.1; the operator reaches it over loopback."""
    with WebhookServer(token=token) as server:
        yield server


def test_webhook_seed_pattern_store_load_and_restart(operator: OperatorProcess, namespace: str,
                                                     webhook: WebhookServer, token: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    apply(webhook_storage(namespace, "hook", webhook.url, token))
    apply(inline_flow(namespace, "etl", "etl", body="return 6 * 7", storage="hook"))
    obj = wait_ready(namespace, "etl")
    status = obj["status"]

    flow_id = status["storage"]["buildResponse"]["json"]["id"]
    assert status["storage"]["buildResponse"]["status"] == 201
    assert status["storage"]["type"] == "Webhook"
    assert status["artifact"]["url"] == f"{webhook.url}/flows/{flow_id}"
    assert status["location"] == "etl" and status["labels"] == ["webhook-flow-storage"]
    assert list(webhook.bodies) == [flow_id] and len(webhook.bodies[flow_id]) == status["artifact"]["size"]
    assert posts(webhook) == ["/flows"], "one store is one upload"
    # the storage's templates are recorded as written, never filled with the Secret's value
    assert "Bearer ${TOKEN}" in json.dumps(status["storage"])
    wait_for("flowstorage", namespace, "hook",
             lambda o: (o.get("status") or {}).get("flows") == {"etl": "etl"}
             and condition(o).get("status") == "True", what="to list the flow")

    # An agent reads the templates' values from its own environment, for the names it allows.
    monkeypatch.setenv("TOKEN", token)
    monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "TOKEN")
    flow = client.load_flow("etl", namespace)
    assert flow.name == "etl" and flow.run() == 42
    monkeypatch.delenv("TOKEN")

    before = get("storedflow", namespace, "etl")["metadata"]["resourceVersion"]
    operator.restart()
    time.sleep(5)  # the restarted operator lists, starts its loops and reconciles everything
    assert posts(webhook) == ["/flows"], "a restart with nothing changed must not upload"
    assert get("storedflow", namespace, "etl")["metadata"]["resourceVersion"] == before
    assert list(webhook.bodies) == [flow_id]
    assert_no_leak(operator, namespace, token)
    assert operator.alive()


def test_webhook_holds_one_flow(operator: OperatorProcess, namespace: str, webhook: WebhookServer,
                                token: str) -> None:
    apply(webhook_storage(namespace, "hook", webhook.url, token))
    apply(inline_flow(namespace, "first", "first", storage="hook"))
    wait_ready(namespace, "first")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    apply(inline_flow(namespace, "second", "second", storage="hook"))
    conflict = wait_reason(namespace, "second", "NameConflict")
    assert "'first'" in message(conflict) and "one flow" in message(conflict)
    assert condition(conflict, "Stalled").get("status") == "True"
    assert condition(get("storedflow", namespace, "first")).get("status") == "True"
    assert posts(webhook) == ["/flows"]
    assert operator.alive()


def test_webhook_failures_have_their_reasons(operator: OperatorProcess, namespace: str,
                                             webhook: WebhookServer, token: str) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    apply(webhook_storage(namespace, "denied", webhook.url, wrong))
    apply(webhook_storage(namespace, "broken", webhook.url, token, build_url="{server}/status/500"))
    apply(webhook_storage(namespace, "nope", webhook.url, token, header="Bearer ${NOPE}"))
    apply(inline_flow(namespace, "a", "a", storage="denied"))
    apply(inline_flow(namespace, "b", "b", storage="broken"))
    apply(inline_flow(namespace, "c", "c", storage="nope"))

    denied = wait_reason(namespace, "a", "AuthFailed")
    assert "401" in message(denied) and "Secret" in message(denied)
    assert condition(denied, "Stalled").get("status") == "True"

    broken = wait_reason(namespace, "b", "BackendUnavailable")
    assert "500" in message(broken) and "/status/500" in message(broken)
    assert condition(broken, "Reconciling").get("status") == "True", broken["status"]["conditions"]
    assert condition(broken, "Stalled").get("status") != "True"
    assert webhook.hits["/status/500"] >= 3, "temporary failures are retried"

    missing = wait_reason(namespace, "c", "TemplateValueMissing")
    assert "NOPE" in message(missing)
    assert condition(missing, "Stalled").get("status") == "True"
    nope = wait_reason(namespace, "nope", "TemplateValueMissing", kind="flowstorage")
    assert "NOPE" in message(nope)

    for name in ("a", "b", "c"):
        assert not get("storedflow", namespace, name)["status"].get("location"), name
    assert webhook.bodies == {}, "nothing was stored"
    # /status/500 echoes the Authorization header it was sent: it must not reach any status
    assert_no_leak(operator, namespace, token, wrong)
    assert operator.alive()


def test_webhook_change_replaces_and_deletes(operator: OperatorProcess, namespace: str,
                                            webhook: WebhookServer, token: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    apply(webhook_storage(namespace, "hook", webhook.url, token, delete=True, deletionPolicy="Delete",
                          revisionHistoryLimit=1, retention={"minAge": "0s"}))
    apply(inline_flow(namespace, "etl", "etl", body="return 'v1'", storage="hook"))
    first = wait_ready(namespace, "etl")["status"]["storage"]["buildResponse"]["json"]["id"]
    assert list(webhook.bodies) == [first]

    apply(inline_flow(namespace, "etl", "etl", body="return 'v2'", storage="hook"))
    status = wait_for("storedflow", namespace, "etl",
                      lambda o: o["status"]["storage"]["buildResponse"]["json"]["id"] != first
                      and condition(o).get("status") == "True"
                      and o["status"].get("observedGeneration") == o["metadata"]["generation"],
                      what="to be stored again")["status"]
    second = status["storage"]["buildResponse"]["json"]["id"]
    assert status["artifact"]["url"] == f"{webhook.url}/flows/{second}"
    assert posts(webhook) == ["/flows", "/flows"]
    # deletionPolicy Delete, one revision kept, minAge 0s: the earlier flow (addressed by its
    # own build response) is deleted, the current one is kept. The delete comes on a pass after
    # the one that moved status to v2 (status.retired names it until then), so a crash in
    # between loses nothing (docs/revisions.md).
    wait_for("storedflow", namespace, "etl", lambda o: "retired" not in o["status"],
             what="to delete the earlier flow")
    assert deletes(webhook) == [f"/flows/{first}"]
    assert list(webhook.bodies) == [second]
    monkeypatch.setenv("TOKEN", token)
    monkeypatch.setenv("FLOWSTORE_ALLOWED_ENV", "TOKEN")
    assert client.load_flow("etl", namespace).run() == "v2"

    kubectl("delete", "storedflow", "etl", "-n", namespace, "--timeout=30s")
    assert deletes(webhook) == [f"/flows/{first}", f"/flows/{second}"]
    assert webhook.bodies == {}
    wait_for("flowstorage", namespace, "hook", lambda o: (o.get("status") or {}).get("flows") == {},
             what="to list no flows")
    assert_no_leak(operator, namespace, token)
    assert operator.alive()
