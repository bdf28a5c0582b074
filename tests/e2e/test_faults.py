"""Fault injection against the real local cloud: backend outage, SIGKILL, API server and etcd
restarts, concurrent spec edits, a deleted ConfigMap.

Each test starts its own operator (scoped to the test's namespace, so other sessions' objects
stay out of it) because it kills or starves it, and PRINTS what it injected and what it
observed: run with ``pytest -s`` to read them. Servers are stopped and started with
``scripts/localcloud stop|start`` in the session's state dir ($FLOWSTORE_LOCALCLOUD_DIR).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from flowstore import client
from tests.helpers.kube import apply, condition, get, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.localcloud import LOCALCLOUD, ROOT
from tests.helpers.manifests import configmap, inline_flow, manifests, s3_storage, stored_flow
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess
from tests.helpers.operator import local_dir as operator_local_dir
from tests.helpers.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.usefixtures("own_operators_only")]


def say(msg: str) -> None:
    print(f"[faults] {msg}", flush=True)


class ScopedOperator(OperatorProcess):
    """The real operator, watching one namespace only; (re)startable and killable."""

    def __init__(self, log_dir: Path, namespace: str) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(log_dir, dict(os.environ))
        self.namespace = namespace

    def start(self, *extra: str) -> None:
        super().start("--namespace", self.namespace, *extra)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@pytest.fixture
def make_operator(crds: None, kube_env: dict[str, str], s3_endpoint: str,
                  tmp_path: Path) -> Iterator[Callable[[str], ScopedOperator]]:
    started: list[ScopedOperator] = []

    def make(namespace: str) -> ScopedOperator:
        op = ScopedOperator(tmp_path / f"operator-{len(started)}", namespace)
        started.append(op)
        return op

    yield make
    for op in started:  # every operator this test started, by its own pid
        op.stop(signal.SIGKILL)


def localcloud(action: str, server: str) -> float:
    """`scripts/localcloud stop|start SERVER` in the session's state dir; returns seconds taken."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(LOCALCLOUD), action, server], check=True, cwd=ROOT, env=os.environ,
                   capture_output=True)
    return time.monotonic() - t0


def list_flows(namespace: str, timeout: str = "10s") -> dict[str, dict[str, Any]]:
    out = kubectl("get", "storedflows", "-n", namespace, "-o", "json", f"--request-timeout={timeout}").stdout
    return {o["metadata"]["name"]: o for o in json.loads(out)["items"]}


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return condition(obj).get("status") == "True" and status.get("observedGeneration") == obj["metadata"]["generation"]


