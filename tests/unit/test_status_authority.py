"""Whoever may patch ``storedflows/status`` does not get the operator's authority (docs/security.md):
a status record aims a deletion, an upload or a replay only when the operator sealed it for this
StoredFlow with its record key (``api/seals.py``). Each test is an attack a status writer can make
today with ``kubectl patch --subresource=status``; the operator runs against real storages (a Local
directory, a real HTTP service for Webhooks)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from flowstore.api.history import History, Retired
from flowstore.api.models import StorageSpec
from flowstore.api.seals import Seals, seals_for
from flowstore.artifacts import signing, statement
from flowstore.reconcile import delete_stored_flow, reconcile_stored_flow
from flowstore.reconcile.publishers.base import RetireScope
from flowstore.reconcile.publishers.image import ImagePublisher
from flowstore.reconcile.storages import storage_marker
from tests.helpers.hostile_registry import HostileRegistry
from tests.helpers.webhook_server import WebhookServer
from tests.unit.test_crash_consistency import (
    SCRIPT,
    Cluster,
    deleting,
    files,
    flow,
    flow_id,
    local_cluster,
    one_revision,
    ready,
    webhook_cluster,
)


@pytest.fixture
def local(tmp_path: Path) -> Cluster:
    return local_cluster(tmp_path)


@pytest.fixture
def hooked(hook: WebhookServer) -> Cluster:
    """deletionPolicy Delete, objects deleted as soon as their revision left the history."""
    return deleting(webhook_cluster(hook))


def run(obj: dict[str, Any], cluster: Cluster, *, check_drift: bool = False) -> list[Any]:
    """One pass; the object gets its status; returns the pass's Events."""
    outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster, check_drift=check_drift)
    obj["status"] = outcome.status
    return outcome.events


def another_teams_object(hook: WebhookServer) -> str:
    return str(requests.post(f"{hook.url}/flows", data=b"another team's flow", timeout=5).json()["id"])


# ---------------------------------------------------------------------- the seal itself
def test_a_seal_binds_the_state_its_place_and_its_storedflow() -> None:
    key = b"k" * 32
    seals = Seals(key, "ns", "etl", "uid-1")
    state = {"buildResponse": {"status": 201, "json": {"id": "abc"}}}
    seal = seals.state("etl", state)
    assert seal is not None and seals.holds_state("etl", state, seal)
    assert not seals.holds_state("etl", {"buildResponse": {"status": 201, "json": {"id": "abd"}}}, seal)
    assert not seals.holds_state("other", state, seal)
    assert not seals.holds_state("etl", state, None)
    for other in (Seals(key, "ns", "etl", "uid-2"), Seals(key, "ns2", "etl", "uid-1"),
                  Seals(key, "ns", "etl2", "uid-1"), Seals(b"j" * 32, "ns", "etl", "uid-1"),
                  Seals(key, "ns", "etl", "uid-1", place="sha256:another-storage")):  # the flow moved
        assert not other.holds_state("etl", state, seal)
    # what the API server hands back: a whole float as an integer
    assert seals.holds_state("etl", {"n": 2}, seals.state("etl", {"n": 2.0}))
    assert seals.state("etl", None) is None and seals.holds_state("etl", None, None)


def test_a_storing_seal_binds_its_location_and_key() -> None:
    seals = seals_for(b"k" * 32, {"metadata": {"namespace": "ns", "name": "etl", "uid": "u"}})
    seal = seals.storing("sha256:" + "a" * 64, "etl", "key-1")
    assert seals.holds_storing("sha256:" + "a" * 64, "etl", "key-1", seal)
    assert not seals.holds_storing("sha256:" + "a" * 64, "etl", "key-2", seal)
    assert not seals.holds_storing("sha256:" + "a" * 64, "victim", "key-1", seal)
    assert not seals.holds_storing("sha256:" + "a" * 64, "etl", "key-1", None)


def test_the_records_the_operator_writes_are_sealed(hooked: Cluster, hook: WebhookServer) -> None:
    obj = one_revision(flow())
    run(obj, hooked)
    seals = seals_for(hooked.record_key, obj, storage_marker(StorageSpec.parse(hooked.storages["store"]["spec"])))
    artifact, entry = obj["status"]["artifact"], obj["status"]["history"][0]
    assert seals.holds_state("etl", artifact["storageState"], artifact["stateSeal"])
    assert entry["stateSeal"] == artifact["stateSeal"]
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    run(obj, hooked)
    (retired,) = obj["status"]["retired"]
    assert seals.holds_state(retired["location"], retired["storageState"], retired["stateSeal"])
    run(obj, hooked)  # the sealed record is honoured: the old object is deleted
    assert "retired" not in obj["status"] and list(hook.bodies) == [flow_id(obj)]


