"""The pure reconcile core, offline: in-memory cluster ports, a real Local storage in a temp
directory and a counting builder. No network, no kopf."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from flowstore.reconcile import reconcile_flow_storage, reconcile_stored_flow, status_changed
from tests.fakes.ports import FakeCluster

SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl', lambda: 1)\n"


def storage_obj(directory: Path, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"local": {"directory": str(directory)}, "interval": "10m", **spec}}


def flow_obj(name: str = "etl", created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "generation": 1, "creationTimestamp": created,
                         "uid": f"uid-{name}"},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl", "source": {"inline": SCRIPT}, **spec}}


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    c = FakeCluster()
    c.storages["store"] = storage_obj(tmp_path / "flows")
    return c


def settle(obj: dict[str, Any], cluster: FakeCluster, **kw: Any) -> dict[str, Any]:
    outcome = reconcile_stored_flow(obj, cluster, **kw)
    obj["status"] = outcome.status
    cluster.flows[obj["metadata"]["name"]] = obj
    return obj


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_second_pass_with_nothing_changed_builds_and_uploads_nothing(cluster: FakeCluster) -> None:
    obj = settle(flow_obj(), cluster)
    assert ready(obj)["status"] == "True" and (cluster.builds, cluster.uploads) == (1, 1)
    before = copy.deepcopy(obj["status"])
    outcome = reconcile_stored_flow(obj, cluster)
    assert (cluster.builds, cluster.uploads) == (1, 1)
    assert not status_changed(before, outcome.status)


def test_each_pass_opens_the_storage_once(cluster: FakeCluster, tmp_path: Path) -> None:
    """Opening a storage reads its credentials Secret: a pass opens it once (step 1) and hands
    it down, whatever it does (store, settle, check for drift, serialize the storage)."""
    obj = settle(flow_obj(), cluster)
    assert cluster.opened == 1 and cluster.uploads == 1
    settle(obj, cluster, check_drift=True)
    assert cluster.opened == 2
    Path(obj["status"]["location"]).unlink()  # drift: the same pass stores it again
    obj = settle(obj, cluster, check_drift=True)
    assert cluster.opened == 3 and cluster.uploads == 2 and ready(obj)["status"] == "True"
    obj["spec"]["source"]["inline"] = SCRIPT + "# changed\n"
    settle(obj, cluster)
    assert cluster.opened == 4 and cluster.uploads == 3


def test_a_pickle_records_the_versions_that_built_it_and_a_script_none(cluster: FakeCluster) -> None:
    import platform

    import cloudpickle

    obj = settle(flow_obj(), cluster)
    assert obj["status"]["artifact"]["versions"] == {"python": platform.python_version(),
                                                     "cloudpickle": cloudpickle.__version__}
    script = settle(flow_obj("script", storedAsScript=True, flowName="other"), cluster)
    assert "versions" not in script["status"]["artifact"]


def test_source_change_and_storage_change_store_again(cluster: FakeCluster, tmp_path: Path) -> None:
    obj = settle(flow_obj(), cluster)
    first = obj["status"]["location"]
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    obj = settle(obj, cluster)
    assert obj["status"]["location"] != first and cluster.uploads == 2
    cluster.storages["store"] = storage_obj(tmp_path / "elsewhere")
    obj = settle(obj, cluster)
    assert obj["status"]["location"].startswith(str(tmp_path / "elsewhere")) and cluster.uploads == 3


def test_labels_change_updates_status_without_upload(cluster: FakeCluster, tmp_path: Path) -> None:
    obj = settle(flow_obj(), cluster)
    cluster.storages["store"] = storage_obj(tmp_path / "flows", labels=["prod"])
    obj = settle(obj, cluster)
    assert "prod" in obj["status"]["labels"] and cluster.uploads == 1


def test_drift_check_restores_a_missing_artifact(cluster: FakeCluster) -> None:
    obj = settle(flow_obj(), cluster)
    Path(obj["status"]["location"]).unlink()
    settle(obj, cluster)  # no drift check: trusts status, no backend call
    assert cluster.uploads == 1
    obj = settle(obj, cluster, check_drift=True)
    assert cluster.uploads == 2 and Path(obj["status"]["location"]).exists()


def test_script_mode_never_builds(cluster: FakeCluster) -> None:
    obj = settle(flow_obj(storedAsScript=True), cluster)
    assert obj["status"]["artifact"]["format"] == "script" and cluster.builds == 0
    assert Path(obj["status"]["location"]).read_bytes() == SCRIPT.encode()


def test_name_conflict_goes_to_the_newer(cluster: FakeCluster) -> None:
    settle(flow_obj("older", "2026-01-01T00:00:00Z"), cluster)
    newer = settle(flow_obj("newer", "2026-01-02T00:00:00Z"), cluster)
    assert ready(newer)["reason"] == "NameConflict" and "older" in ready(newer)["message"]
    assert any(c["type"] == "Stalled" for c in newer["status"]["conditions"])


def test_failure_keeps_last_good_location(cluster: FakeCluster) -> None:
    obj = settle(flow_obj(), cluster)
    good = obj["status"]["location"]
    obj["spec"]["source"]["inline"] = "def broken(:\n"
    obj = settle(obj, cluster)
    assert ready(obj)["reason"] == "ScriptSyntaxError" and obj["status"]["location"] == good


def test_missing_storage_waits_without_stalling(cluster: FakeCluster) -> None:
    obj = flow_obj()
    obj["spec"]["storageRef"]["name"] = "absent"
    outcome = reconcile_stored_flow(obj, cluster)
    assert outcome.failure is not None and outcome.failure.reason == "StorageNotFound"
    assert not outcome.failure.stalled and outcome.requeue_after


def test_missing_secret_is_rechecked_soon_then_less_often(cluster: FakeCluster) -> None:
    # Secrets are not watched: a Secret applied a moment after the FlowStorage naming it (one
    # `kubectl apply -f dir/`) must be picked up within seconds, a lasting absence costs little.
    cluster.storages["store"]["spec"]["signing"] = {"secretRef": {"name": "signing"}}
    obj = flow_obj()
    first = reconcile_stored_flow(obj, cluster)
    assert first.failure is not None and first.failure.reason == "SecretNotFound" and first.failure.stalled
    assert first.requeue_after == 2.0
    obj["status"] = first.status

    def stalled_since(seconds: int) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
        stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
        stalled["lastTransitionTime"] = since.replace(microsecond=0).isoformat().replace("+00:00", "Z")

    stalled_since(20)
    assert 19.0 <= (reconcile_stored_flow(obj, cluster).requeue_after or 0) <= 22.0
    stalled_since(3600)
    assert reconcile_stored_flow(obj, cluster).requeue_after == 60.0
    cluster.storages["store"]["spec"]["interval"] = "30s"
    assert reconcile_stored_flow(obj, cluster).requeue_after == 30.0

    cluster.secrets["signing"] = {"data": {"FLOWSTORE_SIGNING_KEY": "k3y-for-signing-flows-0123456789"}}
    assert ready(settle(obj, cluster))["status"] == "True"


def test_missing_configmap_key_lists_what_is_there(cluster: FakeCluster) -> None:
    cluster.configmaps["flows"] = {"data": {"a.py": SCRIPT, "b.py": SCRIPT}}
    obj = flow_obj(source={"configMapRef": {"name": "flows", "key": "c.py"}})
    outcome = reconcile_stored_flow(obj, cluster)
    assert outcome.failure is not None and outcome.failure.reason == "SourceNotFound"
    assert "a.py, b.py" in outcome.failure.message


def test_flow_storage_reports_flows(cluster: FakeCluster) -> None:
    settle(flow_obj(), cluster)
    outcome = reconcile_flow_storage(cluster.storages["store"], cluster)
    assert outcome.status["flows"] == {"etl": cluster.flows["etl"]["status"]["location"]}
    assert outcome.status["storage"]["type"] == "Local"


def test_a_mistyped_storage_ref_names_the_flowstorages_that_exist(cluster: FakeCluster, tmp_path: Path) -> None:
    cluster.storages["team-s3"] = storage_obj(tmp_path / "s3")
    outcome = reconcile_stored_flow(flow_obj(storageRef={"name": "team-s4"}), cluster)
    assert outcome.failure is not None and outcome.failure.reason == "StorageNotFound"
    assert not outcome.failure.stalled  # creating it is enough: retried
    assert ("FlowStorage 'team-s4' does not exist in namespace 'ns' (did you mean 'team-s3'? FlowStorages there: "
            "store, team-s3); the flow will be stored as soon as it is created, or fix spec.storageRef.name.") \
        == outcome.failure.message
    cluster.storages.clear()
    empty = reconcile_stored_flow(flow_obj(storageRef={"name": "team-s4"}), cluster)
    assert empty.failure is not None and "(it has no FlowStorage)" in empty.failure.message


def test_flow_storage_names_its_backend_from_the_spec_before_any_success(cluster: FakeCluster,
                                                                        tmp_path: Path) -> None:
    """status.backend (the TYPE column) is there when the storage cannot be used yet, e.g. its
    credentials Secret is missing, and while suspended: not only after the first success."""
    missing = storage_obj(tmp_path, s3={"bucket": "b", "credentialsSecretRef": {"name": "absent"}})
    del missing["spec"]["local"]
    outcome = reconcile_flow_storage(missing, cluster)
    assert outcome.failure is not None and outcome.failure.reason == "SecretNotFound"
    assert outcome.status["backend"] == "S3" and "storage" not in outcome.status
    suspended = reconcile_flow_storage(storage_obj(tmp_path, suspend=True), cluster)
    assert suspended.status["backend"] == "Local"
    ready = reconcile_flow_storage(cluster.storages["store"], cluster)
    assert ready.status["backend"] == ready.status["storage"]["type"] == "Local"


def test_flow_storage_lists_at_most_1000_flows_and_counts_them_all(cluster: FakeCluster) -> None:
    """status.flows is capped so the object stays small however many flows a storage holds
    (the members come from the operator's index, as in the operator)."""
    members = [{"metadata": {"name": f"f{i:04d}"}, "spec": {"storageRef": {"name": "store"}, "flowName": f"f{i:04d}"},
                "status": {"flowName": f"f{i:04d}", "location": f"f{i:04d}/v1",
                           "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}]}}
               for i in range(1500)]
    outcome = reconcile_flow_storage(cluster.storages["store"], cluster, members=members)
    assert outcome.status["flowCount"] == 1500
    assert list(outcome.status["flows"]) == [f"f{i:04d}" for i in range(1000)]
    assert len(json.dumps(outcome.status)) < 64 * 1024


def test_condition_messages_are_bounded() -> None:
    from flowstore.api.conditions import MAX_MESSAGE_CHARS, mark_failed

    message = "what failed: " + "x" * 50_000 + " -- the last line of the log"
    ready = mark_failed(None, "ScriptFailed", message, 1, stalled=True)[0]["message"]
    assert len(ready) == MAX_MESSAGE_CHARS
    assert ready.startswith("what failed: ") and ready.endswith(" -- the last line of the log")
    head, _, tail = ready.partition("\n… (")
    left_out = int(tail.split(" characters left out) …\n")[0])
    assert len(head) + left_out + len(tail.split(") …\n", 1)[1]) == len(message)


def test_signing_key_from_a_secret_signs_and_its_absence_stalls(cluster: FakeCluster, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from flowstore.artifacts import signing, statement

    cluster.storages["store"] = storage_obj(tmp_path / "flows", signing={"secretRef": {"name": "sig"}})
    outcome = reconcile_stored_flow(flow_obj(), cluster)
    assert outcome.failure is not None and outcome.failure.reason == "SecretNotFound"
    assert "spec.signing.secretRef" in outcome.failure.message and cluster.uploads == 0

    def pem() -> str:
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    first = pem()
    cluster.secrets["sig"] = {"metadata": {"uid": "s", "resourceVersion": "1"},
                              "data": {"FLOWSTORE_SIGNING_KEY": first}}
    obj = settle(flow_obj(), cluster)
    artifact = obj["status"]["artifact"]
    signer = signing.signer_from_secret(first.encode(), None, where="test")
    assert (artifact["keyId"], artifact["revision"], artifact["designation"]) == (signer.key_id, 1, 1)
    rebuilt = statement.from_status(obj["status"], namespace="ns", name="etl", uid="uid-etl")
    assert statement.verify(rebuilt, artifact["signature"], artifact["keyId"], [signer.verifier()], what="etl")
    # Another key re-signs the same revision: a status update, nothing stored again.
    second = pem()
    cluster.secrets["sig"]["data"]["FLOWSTORE_SIGNING_KEY"] = second
    outcome = reconcile_stored_flow(obj, cluster)
    assert cluster.uploads == 1 and outcome.status["artifact"]["keyId"] != artifact["keyId"]
    assert outcome.status["artifact"]["revision"] == 1 and outcome.status["artifact"]["designation"] == 1
    assert [e.reason for e in outcome.events] == ["Signed"]
    # A key that is not what the provider needs: a spec error saying how to make one.
    cluster.secrets["sig"]["data"]["FLOWSTORE_SIGNING_KEY"] = "short"
    failed = reconcile_stored_flow(obj, cluster)
    assert failed.failure is not None and failed.failure.reason == "InvalidSpec" and "16 characters" in \
        failed.failure.message
    # FlowStorage status publishes the public key (never the private one)
    cluster.secrets["sig"]["data"]["FLOWSTORE_SIGNING_KEY"] = second
    published = reconcile_flow_storage(cluster.storages["store"], cluster).status["signing"]
    assert published["provider"] == "ed25519" and published["publicKey"].startswith("-----BEGIN PUBLIC KEY")
    assert "PRIVATE" not in json.dumps(published)


def test_every_revision_in_history_is_signed_over_its_own_statement_and_a_new_key_re_signs_them_all(
        cluster: FakeCluster, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from flowstore.api.history import status_for
    from flowstore.artifacts import signing, statement

    def pem() -> str:
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    def checked(status: dict[str, Any], key: str) -> dict[int, int]:
        """Each history entry's signature verified over the statement an agent pinning that
        revision rebuilds; returns {revision: designation signed}."""
        verifier = signing.signer_from_secret(key.encode(), None, where="test").verifier()
        signed = {}
        for entry in status["history"]:
            stmt = statement.from_status(status_for(status, revision=entry["revision"]), namespace="ns",
                                         name="etl", uid="uid-etl")
            assert statement.verify(stmt, entry["signature"], entry["keyId"], [verifier], what="etl")
            signed[entry["revision"]] = stmt.designation
        return signed

    first = pem()
    cluster.storages["store"] = storage_obj(tmp_path / "flows", signing={"secretRef": {"name": "sig"}})
    cluster.secrets["sig"] = {"metadata": {"uid": "s", "resourceVersion": "1"},
                              "data": {"FLOWSTORE_SIGNING_KEY": first}}
    obj = settle(flow_obj(), cluster)
    one = copy.deepcopy(obj["status"])
    assert one["history"][0]["signature"] == one["artifact"]["signature"]
    obj["spec"]["source"] = {"inline": SCRIPT.replace("lambda: 1", "lambda: 2")}
    obj["metadata"]["generation"] = 2
    status = settle(obj, cluster)["status"]
    assert checked(status, first) == {2: 2, 1: 0}  # a retained revision: designation 0
    retained = next(e for e in status["history"] if e["revision"] == 1)
    assert retained["signature"] != one["artifact"]["signature"]
    assert status["history"][0]["signature"] == status["artifact"]["signature"]
    uploads = cluster.uploads

    # Another key: every revision signed again, a status update only.
    second = pem()
    cluster.secrets["sig"]["data"]["FLOWSTORE_SIGNING_KEY"] = second
    outcome = reconcile_stored_flow(obj, cluster)
    obj["status"] = outcome.status
    assert cluster.uploads == uploads and [e.reason for e in outcome.events] == ["Signed"]
    assert checked(obj["status"], second) == {2: 2, 1: 0}
    assert {e["keyId"] for e in obj["status"]["history"]} == {obj["status"]["artifact"]["keyId"]}

    # A revert makes revision 1 current again under a new designation, signed as such.
    obj["spec"]["source"] = {"inline": SCRIPT}
    obj["metadata"]["generation"] = 3
    status = settle(obj, cluster)["status"]
    assert cluster.uploads == uploads and status["artifact"]["revision"] == 1
    assert checked(status, second) == {1: 3, 2: 0}

    # No signing any more: no signature left anywhere.
    cluster.storages["store"] = storage_obj(tmp_path / "flows")
    status = settle(obj, cluster)["status"]
    assert not any("signature" in e or "keyId" in e for e in [status["artifact"], *status["history"]])
