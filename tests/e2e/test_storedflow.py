"""StoredFlow lifecycle end to end: the real operator, kube-apiserver and S3 server."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3
import pytest

from flowstore import client
from flowstore.storage import IntegrityError
from tests.helpers.kube import apply, condition, get, kubectl, wait_for, wait_listed, wait_ready, wait_reason
from tests.helpers.manifests import inline_flow, local_storage, manifests, s3_storage, stored_flow
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess, local_dir


def test_pickled_flow_is_stored_reported_and_loaded(operator: OperatorProcess, namespace: str,
                                                    s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, key_prefix="prod/", labels=["team-a"]))
    apply(inline_flow(namespace, "etl", "etl daily", body="return 6 * 7"))
    obj = wait_ready(namespace, "etl")
    status = obj["status"]

    assert status["location"].startswith("prod/etl-daily/")
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    artifact = status["artifact"]
    assert artifact["url"] == f"s3://{s3_bucket}/{status['location']}"
    assert artifact["format"] == "pickle"
    assert artifact["digest"].startswith("sha256:") and artifact["sourceDigest"].startswith("sha256:")
    assert artifact["size"] > 0 and artifact["lastUpdateTime"]
    assert status["storage"]["type"] == "S3" and status["storage"]["bucket"] == s3_bucket
    assert status["labels"] == ["team-a", "s3-flow-storage"]
    assert s3_keys(s3_endpoint, s3_bucket) == [status["location"]]

    storage = wait_for("flowstorage", namespace, "store",
                       lambda o: (o.get("status") or {}).get("flows", {}).get("etl daily") == status["location"])
    assert condition(storage)["status"] == "True"

    flow = client.load_flow("etl", namespace)
    assert flow.name == "etl daily" and flow.run() == 42

    located = json.loads(subprocess.run([sys.executable, "-m", "flowstore.cli", "locate", "etl", "-n", namespace],
                                        check=True, capture_output=True, text=True).stdout)
    assert located["location"] == status["location"]

    table = kubectl("get", "storedflows", "-n", namespace).stdout
    assert "READY" in table and "LOCATION" in table and status["location"] in table


def test_script_from_configmap_follows_its_source(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                                 s3_endpoint: str, tmp_path: object) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, storedAsScript=True))
    kubectl("create", "configmap", "flows", "-n", namespace, "--from-literal=etl.py=print('v1')\nflow = None\n")
    apply(manifests(stored_flow(namespace, "etl", "etl", {"configMapRef": {"name": "flows", "key": "etl.py"}})))
    first = wait_ready(namespace, "etl")["status"]
    assert first["artifact"]["format"] == "script"
    out = subprocess.run([sys.executable, "-m", "flowstore.cli", "get", "etl", "-n", namespace],
                         check=True, capture_output=True).stdout
    assert out == b"print('v1')\nflow = None\n"

    kubectl("create", "configmap", "flows", "-n", namespace, "--from-literal=etl.py=print('v2')\n",
            "--dry-run=client", "-o", "yaml")
    patch = json.dumps({"data": {"etl.py": "print('v2')\n"}})
    kubectl("patch", "configmap", "flows", "-n", namespace, "--type=merge", "-p", patch)
    second = wait_for("storedflow", namespace, "etl",
                      lambda o: o["status"].get("location") not in (None, first["location"])
                      and condition(o).get("status") == "True")["status"]
    assert second["artifact"]["sourceDigest"] != first["artifact"]["sourceDigest"]
    assert client.load_artifact("etl", namespace).data == b"print('v2')\n"
    # Retain (the default): the superseded artifact is kept.
    assert s3_keys(s3_endpoint, s3_bucket) == sorted([first["location"], second["location"]])


def test_nothing_changed_means_nothing_written_after_restart(operator: OperatorProcess, namespace: str,
                                                            s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    for i in range(3):
        apply(inline_flow(namespace, f"f{i}", f"flow {i}"))
    before = {f"f{i}": wait_ready(namespace, f"f{i}")["metadata"]["resourceVersion"] for i in range(3)}
    keys = s3_keys(s3_endpoint, s3_bucket)
    # nothing left to write: the storage's status.flows lists the flows (it follows them once they
    # were quiet SUMMARY_QUIET seconds; a restart before that rightly writes it)
    storage_rv = wait_listed(namespace, "store", 3)["metadata"]["resourceVersion"]

    operator.restart()
    # Give the restarted operator time to list, start its loops and reconcile everything.
    wait_for("storedflow", namespace, "f0", lambda o: True)
    import time

    time.sleep(5)
    after = {f"f{i}": get("storedflow", namespace, f"f{i}")["metadata"]["resourceVersion"] for i in range(3)}
    assert after == before, "a restart with nothing changed must not write status"
    assert s3_keys(s3_endpoint, s3_bucket) == keys, "a restart with nothing changed must not upload"
    assert get("flowstorage", namespace, "store")["metadata"]["resourceVersion"] == storage_rv


def test_inline_change_and_storage_change_store_again(operator: OperatorProcess, namespace: str,
                                                     s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, key_prefix="a/"))
    apply(inline_flow(namespace, "etl", "etl"))
    first = wait_ready(namespace, "etl")["status"]["location"]
    assert first.startswith("a/etl/")

    apply(inline_flow(namespace, "etl", "etl", body="return 7"))
    second = wait_ready(namespace, "etl")["status"]["location"]
    assert second != first and client.load_flow("etl", namespace).run() == 7

    apply(s3_storage(namespace, s3_bucket, s3_endpoint, key_prefix="b/"))
    moved = wait_for("storedflow", namespace, "etl", lambda o: o["status"]["location"].startswith("b/etl/")
                     and condition(o).get("status") == "True")
    assert client.load_flow("etl", namespace).run() == 7
    assert moved["status"]["artifact"]["url"].startswith(f"s3://{s3_bucket}/b/etl/")


def test_waits_for_storage_then_stores(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                       s3_endpoint: str) -> None:
    apply(inline_flow(namespace, "early", "early"))
    waiting = wait_reason(namespace, "early", "StorageNotFound")
    assert "does not exist" in condition(waiting)["message"]
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    wait_ready(namespace, "early", timeout=15)


def test_deletion_policy(operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="keep"))
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="drop", deletionPolicy="Delete", key_prefix="d/"))
    apply(inline_flow(namespace, "kept", "kept", storage="keep"))
    apply(inline_flow(namespace, "dropped", "dropped", storage="drop"))
    kept = wait_ready(namespace, "kept")["status"]["location"]
    dropped = wait_ready(namespace, "dropped")["status"]["location"]
    wait_for("flowstorage", namespace, "drop", lambda o: "dropped" in (o.get("status") or {}).get("flows", {}))

    kubectl("delete", "storedflow", "kept", "dropped", "-n", namespace, "--timeout=30s")
    assert s3_keys(s3_endpoint, s3_bucket) == [kept]
    assert dropped not in s3_keys(s3_endpoint, s3_bucket)
    wait_for("flowstorage", namespace, "drop", lambda o: "dropped" not in (o.get("status") or {}).get("flows", {}))


def test_only_flows_whose_storage_deletes_carry_the_finalizer(operator: OperatorProcess, namespace: str,
                                                              s3_bucket: str, s3_endpoint: str) -> None:
    """Under Retain a deletion has nothing to do: no finalizer, so `kubectl delete` needs no
    operator. Switching the FlowStorage to Delete gives its flows the finalizer (no change of
    theirs); switched back, a deletion keeps the object and releases the finalizer."""
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="store"))
    apply(inline_flow(namespace, "etl", "etl", storage="store"))
    location = wait_ready(namespace, "etl")["status"]["location"]
    assert not get("storedflow", namespace, "etl")["metadata"].get("finalizers")
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="store", deletionPolicy="Delete"))
    wait_for("storedflow", namespace, "etl", lambda o: o["metadata"].get("finalizers") == ["flowstore.dev/cleanup"],
             30, "to carry the finalizer once its storage deletes")
    apply(inline_flow(namespace, "new", "new", storage="store"))  # a new flow under Delete: from its start
    wait_ready(namespace, "new")
    wait_for("storedflow", namespace, "new", lambda o: o["metadata"].get("finalizers") == ["flowstore.dev/cleanup"],
             30, "to carry the finalizer")
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="store"))  # Retain again
    wait_for("flowstorage", namespace, "store", lambda o: (o.get("status") or {}).get("observedGeneration")
             == o["metadata"]["generation"], 30, "to observe Retain")
    kubectl("delete", "storedflow", "etl", "-n", namespace, "--timeout=30s")
    assert location in s3_keys(s3_endpoint, s3_bucket)


def test_deletion_with_backend_down_is_bounded(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                               s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, deletionPolicy="Delete"))
    apply(inline_flow(namespace, "etl", "etl"))
    location = wait_ready(namespace, "etl")["status"]["location"]
    # The backend goes away (an endpoint nothing listens on); the flow keeps its last good location.
    apply(s3_storage(namespace, s3_bucket, "http://127.0.0.1:9", deletionPolicy="Delete"))
    unavailable = wait_reason(namespace, "etl", "BackendUnavailable")
    assert unavailable["status"]["location"] == location
    kubectl("delete", "storedflow", "etl", "-n", namespace, "--timeout=90s")
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=CleanupFailed",
                     "-o", "jsonpath={.items[*].message}").stdout
    assert location in events and "left in place" in events
    assert location in s3_keys(s3_endpoint, s3_bucket)


def test_tampered_or_truncated_artifact_is_refused(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                                   s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl"))
    location = wait_ready(namespace, "etl")["status"]["location"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    original = s3.get_object(Bucket=s3_bucket, Key=location)["Body"].read()

    s3.put_object(Bucket=s3_bucket, Key=location, Body=original[:40] + bytes([original[40] ^ 1]) + original[41:])
    with pytest.raises(IntegrityError, match="does not match"):
        client.load_flow("etl", namespace)
    s3.put_object(Bucket=s3_bucket, Key=location, Body=original[: len(original) // 2])
    with pytest.raises(IntegrityError, match="modified or truncated"):
        client.load_flow("etl", namespace)
    cli = subprocess.run([sys.executable, "-m", "flowstore.cli", "get", "etl", "-n", namespace],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "does not match" in cli.stderr


def test_local_storage(operator: OperatorProcess, namespace: str) -> None:
    directory = local_dir(namespace, "flows")
    apply(local_storage(namespace, "store", directory, volume_name="flows-pvc"))
    apply(inline_flow(namespace, "etl", "etl local"))
    status = wait_ready(namespace, "etl")["status"]
    assert status["artifact"]["url"].startswith(f"file://{directory}/")
    assert "local-flow-storage-flows-pvc" in status["labels"]
    assert client.load_flow("etl", namespace).run() == 42