# ---------------------------------------------------------------------- Webhook deletions
def test_a_status_writer_cannot_aim_a_webhook_deletion_at_another_object(hooked: Cluster,
                                                                          hook: WebhookServer) -> None:
    """A retired record naming another object of the same service (its id in buildResponse) must
    not make the operator delete that object with the FlowStorage's credentials."""
    victim = another_teams_object(hook)
    obj = one_revision(flow())
    run(obj, hooked)
    forged = {"location": "etl", "revision": 1, "supersededAt": "2026-01-01T00:00:00Z",
              "storageState": {"buildResponse": {"status": 201, "json": {"id": victim}}}}
    obj["status"]["retired"] = [forged]  # a status patch by someone else
    events = run(obj, hooked)
    assert victim in hook.bodies, "the operator deleted an object no revision of this flow ever made"
    assert ready(obj) and "retired" not in obj["status"]
    (warning,) = [e for e in events if e.type == "Warning"]
    assert warning.reason == "CleanupFailed" and "no seal of this operator" in warning.message


def test_a_seal_copied_from_another_storedflow_does_not_aim_a_deletion(hooked: Cluster, hook: WebhookServer) -> None:
    """The other flow's own record, sealed for it, copied into this one's status."""
    other = flow()
    other["metadata"].update(name="other", uid="f2")
    run(other, hooked)
    victim = flow_id(other)
    obj = one_revision(flow())
    run(obj, hooked)
    copied = dict(other["status"]["history"][0], supersededAt="2026-01-01T00:00:00Z")
    obj["status"]["retired"] = [{k: copied[k] for k in ("location", "supersededAt", "storageState", "stateSeal")}]
    run(obj, hooked)
    assert victim in hook.bodies and "retired" not in obj["status"]


def test_two_storedflows_with_the_same_inputs_get_objects_of_their_own(hooked: Cluster,
                                                                      hook: WebhookServer) -> None:
    """The idempotency key names the StoredFlow too: the same flow stored by two StoredFlows (two
    namespaces, say) is two objects, and one's retention never deletes the other's."""
    first, second = flow(), flow()
    second["metadata"].update(name="other", uid="f2")
    run(first, hooked)
    run(second, hooked)
    assert flow_id(first) != flow_id(second) and len(hook.bodies) == 2


def test_deleting_a_storedflow_with_a_forged_history_deletes_only_its_own_objects(hooked: Cluster,
                                                                                  hook: WebhookServer) -> None:
    victim = another_teams_object(hook)
    obj = flow()
    run(obj, hooked)
    own = flow_id(obj)
    forged = dict(obj["status"]["history"][0], revision=7,
                  storageState={"buildResponse": {"status": 201, "json": {"id": victim}}})
    obj["status"]["history"].append(forged)
    outcome = delete_stored_flow(obj, hooked, attempt=0, max_attempts=2)
    assert own not in hook.bodies and victim in hook.bodies
    assert outcome.event is not None and outcome.event.reason == "CleanupFailed"
    assert "no seal of this operator" in outcome.event.message


def test_a_forged_idempotency_key_replays_nothing(hooked: Cluster, hook: WebhookServer) -> None:
    """status.storing names the key of another team's store: replaying it would be answered with
    their object, which the operator would then delete as its own leftover."""
    victim_key = "their-store-key"
    victim = requests.post(f"{hook.url}/flows", data=b"another team's flow", timeout=5,
                           headers={"Idempotency-Key": f'"{victim_key}"'}).json()["id"]
    obj = flow()
    run(obj, hooked)
    posts = len(hook.bodies)
    obj["status"]["storing"] = {"inputsDigest": "sha256:" + "b" * 64, "location": "etl",
                                "idempotencyKey": victim_key}
    events = run(obj, hooked)
    assert victim in hook.bodies and len(hook.bodies) == posts
    assert ready(obj) and "storing" not in obj["status"]
    assert [e.reason for e in events if e.type == "Warning"] == ["RecordIgnored"]


