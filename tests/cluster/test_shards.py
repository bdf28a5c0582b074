"""Shards from the chart on the node: `shards: [shard1, shard2]` with two replicas each (six
operator Pods: shard1, shard2 and the default shard, each a leader and a standby on a Lease of its
own). Each shard's leader stores only its flows; killing shard1's leader hands only
shard1's work to its standby, and nothing is stored twice (S3 objects == locations).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.cluster.conftest import Release, kill_pod
from tests.cluster.test_lifecycle import assert_each_stored_once
from tests.helpers.kube import apply, kubectl, kubectl_json, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage

pytestmark = pytest.mark.timeout(1200)  # the session may build the operator image first; six Pods start

SHARD = "flowstore.dev/shard"
STORED = re.compile(r"\bstored ([^/\s]+)/(\S+) at ")


def shard_pods(release: Release, shard: str | None) -> list[str]:
    selector = (f"flowstore.dev/operator-shard={shard}" if shard
                else f"app.kubernetes.io/name=flowstore-operator,app.kubernetes.io/instance={release.name}")
    pods = kubectl_json("get", "pods", "-n", release.namespace, "-l", selector)["items"]
    return sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))


def pod_logs(release: Release, pod: str) -> str:
    """The Pod's log, with its previous container's: on a loaded node a leader that misses its
    renew deadline exits (as it must) and its container restarts."""
    previous = kubectl("logs", "-n", release.namespace, pod, "--previous", check=False).stdout
    return previous + release.logs(pod)


def leader_of(release: Release, shard: str | None, timeout: float = 120) -> str:
    """The shard's Pod that holds its Lease now (the holder's identity carries the Pod's host and pid,
    so the Lease names the holder; the Pod whose current log says it acquired it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holders = [p for p in shard_pods(release, shard) if "acquired Lease" in release.logs(p)]
        if len(holders) == 1:
            return holders[0]
        time.sleep(1)
    raise AssertionError(f"no single leader of shard {shard} in {timeout:.0f}s:\n{release.describe()}")


def stored_by(release: Release, pods: list[str]) -> list[str]:
    return sorted(m.group(2) for pod in pods for m in STORED.finditer(pod_logs(release, pod)))


def labelled(manifest: str, name: str, namespace: str, shard: str | None) -> str:
    if not shard:
        return manifest
    meta = f"metadata: {{name: {name}, namespace: {namespace}}}"
    assert manifest.count(meta) == 1, manifest
    return manifest.replace(meta, f"metadata: {{name: {name}, namespace: {namespace}, labels: {{{SHARD}: {shard}}}}}")


def test_chart_shards_store_their_own_flows_and_one_shards_leader_fails_over_alone(
        install: Callable[..., Release], new_namespace: Callable[[], str], s3_endpoint: str, s3_bucket: str) -> None:
    namespace = new_namespace()
    # Six Pods on one node share its network: no probe and no metrics port (values.yaml).
    release = install("--set", "shards={shard1,shard2}", "--set", "probes.liveness.enabled=false",
                      "--set", "probes.readiness.enabled=false", "--set", "metrics.enabled=false",
                      replicas=2, pods=6, watch=(namespace,), timeout=600)
    shards: list[str | None] = ["shard1", "shard2", None]
    leaders = {s: leader_of(release, s) for s in shards}
    leases = {item["metadata"]["name"] for item in kubectl_json("get", "leases", "-n", release.namespace)["items"]}
    assert {f"{release.deployment}", f"{release.deployment}-shard1", f"{release.deployment}-shard2"} <= leases
    print(f"leaders: {leaders}; Leases: {sorted(leases)}")

    names: dict[str | None, list[str]] = {}
    for shard in shards:
        tag = shard or "default"
        storage = f"store-{tag}"
        apply(labelled(s3_storage(namespace, s3_bucket, s3_endpoint, name=storage, key_prefix=f"{tag}/"),
                       storage, namespace, shard))
        names[shard] = [f"{tag}-{i}" for i in range(3)]
        for name in names[shard]:
            apply(labelled(inline_flow(namespace, name, name, storage=storage), name, namespace, shard))
    for shard in shards:
        for name in names[shard]:
            wait_ready(namespace, name, timeout=300)
    for shard in shards:  # each shard's Pods stored its flows, once
        assert stored_by(release, shard_pods(release, shard)) == names[shard], shard

    # shard1's leader dies at once (SIGKILL: no graceful release); then new work arrives on shard1 and the
    # default shard
    killed_at = time.monotonic()
    kill_pod(release.namespace, leaders["shard1"])
    later = {"shard1": ["shard1-later-0", "shard1-later-1"], None: ["default-later-0", "default-later-1"]}
    for shard, new in later.items():
        for name in new:
            apply(labelled(inline_flow(namespace, name, name, storage=f"store-{shard or 'default'}"),
                           name, namespace, shard))
    for name in later[None]:
        wait_ready(namespace, name, timeout=300)
    default_ready = time.monotonic() - killed_at
    for name in later["shard1"]:
        wait_ready(namespace, name, timeout=300)
    failover = time.monotonic() - killed_at
    print(f"observed: after a SIGKILL of shard1's leader, the default shard's new flows were Ready "
          f"after {default_ready:.1f}s and shard1's after {failover:.1f}s")
    new_leader = leader_of(release, "shard1", timeout=60)
    assert new_leader != leaders["shard1"]
    # the standby stored only the new ones (the rest was stored); the other shards only theirs
    assert stored_by(release, [new_leader]) == sorted(later["shard1"])
    assert stored_by(release, shard_pods(release, "shard2")) == names["shard2"]
    assert stored_by(release, shard_pods(release, None)) == sorted(names[None] + later[None])
    assert_each_stored_once(namespace, [n for ns in (*names.values(), *later.values()) for n in ns],
                            s3_endpoint, s3_bucket)
    release.assert_no_denials()
