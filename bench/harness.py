"""What every benchmark shares: the local cloud it runs on, brought up (or reused) and checked
with a clear message, the CRDs applied, the machine it ran on, statistics, and the operator
process, WATCH and namespace helpers of the operator benchmarks.

    with harness.cloud(["kube", "s3"], crds=True):   # exports KUBECONFIG, FLOWSTORE_S3_ENDPOINT, ...
        ...                                          # services this bench started stop at the end

A private cloud (state_dir=...) keeps concurrent test sessions' operators off the bench's objects.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "lib"))
from localcloud import table  # the local cloud's table of services (stdlib only)

ROOT = Path(__file__).resolve().parent.parent
LOCALCLOUD = ROOT / "scripts" / "localcloud"
RESULTS = ROOT / "bench" / "results"
GROUP, VERSION = "flowstore.dev", "v1alpha1"
SF, FS = "storedflows", "flowstorages"
CRDS = ("crd/flowstorages.flowstore.dev", "crd/storedflows.flowstore.dev")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BenchError(SystemExit):
    """A bench cannot run here; the message says why and what to do (exit status 1, no traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench: {message}")


# ------------------------------------------------------------------------------ prerequisites
def need_modules(*modules: str) -> None:
    """The Python packages a bench imports, or a clear message: benches run in the project's venv."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        script = Path(sys.argv[0]).resolve()
        shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
        raise BenchError(f"{', '.join(missing)} not importable by {sys.executable}; run the bench with the "
                         f"project's environment: `make bootstrap`, then `.venv/bin/python {shown} ...`")


# ------------------------------------------------------------------------------ local cloud
class LocalCloud:
    """`scripts/localcloud` for one state directory (None: the environment's, else <repo>/.localcloud)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir.resolve() if state_dir else None
        self.started: list[str] = []  # services up() started (not reused)
        self.env = {**os.environ, **({"FLOWSTORE_LOCALCLOUD_DIR": str(self.state_dir)} if self.state_dir else {})}

    def run(self, *args: str, capture: bool = False) -> str:
        done = subprocess.run([sys.executable, str(LOCALCLOUD), *args], cwd=ROOT, env=self.env, text=True,
                              capture_output=capture, check=False)
        if done.returncode != 0:
            where = f" (FLOWSTORE_LOCALCLOUD_DIR={self.state_dir})" if self.state_dir else ""
            detail = (done.stderr or "").strip()[-2000:] if capture else "its messages are above"
            raise BenchError(f"`scripts/localcloud {' '.join(args)}`{where} failed (exit {done.returncode}); "
                             f"{detail}")
        return done.stdout if capture else ""

    def servers_up(self) -> dict[str, bool]:
        up: dict[str, bool] = {}
        for line in self.run("status", capture=True).splitlines():
            parts = line.split()
            if parts:
                up[parts[0]] = parts[-1] == "up"
        return up

    def services_up(self) -> set[str]:
        """Services whose servers all run (`env` exports exactly these), by the local cloud's table."""
        up = self.servers_up()
        return {svc.name for svc in table.SERVICES if all(up.get(server.name) for server in svc.servers)}

    def up(self, services: list[str]) -> list[str]:
        """Bring up (or reuse) services; return those this call started (to stop them at the end)."""
        before = self.services_up()
        self.run("up", *services)
        self.started += [svc for svc in services if svc not in before and svc not in self.started]
        return [svc for svc in services if svc not in before]

    def exports(self) -> dict[str, str]:
        exported: dict[str, str] = {}
        for line in self.run("env", capture=True).splitlines():
            if line.startswith("export "):
                name, _, value = line[len("export "):].partition("=")
                exported[name] = shlex.split(value)[0] if value else ""
        return exported

    def down(self, services: list[str]) -> None:
        self.run("down", *services)


def apply_crds() -> None:
    """The project's CRDs applied and Established (objects of these kinds 404 until then)."""
    for argv in (["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds")],
                 ["kubectl", "wait", "--for=condition=Established", "--timeout=60s", *CRDS]):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"`{shlex.join(argv)}` failed: {done.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def cloud(services: list[str], *, state_dir: Path | None = None, crds: bool = False,
          keep: bool = False) -> Iterator[LocalCloud]:
    """The local cloud with `services` up (reused when running), its exports in os.environ (the
    bench's clients and its operator read them), the CRDs applied if asked; afterwards the services
    this bench started (`.started`) are stopped again, unless keep."""
    lc = LocalCloud(state_dir)
    if state_dir:
        os.environ["FLOWSTORE_LOCALCLOUD_DIR"] = str(lc.state_dir)
    started = lc.up(services)
    where = lc.state_dir or os.environ.get("FLOWSTORE_LOCALCLOUD_DIR") or "the default dir"
    log(f"local cloud up in {where}: {' '.join(services)} (started by the bench: {' '.join(started) or 'nothing'})")
    os.environ.update(lc.exports())
    try:
        if crds:
            apply_crds()
        yield lc
    finally:
        if started and not keep:
            log(f"stopping the local cloud services this bench started: {' '.join(started)}")
            lc.down(started)