def wait_all_ready(namespace: str, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    items: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        items = list_flows(namespace)
        if all(n in items and is_ready(items[n]) for n in names):
            return items
        time.sleep(0.5)
    pending = {n: condition(items[n]).get("reason") if n in items else "absent" for n in names
               if n not in items or not is_ready(items[n])}
    raise AssertionError(f"not Ready after {timeout:.0f}s: {pending}")


def script(flow_name: str, value: int) -> str:
    """The inline source inline_flow() generates for `body="return value"`."""
    return f"from flowstore.flow import Flow\n\ndef main():\n    return {value}\n\nflow = Flow({flow_name!r}, main)\n"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class S3Check:
    """Reads objects straight from the S3 server (not through the proxy) and checks digests."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.bucket = bucket
        self.verified: set[tuple[str, str]] = set()

    def keys(self) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def problem(self, status: dict[str, Any]) -> str | None:
        """None when status.location names an object whose bytes hash to status.artifact.digest."""
        location, digest = status["location"], status["artifact"]["digest"]
        if (location, digest) in self.verified:
            return None
        try:
            data = self.s3.get_object(Bucket=self.bucket, Key=location)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return f"{location} does not exist"
        if sha256(data) != digest:
            return f"{location} holds {len(data)} bytes hashing to {sha256(data)[:19]}…, status says {digest[:19]}…"
        if len(data) != status["artifact"]["size"]:
            return f"{location} holds {len(data)} bytes, status says {status['artifact']['size']}"
        self.verified.add((location, digest))
        return None


def many_flows(namespace: str, count: int, prefix: str = "f") -> tuple[list[str], str]:
    names = [f"{prefix}{i:02d}" for i in range(count)]
    return names, "\n---\n".join(inline_flow(namespace, n, f"flow {n}", body=f"return {i}")
                                  for i, n in enumerate(names))


# ----------------------------------------------------------------------------- 1. backend outage
def test_backend_outage_retries_then_stores_each_flow_once(make_operator: Callable[[str], ScopedOperator],
                                                           namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    outage = 30.0
    proxy = TcpProxy.for_url(s3_endpoint).start()
    check = S3Check(s3_endpoint, s3_bucket)
    try:
        op = make_operator(namespace)
        op.start()
        apply(s3_storage(namespace, s3_bucket, proxy.url))
        wait_ready(namespace, "store", kind="flowstorage")
        names, manifest = many_flows(namespace, 50)
        apply(manifest)
        t_apply = time.monotonic()
        # Cut as soon as storing is under way (the first flow Ready), so uploads are in flight.
        while time.monotonic() - t_apply < 20:
            items = list_flows(namespace)
            if any((o.get("status") or {}).get("location") for o in items.values()):
                break
            time.sleep(0.05)
        proxy.stop()
        t_cut = time.monotonic()
        stored_at_cut = sum(1 for o in list_flows(namespace).values() if (o.get("status") or {}).get("location"))
        say(f"outage: injected S3 outage (proxy {proxy.url} closed, live connections reset) "
            f"{t_cut - t_apply:.1f}s after applying 50 StoredFlows; {stored_at_cut}/50 stored at the cut")

        seen_unavailable: set[str] = set()
        bad: list[str] = []
        samples = 0
        while time.monotonic() - t_cut < outage:
            time.sleep(1.0)
            samples += 1
            for name, obj in list_flows(namespace).items():
                status = obj.get("status") or {}
                if status.get("location"):
                    continue
                ready, reconciling = condition(obj), condition(obj, "Reconciling")
                if ready.get("reason") == "BackendUnavailable":
                    if (ready.get("status") != "False" or reconciling.get("status") != "True"
                            or not reconciling.get("message", "").startswith("Retrying")
                            or "unreachable" not in ready.get("message", "")
                            or condition(obj, "Stalled")):
                        bad.append(f"{name}: {json.dumps(status.get('conditions'))}")
                    seen_unavailable.add(name)
                elif ready.get("reason") == "Progressing" and reconciling.get("status") == "True":
                    pass  # a retry in progress (Ready=Unknown)
                elif ready:
                    bad.append(f"{name}: unexpected {ready.get('status')}/{ready.get('reason')}: "
                               f"{ready.get('message')}")
        final = list_flows(namespace)
        unstored = sorted(n for n, o in final.items() if not (o.get("status") or {}).get("location"))
        last = {n: condition(final[n]).get("reason") for n in unstored}
        example = next((final[n] for n in unstored if last[n] == "BackendUnavailable"), None)
        say(f"outage: {samples} samples over {outage:.0f}s; {len(unstored)} flows not stored, each seen "
            f"BackendUnavailable: {len(seen_unavailable & set(unstored))}/{len(unstored)}; last reasons "
            f"{ {r: list(last.values()).count(r) for r in set(last.values())} }")
        if example is not None:
            say(f"outage: e.g. Ready: {condition(example)['message']!r}")
            say(f"outage: e.g. Reconciling: {condition(example, 'Reconciling')['message'][:90]!r}…")
        assert not bad, "\n".join(bad[:10])
        assert unstored, "the outage came too late: every flow was already stored"
        assert set(unstored) <= seen_unavailable, f"never seen BackendUnavailable: {set(unstored) - seen_unavailable}"
        assert op.alive(), op.logs()

        proxy.start()
        t_restore = time.monotonic()
        items = wait_all_ready(namespace, names, timeout=180)
        recovery = time.monotonic() - t_restore
        say(f"outage: S3 restored after {t_restore - t_cut:.1f}s; all 50 Ready {recovery:.1f}s later "
            f"({'> 60 s: the retry backoff is too long' if recovery > 60 else 'within 60 s'})")
        problems = [p for o in items.values() if (p := check.problem(o["status"]))]
        keys = check.keys()
        referenced = {o["status"]["location"] for o in items.values()}
        say(f"outage: {len(keys)} objects in S3, {len(referenced)} referenced, digest mismatches: {len(problems)}")
        assert not problems, problems
        assert set(keys) == referenced and len(keys) == 50, (
            f"stored twice or lost: {sorted(set(keys) - referenced)} / {sorted(referenced - set(keys))}")
        assert recovery <= 60, f"recovery took {recovery:.0f}s after the backend came back"
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- 2. SIGKILL
def test_sigkill_at_random_points_never_points_status_at_a_partial_object(
        make_operator: Callable[[str], ScopedOperator], namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    seed = int(os.environ.get("FLOWSTORE_FAULTS_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    say(f"sigkill: seed {seed} (FLOWSTORE_FAULTS_SEED={seed} replays the kill times)")
    check = S3Check(s3_endpoint, s3_bucket)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    names, manifest = many_flows(namespace, 20, prefix="k")
    apply(manifest)

    violations: list[str] = []
    observed: set[str] = set()
    stop_sampling = threading.Event()

    def sample() -> int:
        items = list_flows(namespace)
        for obj in items.values():
            status = obj.get("status") or {}
            if status.get("location"):
                observed.add(status["location"])
                if problem := check.problem(status):
                    violations.append(f"{obj['metadata']['name']}: {problem}")
        return sum(1 for o in items.values() if is_ready(o))

    def sampler() -> None:
        while not stop_sampling.is_set():
            try:
                sample()
            except AssertionError:  # kubectl hiccup: try again
                pass
            stop_sampling.wait(0.2)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    op = make_operator(namespace)
    values = {n: i for i, n in enumerate(names)}
    try:
        for i in range(10):
            op.start()
            # The clock starts when kopf delivers the first StoredFlow event (its watch is up and
            # passes start): kills then land among builds, uploads and status writes.
            deadline = time.monotonic() + 60  # a start on a busy machine: a wait, not the property tested
            while "the storedflows watch delivered its first object" not in op.log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline and op.alive(), op.logs()[-3000:]
                time.sleep(0.02)
            delay = rng.uniform(0.2, 2.0)
            time.sleep(delay)
            pid = op.pid
            op.stop(signal.SIGKILL)
            ready = sample()
            say(f"sigkill: #{i + 1} SIGKILL pid {pid} {delay:.2f}s after its watch delivered; {ready}/20 Ready, "
                f"{len(check.keys())} objects in S3")
            # Fresh work for the next run to be interrupted in: 5 flows change their source.
            changed = rng.sample(names, 5)
            values.update({n: 100 * (i + 1) + names.index(n) for n in changed})
            apply("\n---\n".join(inline_flow(namespace, n, f"flow {n}", body=f"return {values[n]}") for n in changed))
        op.start()
        t0 = time.monotonic()
        items = wait_all_ready(namespace, names, timeout=60)
        say(f"sigkill: final start: all 20 Ready after {time.monotonic() - t0:.1f}s")
    finally:
        stop_sampling.set()
        thread.join(timeout=10)
    problems = [f"{n}: {p}" for n, o in items.items() if (p := check.problem(o["status"]))]
    keys = check.keys()
    referenced = {o["status"]["location"] for o in items.values()}
    say(f"sigkill: {len(observed)} distinct locations observed in status, every one a complete object: "
        f"{not violations}; {len(keys)} objects in S3: {len(referenced)} referenced now, "
        f"{len((set(keys) - referenced) & observed)} superseded (Retain), "
        f"{len(set(keys) - observed)} never seen in any status (orphans of interrupted stores)")
    assert not violations, violations
    assert not problems, problems
    assert referenced <= set(keys)
    assert {n: client.load_flow(n, namespace).run() for n in names} == values, "a spec change was lost"


# ----------------------------------------------------------------------------- 3. API server / etcd restart
# ----------------------------------------------------------------------------- 2b. SIGKILL, every backend
class Held:
    """What one backend holds, read from its server: location -> sha256 of the bytes."""

    def __init__(self, name: str, read: Callable[[], dict[str, bytes]]) -> None:
        self.name, self._read = name, read

    def objects(self) -> dict[str, str]:
        return {key: sha256(data) for key, data in self._read().items()}


def test_sigkill_during_a_burst_stores_each_version_once_in_every_backend(
        make_operator: Callable[[str], ScopedOperator], namespace: str, tmp_path: Path, s3_bucket: str,
        s3_endpoint: str, gcs_endpoint: str, azure_connection_string: str) -> None:
    """The operator is SIGKILLed at random points while flows of Local, S3, GCS, Azure and
    Webhook storages are stored and changed. Afterwards every backend holds exactly one object per
    StoredFlow — the one its status names, with the recorded digest: no version stored twice,
    nothing left by an interrupted store (deletionPolicy Delete with a history of one revision and
    retention.minAge 0s deletes every earlier version, so any other object is a duplicate or an
    orphan)."""
    from azure.storage.blob import BlobServiceClient
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    from tests.helpers.manifests import flow_storage, manifests, secret, webhook_storage
    from tests.helpers.webhook_server import WebhookServer

    seed = int(os.environ.get("FLOWSTORE_FAULTS_SEED") or time.time_ns() % 2**32)
    rng = random.Random(seed)
    say(f"sigkill-backends: seed {seed} (FLOWSTORE_FAULTS_SEED={seed} replays the kill times)")
    per_backend, kills = 4, 6
    policy = {"deletionPolicy": "Delete", "storedAsScript": True, "revisionHistoryLimit": 1,
              "retention": {"minAge": "0s"}}
    local_dir = operator_local_dir(namespace)
    local_dir.mkdir(parents=True)
    gcs = gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                         client_options={"api_endpoint": gcs_endpoint})
    gcs_bucket = f"flows-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(gcs_bucket)
    azure = BlobServiceClient.from_connection_string(azure_connection_string)
    container = f"flows-{uuid.uuid4().hex[:12]}"
    azure.create_container(container)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    token = f"tok-{uuid.uuid4().hex}"
    with WebhookServer(token=token) as hook:
        storages = {
            "local": manifests(flow_storage(namespace, "local", "local", {"directory": str(local_dir)}, **policy)),
            "s3": s3_storage(namespace, s3_bucket, s3_endpoint, name="s3", **policy),
            "gcs": manifests(flow_storage(namespace, "gcs", "gcs", {"bucket": gcs_bucket, "endpointURL": gcs_endpoint},
                                          **policy)),
            "azure": manifests(secret(namespace, "azure-conn",
                                      {"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string}),
                               flow_storage(namespace, "azure", "azure",
                                            {"container": container, "credentialsSecretRef": {"name": "azure-conn"}},
                                            **policy)),
        }
        # a webhook storage holds one flow (the seed's rule): one storage per flow
        storages.update({f"hook{i}": webhook_storage(namespace, f"hook{i}", hook.url, token, delete=True, **policy)
                         for i in range(per_backend)})
        for docs in storages.values():
            apply(docs)
        flows = {f"{b}-{i}": b for b in ("local", "s3", "gcs", "azure") for i in range(per_backend)}
        flows.update({f"webhook-{i}": f"hook{i}" for i in range(per_backend)})
        values = {name: i for i, name in enumerate(flows)}

        def manifest(names: list[str]) -> str:
            return "\n---\n".join(inline_flow(namespace, n, f"flow {n}", body=f"return {values[n]}",
                                               storage=flows[n]) for n in names)

        def local_files() -> dict[str, bytes]:
            return {str(p): p.read_bytes() for p in local_dir.rglob("*") if p.is_file()}

        def s3_objects() -> dict[str, bytes]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
            return {o["Key"]: s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
                    for page in pages for o in page.get("Contents", [])}

        def gcs_objects() -> dict[str, bytes]:
            return {b.name: b.download_as_bytes() for b in gcs.list_blobs(gcs_bucket)}

        def azure_objects() -> dict[str, bytes]:
            client_ = azure.get_container_client(container)
            return {b.name: client_.download_blob(b.name).readall() for b in client_.list_blobs()}

        held = {"local": Held("local", local_files), "s3": Held("s3", s3_objects), "gcs": Held("gcs", gcs_objects),
                "azure": Held("azure", azure_objects), "webhook": Held("webhook", lambda: dict(hook.bodies))}
        apply(manifest(list(flows)))
        op = make_operator(namespace)
        for i in range(kills):
            op.start()
            deadline = time.monotonic() + 60  # a start on a busy machine: a wait, not the property tested
            while "the storedflows watch delivered its first object" not in op.log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline and op.alive(), op.logs()[-3000:]
                time.sleep(0.02)
            delay = rng.uniform(0.1, 2.5)
            time.sleep(delay)
            op.stop(signal.SIGKILL)
            counts = {b: len(h.objects()) for b, h in held.items()}
            say(f"sigkill-backends: #{i + 1} SIGKILL {delay:.2f}s after the watch delivered; objects held: {counts}")
            changed = rng.sample(sorted(flows), 6)  # new versions for the next run to be killed amid
            values.update({n: 1000 * (i + 1) + values[n] % 1000 for n in changed})
            apply(manifest(changed))
        op.start()
        t0 = time.monotonic()
        wait_all_ready(namespace, list(flows), timeout=120)
        # settled: earlier versions deleted (retired, then deleted a pass later), nothing under way
        deadline = time.monotonic() + 60
        while True:
            items = list_flows(namespace)
            if all(not (o.get("status") or {}).get("retired") and not (o.get("status") or {}).get("storing")
                   for o in items.values()):
                break
            assert time.monotonic() < deadline, {n: o.get("status", {}).get("retired") for n, o in items.items()}
            time.sleep(0.5)
        say(f"sigkill-backends: all {len(flows)} Ready and settled {time.monotonic() - t0:.1f}s after the last start")

        for backend, store in held.items():
            names = [n for n in flows if n.split("-")[0] == backend]
            statuses = {n: items[n]["status"] for n in names}
            objects = store.objects()
            if backend == "webhook":  # the service names objects by the ids it assigned
                expected = {s["storage"]["buildResponse"]["json"]["id"]: s["artifact"]["digest"]
                            for s in statuses.values()}
            else:
                expected = {s["location"]: s["artifact"]["digest"] for s in statuses.values()}
            say(f"sigkill-backends: {backend}: {len(objects)} objects for {len(names)} flows after {kills} SIGKILLs")
            assert objects == expected, (f"{backend}: what the backend holds differs from what status names "
                                         f"(one object per version, nothing else)")
        assert {n: client.load_flow(n, namespace).run() for n in flows if not n.startswith("webhook")} == \
            {n: v for n, v in values.items() if not n.startswith("webhook")}, "a spec change was lost"
    gcs.bucket(gcs_bucket).delete(force=True)
    azure.delete_container(container)




def _server_restart(server: str, make_operator: Callable[[str], ScopedOperator], namespace: str,
                    s3_bucket: str, s3_endpoint: str) -> None:
    op = make_operator(namespace)
    op.start()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    names, manifest = many_flows(namespace, 3, prefix="r")
    apply(manifest)
    wait_all_ready(namespace, names, timeout=30)
    before = get("storedflow", namespace, "r00")["status"]["location"]

    down = 10.0
    try:
        took = localcloud("stop", server)
        t_stop = time.monotonic()
        say(f"{server}: injected `localcloud stop {server}` (took {took:.1f}s); down for {down:.0f}s")
        writes_failed = writes = 0
        while time.monotonic() - t_stop < down:
            assert op.alive(), f"the operator died while {server} was down:\n{op.logs()[-3000:]}"
            attempt = kubectl("annotate", "storedflow", "r01", "-n", namespace, "--overwrite",
                              f"faults/probe={int(time.time())}", "--request-timeout=2s", check=False)
            writes_failed += attempt.returncode != 0
            writes += 1
            time.sleep(1.0)
        say(f"{server}: down: operator alive throughout; {writes_failed}/{writes} kubectl writes failed")
    finally:
        took = localcloud("start", server)
    t_up = time.monotonic()
    say(f"{server}: `localcloud start {server}` took {took:.1f}s")
    assert op.alive(), op.logs()[-3000:]

    # Right away: a spec change and a new flow (the API may need a moment to serve writes again).
    deadline = time.monotonic() + 30
    while True:
        done = kubectl("apply", "-f", "-", "--request-timeout=5s", check=False,
                       input=inline_flow(namespace, "r00", "flow r00", body="return 100")
                       + "\n---\n" + inline_flow(namespace, "rnew", "flow rnew", body="return 7"))
        if done.returncode == 0:
            break
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.5)
    t_applied = time.monotonic()
    changed = wait_for("storedflow", namespace, "r00",
                       lambda o: is_ready(o) and o["status"]["location"] != before, timeout=30,
                       what="to store the change made after the restart")
    wait_ready(namespace, "rnew", timeout=30)
    say(f"{server}: change and new flow applied {t_applied - t_up:.1f}s after start, both stored "
        f"{time.monotonic() - t_applied:.1f}s later (watches resumed); operator alive: {op.alive()}")
    assert client.load_flow("r00", namespace).run() == 100 and client.load_flow("rnew", namespace).run() == 7
    assert changed["status"]["observedGeneration"] == changed["metadata"]["generation"]
    assert op.alive() and op.starts == 1, op.logs()[-3000:]


def test_apiserver_restart_watches_resume(make_operator: Callable[[str], ScopedOperator], namespace: str,
                                          s3_bucket: str, s3_endpoint: str) -> None:
    _server_restart("kube-apiserver", make_operator, namespace, s3_bucket, s3_endpoint)


def test_etcd_restart_watches_resume(make_operator: Callable[[str], ScopedOperator], namespace: str,
                                     s3_bucket: str, s3_endpoint: str) -> None:
    _server_restart("etcd", make_operator, namespace, s3_bucket, s3_endpoint)


# ----------------------------------------------------------------------------- 4. concurrent edits
def test_twenty_quick_spec_edits_end_at_the_last(make_operator: Callable[[str], ScopedOperator], namespace: str,
                                                 s3_bucket: str, s3_endpoint: str) -> None:
    op = make_operator(namespace)
    op.start()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "edited", "edited", body="return 0"))
    rng = random.Random(20)
    errors: list[str] = []

    def edit() -> None:
        for v in range(1, 21):
            patch = json.dumps({"spec": {"source": {"inline": script("edited", v)}}})
            done = kubectl("patch", "storedflow", "edited", "-n", namespace, "--type=merge", "-p", patch, check=False)
            if done.returncode:
                errors.append(done.stderr)
            time.sleep(rng.uniform(0, 0.15))

    t0 = time.monotonic()
    editor = threading.Thread(target=edit)
    editor.start()
    statuses_seen = 0
    while editor.is_alive():  # the operator is storing while the edits land
        statuses_seen += bool((get("storedflow", namespace, "edited").get("status") or {}).get("location"))
        time.sleep(0.1)
    editor.join()
    t_edits = time.monotonic() - t0
    assert not errors, errors
    final = wait_for("storedflow", namespace, "edited", is_ready, timeout=60, what="to catch up with the last edit")
    status = final["status"]
    uploads = len(s3_keys(s3_endpoint, s3_bucket))
    say(f"edits: 20 spec patches in {t_edits:.1f}s while storing; caught up {time.monotonic() - t0 - t_edits:.1f}s "
        f"later at generation {final['metadata']['generation']} (observedGeneration {status['observedGeneration']}); "
        f"{uploads} uploads in all (edits landing during a store are taken up together by the next pass)")
    assert status["observedGeneration"] == final["metadata"]["generation"]
    assert status["artifact"]["sourceDigest"] == sha256(script("edited", 20).encode())
    assert condition(final)["status"] == "True" and not condition(final, "Reconciling")
    assert client.load_flow("edited", namespace).run() == 20
    assert op.alive()


# ----------------------------------------------------------------------------- 5. ConfigMap deleted
def test_deleted_configmap_keeps_last_good_flow(make_operator: Callable[[str], ScopedOperator], namespace: str,
                                                s3_bucket: str, s3_endpoint: str) -> None:
    op = make_operator(namespace)
    op.start()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    source = manifests(configmap(namespace, "flow-src", {"etl.py": script("etl", 5)}))
    apply(source)
    apply(manifests(stored_flow(namespace, "etl", "etl", {"configMapRef": {"name": "flow-src", "key": "etl.py"}})))
    good = wait_ready(namespace, "etl")["status"]
    keys = s3_keys(s3_endpoint, s3_bucket)

    kubectl("delete", "configmap", "flow-src", "-n", namespace)
    t0 = time.monotonic()
    gone = wait_reason(namespace, "etl", "SourceNotFound")
    ready, stalled = condition(gone), condition(gone, "Stalled")
    say(f"configmap: injected deletion of ConfigMap flow-src; {time.monotonic() - t0:.1f}s later "
        f"Ready=False SourceNotFound: {ready['message']!r}; Stalled={stalled.get('status')}")
    assert "flow-src" in ready["message"] and stalled.get("status") == "True"
    assert not condition(gone, "Reconciling")
    assert gone["status"]["location"] == good["location"] and gone["status"]["artifact"] == good["artifact"]
    assert client.load_flow("etl", namespace).run() == 5
    say("configmap: last good location and artifact kept; load_flow still loads it (run() == 5)")

    apply(source)
    t0 = time.monotonic()
    again = wait_ready(namespace, "etl")["status"]
    say(f"configmap: re-created with the same content: Ready again after {time.monotonic() - t0:.1f}s, "
        f"location unchanged: {again['location'] == good['location']}, "
        f"S3 objects {len(keys)} -> {len(s3_keys(s3_endpoint, s3_bucket))}")
    assert again["location"] == good["location"] and again["artifact"] == good["artifact"]
    assert s3_keys(s3_endpoint, s3_bucket) == keys
    assert op.alive()
