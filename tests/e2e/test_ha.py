"""High availability end to end: Lease leader election and label-selector shards.

Real `flowstore operator` processes (started here, scoped to the test's namespace, never the
session operator), the real kube-apiserver and the real S3 server. Uploads are counted three
ways: S3 objects (every upload writes a new timestamped key, so a duplicate shows up as an
extra object), the operators' "stored …" log lines, and their upload metrics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.kube import apply, condition, get, kubectl, wait_listed, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.net import free_port
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess

pytestmark = [pytest.mark.usefixtures("own_operators_only")]

LEASE = "flowstore-operator"
STORED = re.compile(r"\bstored ([^/\s]+)/(\S+) at ")


@pytest.fixture
def operators(crds: None, kube_env: dict[str, str], s3_endpoint: str,
              tmp_path: Path) -> Iterator[dict[str, OperatorProcess]]:
    """Operator processes by name, each logging to its own directory; all killed afterwards."""
    started: dict[str, OperatorProcess] = {}
    yield started
    for op in started.values():
        op.stop(signal.SIGKILL)


def start(operators: dict[str, OperatorProcess], tmp_path: Path, name: str, *args: str) -> OperatorProcess:
    log_dir = tmp_path / name
    log_dir.mkdir()
    op = OperatorProcess(log_dir, dict(os.environ))
    operators[name] = op
    op.start(*args)
    print(f"started operator {name} (pid {pid(op)}): {' '.join(args)}")
    return op


def elected(namespace: str) -> list[str]:
    return ["--namespace", namespace, "--leader-elect", "--lease-namespace", namespace, "--lease-name", LEASE]


def holder(namespace: str) -> str | None:
    found = kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    return (json.loads(found.stdout).get("spec") or {}).get("holderIdentity") or None


def holder_pid(identity: str) -> int:
    return int(identity.rsplit("_", 2)[1])  # hostname_pid_random


def wait_holder(namespace: str, unlike: str | None = None, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = holder(namespace)
        if found and found != unlike:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no new Lease holder in {timeout}s (was {unlike})")


def pid(op: OperatorProcess) -> int:
    assert op.proc is not None
    return op.proc.pid


def by_pid(ops: dict[str, OperatorProcess], wanted: int) -> OperatorProcess:
    return next(op for op in ops.values() if pid(op) == wanted)


def stored(op: OperatorProcess) -> list[str]:
    """Names the operator logged as stored (uploaded), one entry per upload."""
    return [m.group(2) for m in STORED.finditer(op.logs())]


def metric(op: OperatorProcess, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(op.metrics_url, timeout=5).read().decode()  # noqa: S310 - loopback
    wanted = sorted(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = [p for p in (match.group(2) or "").split(",") if p]
            if all(w in got for w in wanted):
                total += float(match.group(3))
    return total


def wait_metric(op: OperatorProcess, at_least: float, name: str, timeout: float = 60.0, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while metric(op, name, **labels) < at_least:
        assert op.alive(), op.logs()
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} stayed below {at_least}:\n{op.logs()[-3000:]}")
        time.sleep(0.2)


def flows(namespace: str, names: list[str], storage: str = "store", labels: dict[str, str] | None = None) -> str:
    docs = [inline_flow(namespace, name, name, body=f"return {name!r}", storage=storage) for name in names]
    if labels:
        docs = [with_labels(doc, namespace, name, labels) for doc, name in zip(docs, names, strict=True)]
    return "\n---\n".join(docs)


def with_labels(manifest: str, namespace: str, name: str, labels: dict[str, str]) -> str:
    meta = f"metadata: {{name: {name}, namespace: {namespace}}}"
    assert manifest.count(meta) == 1
    return manifest.replace(meta, f"metadata: {{name: {name}, namespace: {namespace}, labels: {json.dumps(labels)}}}")


def wait_all_ready(namespace: str, names: list[str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        wait_ready(namespace, name, timeout=max(5.0, deadline - time.monotonic()))


def versions(namespace: str) -> dict[str, str]:
    out = json.loads(kubectl("get", "storedflows,flowstorages", "-n", namespace, "-o", "json").stdout)
    return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in out["items"]}


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return int(response.status), response.read().decode()


# ---------------------------------------------------------------------- leader election
def test_one_leader_no_duplicate_writes_and_handover_after_sigkill(
        operators: dict[str, OperatorProcess], tmp_path: Path, namespace: str, s3_bucket: str,
        s3_endpoint: str) -> None:
    start(operators, tmp_path, "a", *elected(namespace))
    start(operators, tmp_path, "b", *elected(namespace))
    first = wait_holder(namespace)
    leader = by_pid(operators, holder_pid(first))
    follower = next(op for op in operators.values() if op is not leader)
    time.sleep(3)  # a few election rounds: the follower must stay a follower
    assert holder(namespace) == first
    assert "acquired Lease" in leader.logs() and "flowstore operator started" in leader.logs()
    assert "waits to lead" in follower.logs()
    assert "acquired Lease" not in follower.logs() and "flowstore operator started" not in follower.logs()
    print(f"leader: pid {pid(leader)} ({first}); follower: pid {pid(follower)}")

    names = [f"flow-{i:02d}" for i in range(20)]
    apply(s3_storage(namespace, s3_bucket, s3_endpoint) + "\n---\n" + flows(namespace, names))
    print(f"injected: an S3 FlowStorage and {len(names)} StoredFlows")
    wait_all_ready(namespace, names)
    keys = s3_keys(s3_endpoint, s3_bucket)
    uploads = stored(leader)
    print(f"observed: {len(keys)} S3 objects; leader logged {len(uploads)} uploads, follower "
          f"{len(stored(follower))}; leader metric {metric(leader, 'flowstore_artifacts_stored_total')}")
    assert len(keys) == 20
    assert sorted(uploads) == names  # each exactly once
    assert stored(follower) == []
    assert metric(leader, "flowstore_artifacts_stored_total") == 20
    assert metric(follower, "flowstore_artifacts_stored_total") == 0
    assert metric(follower, "flowstore_reconciles_total") == 0

    killed_at = time.monotonic()
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGKILL)
    second = wait_holder(namespace, unlike=first, timeout=30)
    handover = time.monotonic() - killed_at
    print(f"injected: SIGKILL to the leader (pid {pid(leader)}); observed: Lease holder {first} -> {second} "
          f"after {handover:.2f}s")
    assert holder_pid(second) == pid(follower)
    assert handover < 15, f"handover took {handover:.1f}s"
    leader.proc.wait(timeout=10)

    # The survivor reconciles the 20 stored flows (level-triggered), and writes nothing to S3.
    wait_metric(follower, 20, "flowstore_reconciles_total", kind="StoredFlow", result="ready")
    assert s3_keys(s3_endpoint, s3_bucket) == keys
    assert stored(follower) == []
    assert metric(follower, "flowstore_artifacts_stored_total") == 0
    print(f"observed: the survivor reconciled the 20 flows and uploaded none ({len(keys)} S3 objects before and "
          f"after the handover)")

    more = [f"late-{i:02d}" for i in range(10)]
    apply(flows(namespace, more))
    wait_all_ready(namespace, names + more)
    final = s3_keys(s3_endpoint, s3_bucket)
    print(f"injected: {len(more)} more StoredFlows; observed: {len(final)} S3 objects, survivor logged "
          f"{len(stored(follower))} uploads")
    assert len(final) == 30
    assert set(keys) <= set(final)
    assert sorted(stored(follower)) == more
    assert metric(follower, "flowstore_artifacts_stored_total") == 10


def test_followers_do_nothing_and_sigterm_releases_the_lease(
        operators: dict[str, OperatorProcess], tmp_path: Path, namespace: str, s3_bucket: str,
        s3_endpoint: str) -> None:
    liveness = {name: f"http://127.0.0.1:{free_port()}/healthz" for name in ("a", "b")}
    leader = start(operators, tmp_path, "a", *elected(namespace), "--liveness", liveness["a"])
    first = wait_holder(namespace)
    assert holder_pid(first) == pid(leader)
    follower = start(operators, tmp_path, "b", *elected(namespace), "--liveness", liveness["b"])

    names = [f"flow-{i}" for i in range(5)]
    apply(s3_storage(namespace, s3_bucket, s3_endpoint) + "\n---\n" + flows(namespace, names))
    wait_all_ready(namespace, names)
    wait_listed(namespace, "store", 5)
    time.sleep(1)
    before = versions(namespace)
    time.sleep(6)  # three election rounds of the follower
    after = versions(namespace)
    code, body = http_get(liveness["b"])
    print(f"follower liveness: {code} {body}")
    print(f"observed: resourceVersions {'unchanged' if before == after else 'CHANGED'} over 6s; follower log "
          f"has {len(stored(follower))} stored lines, reconciles metric "
          f"{metric(follower, 'flowstore_reconciles_total')}")
    assert code == 200 and json.loads(body)["leaderElection"] == "follower"
    assert before == after
    assert stored(follower) == []
    assert "flowstore operator started" not in follower.logs()
    assert metric(follower, "flowstore_reconciles_total") == 0
    assert holder(namespace) == first
    keys = s3_keys(s3_endpoint, s3_bucket)
    assert len(keys) == 5

    # A rollout: SIGTERM stops kopf, then the Lease is released, so the follower takes over at
    # its next election round instead of waiting for the Lease to expire.
    assert leader.proc is not None
    stopped_at = time.monotonic()
    leader.proc.send_signal(signal.SIGTERM)
    second = wait_holder(namespace, unlike=first, timeout=20)
    handover = time.monotonic() - stopped_at
    assert leader.proc.wait(timeout=20) == 0
    print(f"injected: SIGTERM to the leader; observed: it exited 0, released the Lease, and the follower held it "
          f"after {handover:.2f}s")
    assert "released Lease" in leader.logs()
    assert holder_pid(second) == pid(follower)
    assert handover < 6, f"graceful handover took {handover:.1f}s"
    wait_metric(follower, 5, "flowstore_reconciles_total", kind="StoredFlow", result="ready")
    assert http_get(liveness["b"])[0] == 200  # now kopf's own endpoint
    assert s3_keys(s3_endpoint, s3_bucket) == keys
    assert stored(follower) == []


def test_a_leader_that_loses_the_lease_exits_at_once(operators: dict[str, OperatorProcess], tmp_path: Path,
                                                     namespace: str) -> None:
    leader = start(operators, tmp_path, "a", *elected(namespace))
    assert holder_pid(wait_holder(namespace)) == pid(leader)
    taken_at = time.monotonic()
    kubectl("patch", "lease", LEASE, "-n", namespace, "--type", "merge", "-p", '{"spec":{"holderIdentity":"other"}}')
    assert leader.proc is not None
    code = leader.proc.wait(timeout=10)
    print(f"injected: the Lease handed to another holder; observed: the leader exited {code} after "
          f"{time.monotonic() - taken_at:.2f}s")
    assert code == 1
    assert "is now held by other" in leader.logs()


# ---------------------------------------------------------------------- shards
def test_label_selector_shards_split_the_work(operators: dict[str, OperatorProcess], tmp_path: Path,
                                              namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    ops = {shard: start(operators, tmp_path, shard, "--namespace", namespace, "--selector", f"shard={shard}")
           for shard in ("a", "b")}
    docs, names = [], {}
    for shard in ("a", "b"):
        storage = f"store-{shard}"
        docs.append(with_labels(s3_storage(namespace, s3_bucket, s3_endpoint, name=storage, key_prefix=f"{shard}/"),
                                namespace, storage, {"shard": shard}))
        names[shard] = [f"{shard}-flow-{i}" for i in range(6)]
        docs.append(flows(namespace, names[shard], storage=storage, labels={"shard": shard}))
    docs.append(flows(namespace, ["unlabelled"], storage="store-a"))
    apply("\n---\n".join(docs))
    print("injected: FlowStorages store-a (shard=a), store-b (shard=b); 6 StoredFlows per shard; 1 unlabelled")
    wait_all_ready(namespace, names["a"] + names["b"])
    for shard in ("a", "b"):
        wait_ready(namespace, f"store-{shard}", kind="flowstorage")
    keys = s3_keys(s3_endpoint, s3_bucket)
    print(f"observed: operator a stored {sorted(stored(ops['a']))}; operator b stored {sorted(stored(ops['b']))}; "
          f"{len(keys)} S3 objects")
    assert sorted(stored(ops["a"])) == names["a"]
    assert sorted(stored(ops["b"])) == names["b"]
    assert len(keys) == 12
    assert sum(k.startswith("a/") for k in keys) == 6 and sum(k.startswith("b/") for k in keys) == 6
    time.sleep(1)
    unlabelled = get("storedflow", namespace, "unlabelled")
    assert not unlabelled.get("status") and not condition(unlabelled)
    assert not unlabelled["metadata"].get("finalizers")  # neither operator took it on
    for op in ops.values():
        assert "unlabelled" not in op.logs()