# ---------------------------------------------------------------------- object stores
def test_a_forged_storing_location_is_neither_deleted_nor_written(local: Cluster, tmp_path: Path) -> None:
    """status.storing is where the next upload goes (a retry of the same inputs) and what an
    interrupted store of other inputs left (deleted). Forged, it names another team's file."""
    victim = tmp_path / "their-team" / "flow.py"
    victim.parent.mkdir()
    victim.write_bytes(b"their flow")
    obj = flow()
    run(obj, local)
    own = obj["status"]["location"]
    obj["status"]["storing"] = {"inputsDigest": "sha256:" + "c" * 64, "location": str(victim)}
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    events = run(obj, local)
    assert victim.read_bytes() == b"their flow", "the operator deleted a file status chose"
    assert ready(obj) and obj["status"]["location"] not in (own, str(victim))
    assert "RecordIgnored" in [e.reason for e in events]
    # the same with the inputs digest of the next version: a "retry" must not upload over it
    obj["spec"]["source"]["inline"] = SCRIPT + "# v3\n"
    probe = reconcile_stored_flow(copy.deepcopy(obj), local, on_progress=lambda s: None)
    wanted = probe.status["artifact"]["inputsDigest"]
    obj["spec"]["source"]["inline"] = SCRIPT + "# v4\n"
    run(obj, local)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v3\n"
    obj["status"]["storing"] = {"inputsDigest": wanted, "location": str(victim)}
    run(obj, local)
    assert victim.read_bytes() == b"their flow", "the operator uploaded over a file status chose"
    assert ready(obj) and obj["status"]["location"] != str(victim)
    assert str(victim.relative_to(tmp_path)) in files(tmp_path)


def test_a_store_interrupted_by_a_kill_is_still_retried_in_place(local: Cluster) -> None:
    """The seal does not cost the crash-consistency guarantee: the operator's own record is honoured."""
    from tests.unit.test_crash_consistency import reconcile

    obj = flow()
    local.kill = "after-put"
    obj, local = reconcile(obj, local)
    storing = obj["status"]["storing"]
    assert storing["seal"].startswith("hmac-sha256:")
    local.kill = None
    obj, local = reconcile(obj, local)
    assert ready(obj) and obj["status"]["location"] == storing["location"]


# ---------------------------------------------------------------------- one storage, many passes
def test_a_pass_restores_state_into_its_own_fork_of_the_storage(hook: WebhookServer) -> None:
    """The operator keeps one storage per FlowStorage for all its flows' passes, which run at
    once: the build response one pass restores (its own, or a forged one) must not address
    another pass's delete."""
    from flowstore.storage.webhook import Webhook

    url = f"{hook.url}/flows"
    shared = Webhook.from_config({"buildRequest": {"method": "POST", "url": url},
                                  "getFlowRequest": {"method": "GET", "url": url + "/${response.json.id}"},
                                  "deleteRequest": {"method": "DELETE", "url": url + "/${response.json.id}"}})
    mine, theirs = shared.fork(), shared.fork()
    kept = mine.put_bytes("etl", b"my flow").storage_state
    theirs.restore_state({"buildResponse": {"status": 201, "json": {"id": "someone-elses"}}})
    assert mine.get_bytes("etl") == b"my flow"
    mine.restore_state(kept)
    theirs.delete("etl")  # addressed by its own state: not mine
    assert mine.get_bytes("etl") == b"my flow" and shared.build_response is None


def test_forks_share_the_clients_and_sessions() -> None:
    """A pass's fork reuses the storage's SDK client and HTTP session (a client per pass cost a
    boto3 client, its connection pool and a TLS handshake on every pass)."""
    from flowstore.storage.s3 import S3
    from flowstore.storage.webhook import Webhook

    s3 = S3.from_config({"bucket": "b", "endpointURL": "http://127.0.0.1:9"},
                        credentials={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    first, second = s3.fork(), s3.fork()
    assert first._client() is second._client() is s3._client()
    hook = Webhook.from_config({"buildRequest": {"method": "POST", "url": "http://127.0.0.1:9/flows"},
                                "getFlowRequest": {"method": "GET", "url": "http://127.0.0.1:9/flows/${location}"}})
    assert hook.fork()._session() is hook.fork()._session()


# ---------------------------------------------------------------------- Docker images
class _Registry:
    def __init__(self) -> None:
        self.state: Any = None
        self.deleted: list[tuple[Any, str]] = []

    def restore_state(self, state: Any) -> None:
        self.state = state

    def delete_image(self, digest: str) -> None:
        self.deleted.append((self.state, digest))


def test_a_forged_docker_record_deletes_no_image() -> None:
    """A Docker record's imageName picks the repository: forged, it names another team's."""
    cluster = Cluster()
    seals = Seals(cluster.record_key, "ns", "etl", "f1")
    scope = RetireScope(ports=cluster, namespace="ns", name="etl", storage_name="store", flow_name="etl", seals=seals)
    state = {"imageName": "registry.example/their-team/flows", "imageDigest": "sha256:" + "d" * 64}
    registry = _Registry()
    left = ImagePublisher().delete_revision(registry, Retired("etl.py", "", state), scope)  # type: ignore[arg-type]
    assert left is not None and "no seal of this operator" in left and registry.deleted == []
    sealed = Retired("etl.py", "", state, state_seal=seals.state("etl.py", state))
    assert ImagePublisher().delete_revision(registry, sealed, scope) is None  # type: ignore[arg-type]
    assert registry.deleted == [(state, state["imageDigest"])]


# ---------------------------------------------------------------------- signing what status says
# (found by the adversarial review of the seals: the operator signed whatever status.history held)

def pem() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Cluster, str]:
    key = pem()
    c = Cluster()
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"local": {"directory": str(tmp_path)}, "interval": "10m",
                                    "signing": {"secretRef": {"name": "sig"}}}}
    c.secrets["sig"] = {"metadata": {"uid": "s", "resourceVersion": "1"}, "data": {"FLOWSTORE_SIGNING_KEY": key}}
    return c, key