# ------------------------------------------------------------------------------ machine
def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip() or str(os.cpu_count())
    return {
        "nproc": int(nproc), "cpu": model, "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(), "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def machine_line(m: dict[str, Any]) -> str:
    return (f"machine: nproc={m['nproc']} cpu={m['cpu']!r} ram={m['ram_gib']} GiB python={m['python']} "
            f"loadavg={' '.join(m['loadavg_at_start'])}")


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of these distributions ("?" when absent)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "?"
    return out


# ------------------------------------------------------------------------------ stats
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "median": statistics.median(values), "p95": pct(values, 95),
            "min": min(values), "max": max(values), "mean": statistics.fmean(values)}



def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"



# ------------------------------------------------------------------------------ kube helpers
def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    conds = status.get("conditions") or []
    r = next((c for c in conds if c.get("type") == "Ready"), {})
    return r.get("status") == "True" and status.get("observedGeneration") == obj["metadata"].get("generation")


def reconciling(obj: dict[str, Any]) -> bool:
    conds = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Reconciling" and c.get("status") == "True" for c in conds)


class Watcher:
    """One WATCH on a plural in a namespace, in a thread; records per object the first Ready
    time, every resourceVersion change, and a short timeline. The watch is long (1 h) so that
    its re-LISTs do not show up in the apiserver request counters the restart figure reads."""

    def __init__(self, custom: Any, namespace: str, plural: str) -> None:
        self.custom, self.namespace, self.plural = custom, namespace, plural
        self.cond = threading.Condition()
        self.ready_at: dict[str, float] = {}
        self.rv: dict[str, str] = {}
        self.changes: collections.Counter[str] = collections.Counter()  # rv changes after first sight
        self.timeline: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
        self.last_change = time.monotonic()
        self.stopping = False
        self.synced = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{plural}")
        self.thread.start()

    def _observe(self, etype: str, obj: dict[str, Any], now: float) -> None:
        name, rv = obj["metadata"]["name"], obj["metadata"]["resourceVersion"]
        with self.cond:
            old = self.rv.get(name)
            if etype == "DELETED":
                self.rv.pop(name, None)
            else:
                self.rv[name] = rv
            if old is not None and old != rv:
                self.changes[name] += 1
                self.last_change = now
            elif old is None and etype != "LIST":
                self.last_change = now
            tl = self.timeline[name]
            if etype == "ADDED":
                tl.append((now, "added"))
            elif etype == "MODIFIED":
                tl.append((now, "reconciling" if reconciling(obj) else ("ready" if ready(obj) else "modified")))
            if etype != "DELETED" and name not in self.ready_at and ready(obj):
                self.ready_at[name] = now
            self.cond.notify_all()

    def _run(self) -> None:
        from kubernetes import watch

        while not self.stopping:
            try:
                lst = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural)
                now = time.monotonic()
                for item in lst.get("items") or []:
                    self._observe("LIST", item, now)
                self.synced.set()
                w = watch.Watch()
                for ev in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                   self.plural, resource_version=lst["metadata"]["resourceVersion"],
                                   timeout_seconds=3600, allow_watch_bookmarks=True):
                    if self.stopping:
                        break
                    if ev["type"] in ("BOOKMARK", "ERROR"):
                        if ev["type"] == "ERROR":
                            break
                        continue
                    obj = ev["object"] if isinstance(ev["object"], dict) else ev["raw_object"]
                    self._observe(ev["type"], obj, time.monotonic())
            except Exception as exc:
                if not self.stopping:
                    log(f"watch {self.plural} restarting: {type(exc).__name__}: {exc}")
                    time.sleep(0.2)

    def wait_ready(self, names: list[str], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: all(n in self.ready_at for n in names), timeout)

    def wait_quiet(self, seconds: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_change >= seconds:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self.stopping = True


# ------------------------------------------------------------------------------ operator
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, namespace: str, tag: str) -> None:
        self.namespace, self.tag = namespace, tag
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.samples: list[tuple[float, int, int]] = []  # (t, own rss, children rss)
        self._sampling = False
        self.port = 0

    def start(self, *extra: str) -> float:
        """Start `flowstore operator -n NAMESPACE` (plus `extra` arguments); returns when it did."""
        import psutil

        self.starts += 1
        self.port = free_port()
        RESULTS.mkdir(parents=True, exist_ok=True)
        logf = open(RESULTS / f"operator-{self.tag}-{self.starts}.log", "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flowstore.cli", "operator", "-n", self.namespace,
             "--liveness", f"http://127.0.0.1:{self.port}/healthz", *extra],
            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ), cwd=ROOT,
        )
        self._ps = psutil.Process(self.proc.pid)
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()
        return t0

    def wait_live(self, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc and self.proc.poll() is None, f"operator exited; see {RESULTS}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic()
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("operator liveness endpoint never answered")

    def _sample(self) -> None:
        import psutil

        ps = self._ps
        while self._sampling:
            try:
                own = ps.memory_info().rss
                kids = 0
                for c in ps.children(recursive=True):
                    try:
                        kids += c.memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append((time.monotonic(), own, kids))
            except psutil.Error:
                return
            time.sleep(0.1)

    def peak(self, since: float, until: float | None = None) -> tuple[int, int]:
        until = until or time.monotonic()
        window = [s for s in self.samples if since <= s[0] <= until]
        return (max((s[1] for s in window), default=0), max((s[2] for s in window), default=0))

    def stop(self, sig: int = signal.SIGTERM) -> float:
        """Signal and wait; returns seconds until the process exited."""
        self._sampling = False
        if not self.proc or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - t0


def other_operators(mine: list[int]) -> list[int]:
    """Other `flowstore operator` processes (a cluster-wide one would reconcile our namespace too)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.pid not in mine and "flowstore.cli" in cmd and "operator" in cmd:
            found.append(p.pid)
    return found



# ------------------------------------------------------------------------------ apiserver metrics
class ApiMetrics:
    """apiserver_request_total for group flowstore.dev (and core events), summed by (verb, resource)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        cfg = api.configuration
        self.url = cfg.host + "/metrics"
        token = (cfg.api_key or {}).get("BearerToken") or (cfg.api_key or {}).get("authorization")
        self.headers = {"Authorization": token} if token else {}

    def read(self) -> collections.Counter[tuple[str, str]]:
        r = self.api.call_api("GET", self.url, header_params=self.headers)
        data = r.read() if hasattr(r, "read") else r.data
        out: collections.Counter[tuple[str, str]] = collections.Counter()
        for line in data.splitlines():
            if not line.startswith(b"apiserver_request_total{"):
                continue
            if b'group="flowstore.dev"' not in line and b'resource="events"' not in line:
                continue
            labels_part, _, value = line.rpartition(b" ")
            labels = dict(kv.split("=", 1) for kv in labels_part.decode()[len("apiserver_request_total{"):-1]
                          .replace('"', "").split(","))
            if labels.get("verb") == "WATCH":
                continue
            res = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
            out[(labels.get("verb", ""), res)] += int(float(value))
        return out



# ------------------------------------------------------------------------------ a namespace with S3 FlowStorages
def flow_script(flow_name: str) -> str:
    return f"from flowstore.flow import Flow\n\ndef main():\n    return 42\n\nflow = Flow({flow_name!r}, main)\n"


def stored_flow(namespace: str, name: str, storage: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StoredFlow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageRef": {"name": storage}, "flowName": name, "source": {"inline": flow_script(name)}}}


class Env:
    """Kubernetes + S3 clients and one namespace with its FlowStorages."""

    def __init__(self, prefix: str) -> None:
        import boto3
        from kubernetes import client, config

        config.load_kube_config(os.environ["KUBECONFIG"])
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = 32
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.metrics = ApiMetrics(self.api)
        self.endpoint = os.environ["FLOWSTORE_S3_ENDPOINT"]
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.bucket = f"bench-{uuid.uuid4().hex[:12]}"
        from kubernetes import client as c

        self.core.create_namespace(c.V1Namespace(metadata=c.V1ObjectMeta(name=self.namespace)))
        self.s3.create_bucket(Bucket=self.bucket)
        self.core.create_namespaced_secret(self.namespace, c.V1Secret(
            metadata=c.V1ObjectMeta(name="creds", labels={"flowstore.dev/allow": "true"}),
            string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}))

    def storage(self, name: str, *, script: bool, prefix: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlowStorage",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"s3": {"bucket": self.bucket, "endpointURL": self.endpoint, "region": "us-east-1",
                                "keyPrefix": prefix, "credentialsSecretRef": {"name": "creds"}},
                         "storedAsScript": script}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, FS, body)

    def create_flow(self, name: str, storage: str) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, SF,
                                                    stored_flow(self.namespace, name, storage))

    def list(self, plural: str) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)["items"])

    def s3_count(self) -> int:
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            n += page.get("KeyCount", len(page.get("Contents", [])))
        return n

    def cleanup(self, timeout: float = 120.0) -> None:
        """Delete the objects while the operator still runs (it releases the finalizers), so no
        StoredFlow with a finalizer lingers for later cluster-wide operators; then the namespace."""
        for plural in (SF, FS):
            try:
                self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)
            except Exception as exc:
                log(f"cleanup {plural}: {exc}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.list(SF) and not self.list(FS):
                    break
            except Exception:
                break
            time.sleep(0.5)
        else:
            log(f"cleanup: objects still present in {self.namespace} after {timeout:.0f}s")

    def delete_namespace(self) -> None:
        try:
            self.core.delete_namespace(self.namespace)
        except Exception as exc:
            log(f"delete namespace {self.namespace}: {exc}")
