"""The operator's Pods through their life on the node: two replicas electing a leader (the
leader killed with SIGKILL and its Pod deleted, the other finishing the work), `helm upgrade` to a
new image while flows are being stored, and `helm uninstall`, which keeps the CRDs, the
resources and every artifact.

Uploads are counted as S3 objects: every upload writes a new timestamped key, so a flow stored
twice shows up as an extra object.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.cluster.conftest import Release, kill_pod
from tests.helpers.kube import apply, get, kubectl, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.objects import s3_keys


def leader(release: Release, timeout: float = 60) -> str:
    """The Pod whose operator holds the Lease (it logs so when it acquires it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holders = [p["metadata"]["name"] for p in release.pods()
                   if "acquired Lease" in release.logs(p["metadata"]["name"])]
        if len(holders) == 1:
            return holders[0]
        assert len(holders) < 2, f"two leaders: {holders}"
        time.sleep(1)
    raise AssertionError(f"no leader in {timeout:.0f}s:\n{release.describe()}")


def assert_each_stored_once(namespace: str, names: list[str], s3_endpoint: str, bucket: str) -> None:
    locations = sorted(get("storedflow", namespace, n)["status"]["location"] for n in names)
    assert s3_keys(s3_endpoint, bucket) == locations, "a flow was stored twice, or not at all"


def test_leader_pod_killed_the_other_takes_over(install: Callable[..., Release],
                                                        new_namespace: Callable[[], str], s3_endpoint: str,
                                                        s3_bucket: str) -> None:
    namespace = new_namespace()
    # Two replicas on one node share its network: no probe and no metrics port (values.yaml).
    release = install("--set", "probes.liveness.enabled=false", "--set", "probes.readiness.enabled=false",
                      "--set", "metrics.enabled=false", replicas=2, watch=(namespace,))
    first = leader(release)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    names = [f"flow-{i}" for i in range(8)]
    for name in names[:4]:
        apply(inline_flow(namespace, name, name))
    wait_ready(namespace, names[0], timeout=120)
    # The leader goes at once (no graceful release of the Lease); more work arrives meanwhile.
    kill_pod(release.namespace, first)
    for name in names[4:]:
        apply(inline_flow(namespace, name, name))
    for name in names:
        wait_ready(namespace, name, timeout=180)
    assert_each_stored_once(namespace, names, s3_endpoint, s3_bucket)
    second = leader(release, timeout=30)
    assert second != first
    release.assert_no_denials()


def test_upgrade_while_storing_then_uninstall_keeps_everything(install: Callable[..., Release],
                                                               new_namespace: Callable[[], str],
                                                               operator_image: Callable[[str], str],
                                                               helm: str, s3_endpoint: str,
                                                               s3_bucket: str) -> None:
    namespace = new_namespace()
    release = install(watch=(namespace,))
    (old_pod,) = release.pods()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    names = [f"flow-{i}" for i in range(10)]
    for name in names[:3]:
        apply(inline_flow(namespace, name, name))
    new_tag = operator_image("b")   # the same build, under a new tag: a new Pod template
    release.helm_run("upgrade", release.name, "helm/flowstore-operator", "-n", release.namespace,
                     *release.values, "--set", f"image.tag={new_tag}")
    for name in names[3:]:            # while the old Pod stops and the new one starts
        apply(inline_flow(namespace, name, name))
        time.sleep(0.5)
    (new_pod,) = release.wait_rolled_out()
    assert new_pod["metadata"]["name"] != old_pod["metadata"]["name"]
    assert new_pod["spec"]["containers"][0]["image"].endswith(f":{new_tag}")
    statuses = {n: wait_ready(namespace, n, timeout=180)["status"] for n in names}
    assert_each_stored_once(namespace, names, s3_endpoint, s3_bucket)
    release.assert_no_denials()

    release.helm_run("uninstall", release.name, "-n", release.namespace, "--wait")
    for crd in ("flowstorages.flowstore.dev", "storedflows.flowstore.dev"):
        assert kubectl("get", "crd", crd, "-o", "jsonpath={.metadata.name}").stdout == crd
    for name, status in statuses.items():
        assert get("storedflow", namespace, name)["status"]["location"] == status["location"]
    assert get("flowstorage", namespace, "store")["metadata"]["name"] == "store"
    assert s3_keys(s3_endpoint, s3_bucket) == sorted(s["location"] for s in statuses.values())
    deadline = time.monotonic() + 60
    while release.pods() and time.monotonic() < deadline:
        time.sleep(1)
    assert not release.pods(), "the operator's Pods are gone with the release"
