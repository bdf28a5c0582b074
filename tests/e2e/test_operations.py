"""Day-2 operations end to end: metrics, reconcile-now, suspend, Events."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from tests.helpers.kube import apply, condition, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted(p for p in (match.group(2) or "").split(",") if p))
            if got == wanted:
                return float(match.group(3))
    return 0.0


def scrape(operator: OperatorProcess) -> str:
    return requests.get(operator.metrics_url, timeout=5).text


@pytest.fixture
def namespaced_operator(own_operators_only: None, crds: None, namespace: str, kube_env: dict[str, str],
                        tmp_path: Path) -> Iterator[OperatorProcess]:
    """An operator that watches only this test's namespace, so that its gauges count this
    test's objects alone (the session's operator also sees every earlier test's leftovers)."""
    op = OperatorProcess(tmp_path, dict(os.environ))
    op.start("--namespace", namespace)
    yield op
    op.stop()


def test_metrics_follow_stores_and_failures(namespaced_operator: OperatorProcess, namespace: str,
                                            s3_bucket: str, s3_endpoint: str) -> None:
    operator = namespaced_operator
    before = scrape(operator)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "good", "good"))
    apply(inline_flow(namespace, "broken", "broken", body="return ("))
    size = wait_ready(namespace, "good")["status"]["artifact"]["size"]
    wait_reason(namespace, "broken", "ScriptSyntaxError")
    after = scrape(operator)

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("flowstore_artifacts_stored_total", backend="S3") >= 1
    assert grew("flowstore_upload_bytes_total", backend="S3") >= size
    assert grew("flowstore_reconciles_total", kind="StoredFlow", result="ready") >= 1
    assert grew("flowstore_failures_total", kind="StoredFlow", reason="ScriptSyntaxError") >= 1
    assert grew("flowstore_build_duration_seconds_count") >= 1
    assert grew("flowstore_reconcile_duration_seconds_count", kind="StoredFlow") >= 2
    assert metric(after, "flowstore_not_ready", kind="StoredFlow") == 1

    kubectl("delete", "storedflow", "broken", "-n", namespace)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        # the deleted broken flow no longer counts as not Ready
        if metric(scrape(operator), "flowstore_not_ready", kind="StoredFlow") == 0:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("flowstore_not_ready did not drop to 0 after the failing flow was deleted")


def test_reconcile_now_annotation_checks_and_repairs(operator: OperatorProcess, namespace: str,
                                                     s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl"))
    location = wait_ready(namespace, "etl")["status"]["location"]
    # The artifact disappears behind the operator's back; nothing notices before the interval.
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").delete_object(
        Bucket=s3_bucket, Key=location)
    kubectl("annotate", "storedflow", "etl", "-n", namespace, "--overwrite", "flowstore.dev/requested-at=now-1")
    repaired = wait_for("storedflow", namespace, "etl",
                        lambda o: (o.get("status") or {}).get("lastHandledReconcileAt") == "now-1"
                        and condition(o).get("status") == "True")
    assert repaired["status"]["location"] != location
    assert s3_keys(s3_endpoint, s3_bucket) == [repaired["status"]["location"]]
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=Stored",
                     "-o", "jsonpath={.items[*].message}").stdout
    assert "Stored again (the artifact is missing)" in events


def test_suspend_pauses_and_resumes(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                    s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl"))
    first = wait_ready(namespace, "etl")["status"]["location"]
    apply(inline_flow(namespace, "etl", "etl", body="return 2", suspend=True))
    suspended = wait_for("storedflow", namespace, "etl", lambda o: condition(o, "Suspended").get("status") == "True")
    assert suspended["status"]["location"] == first
    # stored before the suspension: Ready stays True (still loadable there), and says so
    assert condition(suspended)["status"] == "True" and condition(suspended, "Reconciling") == {}
    assert "spec.suspend is true" in condition(suspended, "Suspended")["message"]
    time.sleep(2)
    assert s3_keys(s3_endpoint, s3_bucket) == [first], "a suspended StoredFlow must not be stored"
    apply(inline_flow(namespace, "etl", "etl", body="return 2", suspend=False))
    resumed = wait_ready(namespace, "etl")
    assert resumed["status"]["location"] != first and len(s3_keys(s3_endpoint, s3_bucket)) == 2
    assert condition(resumed, "Suspended") == {}, "Suspended is present only while true"


def test_kubectl_describe_tells_what_and_how(operator: OperatorProcess, namespace: str) -> None:
    apply(inline_flow(namespace, "lost", "lost", storage="nowhere"))
    wait_reason(namespace, "lost", "StorageNotFound")
    text = kubectl("describe", "storedflow", "lost", "-n", namespace).stdout
    assert "StorageNotFound" in text and "does not exist" in text and "as soon as it is created" in text
    assert "Warning" in text  # the Event


def test_a_namespace_being_deleted_still_reconciles_without_warnings(operator: OperatorProcess, namespace: str,
                                                                     s3_bucket: str, s3_endpoint: str) -> None:
    """Nothing can be created in a namespace being deleted (HTTP 403, NamespaceTerminating): its
    flows still get their status, and the operator drops their Events quietly instead of logging
    a Forbidden that reads like a missing permission. (The local cloud runs no namespace
    controller: a deleted namespace stays Terminating with everything in it.)"""
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl"))
    wait_ready(namespace, "etl")
    kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for("namespace", namespace, namespace, lambda o: o["status"].get("phase") == "Terminating",
             what="to be Terminating")
    apply(s3_storage(namespace, s3_bucket, "http://127.0.0.1:9"))  # a Warning Event is due
    wait_reason(namespace, "etl", "BackendUnavailable")
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "reason=BackendUnavailable",
                     "-o", "name").stdout
    assert events.strip() == ""  # it could not be posted
    time.sleep(1)
    logs = operator.logs()
    assert "could not post event" not in logs and "Forbidden" not in logs, logs[-3000:]
    assert operator.alive()