@pytest.mark.parametrize("check_drift", [False, True])
def test_a_status_writer_cannot_get_another_flows_object_signed_as_this_flows(
        signed: tuple[Cluster, str], check_drift: bool) -> None:
    """docs/signing.md: with ed25519 signing a status writer gets "nothing an agent accepts".
    But ready() (sign_status) signs every status.history entry as status holds it: a status
    writer rewrites the current entry to name another flow's object of the same storage (its
    location, digest, size) and the operator signs it as this StoredFlow's revision. A drift
    check does not notice: the bytes at the forged location do hash to the forged digest."""
    cluster, key = signed
    victim = flow(SCRIPT.replace("'etl'", "'payroll'").replace("lambda: 1", "lambda: 'payroll'"))
    victim["metadata"].update(name="payroll", uid="f2")
    victim["spec"]["flowName"] = "payroll"
    run(victim, cluster)
    obj = flow()
    run(obj, cluster)
    assert ready(obj) and ready(victim)
    theirs = victim["status"]["artifact"]
    entry = obj["status"]["history"][0]  # a status patch by someone else
    entry.update(location=victim["status"]["location"], digest=theirs["digest"], size=theirs["size"],
                 url=theirs["url"])
    events = run(obj, cluster, check_drift=check_drift)
    status = obj["status"]
    verifier = signing.signer_from_secret(key.encode(), None, where="test").verifier()
    stmt = statement.from_status(status, namespace="ns", name="etl", uid="f1")
    signed_by_us = "signature" in status["artifact"] and statement.verify(
        stmt, status["artifact"]["signature"], status["artifact"]["keyId"], [verifier], what="etl")
    assert not (signed_by_us and status["location"] == victim["status"]["location"]), \
        "the operator signed another flow's object as revision of this StoredFlow (status chose it)"
    assert "signature" not in status["history"][0]
    (warning,) = [e for e in events if e.reason == "RecordIgnored"]
    assert "Did not sign revision(s) 1 of status.history" in warning.message


@pytest.fixture
def evil() -> Iterator[HostileRegistry]:
    """A registry of the attacker's: a Basic challenge to every request; it keeps what it is sent."""
    with HostileRegistry(basic=True) as server:
        yield server


def test_a_status_writer_cannot_send_the_registry_credentials_to_a_host_of_their_choice(evil: HostileRegistry) -> None:
    """publishers/image.settle_signature takes the image to sign from a status.history entry
    (`image.name`, unsealed) and Docker.sign_image opens a RegistryClient for whatever host that
    name starts with, with the FlowStorage's registry username and password: a status writer
    gets them (and a cosign signature by the storage's key over a digest of their choice)."""
    from flowstore.reconcile.publishers.image import settle_signature
    from flowstore.storage.docker import Docker

    docker = Docker(registry_url="http://127.0.0.1:5999", image_name="team/flows",
                    registry_username="robot", registry_password="s3cr3t-registry-password")
    docker.confined = True  # a FlowStorage's storage, as the operator opens it (Docker.for_operator)
    inputs = "sha256:" + "1" * 64
    entry = {"revision": 1, "digest": "sha256:" + "2" * 64, "size": 10, "format": "script", "url": "x",
             "location": "/opt/flows/etl.py", "sourceDigest": "sha256:" + "3" * 64, "inputsDigest": inputs,
             "storedAt": "2026-01-01T00:00:00Z", "fileName": "etl.py",
             # the status writer's edit:
             "image": {"name": f"{evil.host}/anything", "digest": "sha256:" + "4" * 64}}
    status: dict[str, Any] = {"history": [entry], "lastRevision": 1,
                              "image": {"name": "127.0.0.1:5999/team/flows", "tag": "t",
                                        "digest": "sha256:" + "5" * 64, "path": "/opt/flows/etl.py"}}
    signer = signing.signer_from_secret(pem().encode(), None, where="test")
    ctx = SimpleNamespace(status=status, spec=SimpleNamespace(pin=None, storage_name="store"), namespace="ns",
                          history=History.read(status), inputs_digest=inputs, signer=signer, image_signature=None)
    try:
        settle_signature(ctx, docker)  # type: ignore[arg-type]
    except Exception:
        pass
    assert evil.authorizations == [], f"the FlowStorage's registry credentials went to {evil.host}"
