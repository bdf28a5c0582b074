#!/usr/bin/env python3
"""Load benchmark: 2,000 StoredFlows across 20 namespaces, then a quiet steady state.

    python3 bench/load_bench.py [--quick] [--namespaces 20] [--flows 100] [--steady 60]

One cluster-wide `flowstore operator` on a private local cloud (kube + S3, started and stopped
by the bench). Each namespace gets one S3 FlowStorage (script mode, interval 10m) and
`--flows` inline StoredFlows, all created at once from client threads. Figures:

  1. burst: first create -> all Ready (cluster-wide WATCH), operator peak RSS (psutil),
     the operator's apiserver requests per second (apiserver_request_total deltas minus the
     bench's own, counted call by call) and its S3 requests (a counting proxy in front of S3);
  2. steady state: once nothing has changed for a while, a `--steady` second window in which
     the operator must make no apiserver writes, no S3 requests, no uploads.

See bench/README.md ("Load benchmark"). Results: a table + bench/results/load-latest.json.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # the benches' shared harness
    FS,
    GROUP,
    RESULTS,
    ROOT,
    SF,
    VERSION,
    cloud,
    flow_script,
    fmt_s,
    free_port,
    log,
    machine,
    machine_line,
    need_modules,
    other_operators,
    ready,
    summary,
    versions,
)

WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY", "CREATE", "UPDATE"}
CORE_RESOURCES = {"configmaps", "secrets", "events"}
Counts = collections.Counter  # (verb, resource[/subresource]) -> requests


# ------------------------------------------------------------------------------ S3 counting proxy
class CountingProxy:
    """A small HTTP reverse proxy in front of the S3 server: the FlowStorages' endpointURL points
    here, so every S3 request the operator makes is counted (by method). Moto has no metrics."""

    def __init__(self, upstream: str) -> None:
        u = urllib.parse.urlsplit(upstream)
        self.host, self.port_up = u.hostname or "127.0.0.1", u.port or 80
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.local = threading.local()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _any(self) -> None:
                with proxy.lock:
                    proxy.counts[self.command] += 1
                body = self._body()
                hop = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                for attempt in (0, 1):
                    conn = getattr(proxy.local, "conn", None)
                    if conn is None:
                        conn = proxy.local.conn = http.client.HTTPConnection(proxy.host, proxy.port_up, timeout=60)
                    try:
                        conn.request(self.command, self.path, body, headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        proxy.local.conn = None
                        if attempt:
                            self.send_error(502)
                            return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in hop:
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="s3-proxy").start()

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def stop(self) -> None:
        self.server.shutdown()


# ------------------------------------------------------------------------------ apiserver metrics
class ApiMetrics:
    """apiserver_request_total, non-WATCH, for group flowstore.dev and core configmaps/secrets/
    events, summed by (verb, resource[/subresource]). The counter has no user label, so the
    bench counts its own calls and subtracts them (see bench/README.md)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.url = api.configuration.host + "/metrics"
        keys = api.configuration.api_key or {}
        token = keys.get("BearerToken") or keys.get("authorization")
        self.headers = {"Authorization": token} if token else {}

    def read(self) -> Counts[tuple[str, str]]:
        r = self.api.rest_client.pool_manager.request("GET", self.url, headers=self.headers, timeout=30)
        if r.status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {r.status}: {r.data[:200]!r}")
        out: Counts[tuple[str, str]] = collections.Counter()
        for raw in r.data.splitlines():
            if not raw.startswith(b"apiserver_request_total{"):
                continue
            labels_part, _, value = raw.rpartition(b" ")
            labels = dict(kv.split("=", 1) for kv in labels_part.decode()[len("apiserver_request_total{"):-1]
                          .replace('"', "").split(","))
            group, resource = labels.get("group", ""), labels.get("resource", "")
            if labels.get("verb") == "WATCH":
                continue
            if group != GROUP and not (group == "" and resource in CORE_RESOURCES):
                continue
            res = resource + ("/" + labels["subresource"] if labels.get("subresource") else "")
            out[(labels.get("verb", ""), res)] += int(float(value))
        return out


def diff(after: Counts[Any], before: Counts[Any], minus: Counts[Any] | None = None) -> dict[str, int]:
    minus = minus or collections.Counter()
    out = {}
    for key in sorted(set(after) | set(before)):
        d = after[key] - before[key] - minus[key]
        if d:
            out[" ".join(key) if isinstance(key, tuple) else str(key)] = d
    return out


def writes(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if k.split()[0] in WRITE_VERBS}


def operator_metrics(port: int) -> dict[str, float]:
    """flowstore_* samples of the operator (name{labels} -> value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("flowstore_") and not line.startswith("flowstore_reconcile_duration"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric_sum(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k == prefix or k.startswith(prefix + "{"))


# ------------------------------------------------------------------------------ cluster-wide watch
class ClusterWatcher:
    """One cluster-wide WATCH on a plural (thread): first Ready time and resourceVersion changes
    per (namespace, name). Counts its own LISTs (re-lists after a watch error) so that they can
    be subtracted from the apiserver counters."""

    def __init__(self, custom: Any, plural: str) -> None:
        self.custom, self.plural = custom, plural
        self.cond = threading.Condition()
        self.ready_at: dict[tuple[str, str], float] = {}
        self.rv: dict[tuple[str, str], str] = {}
        self.changes = 0
        self.last_change = time.monotonic()
        self.lists = 0
        self.stopping = False
        self.synced = threading.Event()
        threading.Thread(target=self._run, daemon=True, name=f"watch-{plural}").start()

    def _observe(self, etype: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        key, rv = (meta["namespace"], meta["name"]), meta["resourceVersion"]
        with self.cond:
            old = self.rv.get(key)
            if etype == "DELETED":
                self.rv.pop(key, None)
            else:
                self.rv[key] = rv
            if old != rv and etype != "LIST":
                self.changes += 1
                self.last_change = now
            if etype != "DELETED" and key not in self.ready_at and ready(obj):
                self.ready_at[key] = now
            self.cond.notify_all()

    def _run(self) -> None:
        from kubernetes import watch

        while not self.stopping:
            try:
                self.lists += 1
                lst = self.custom.list_cluster_custom_object(GROUP, VERSION, self.plural)
                now = time.monotonic()
                for item in lst.get("items") or []:
                    self._observe("LIST", item, now)
                self.synced.set()
                w = watch.Watch()
                for ev in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, self.plural,
                                   resource_version=lst["metadata"]["resourceVersion"],
                                   timeout_seconds=3600, allow_watch_bookmarks=True):
                    if self.stopping:
                        break
                    if ev["type"] == "ERROR":
                        break
                    if ev["type"] == "BOOKMARK":
                        continue
                    obj = ev["object"] if isinstance(ev["object"], dict) else ev["raw_object"]
                    self._observe(ev["type"], obj, time.monotonic())
            except Exception as exc:
                if not self.stopping:
                    log(f"watch {self.plural} restarting: {type(exc).__name__}: {exc}")
                    time.sleep(0.2)

    def wait_ready(self, keys: list[tuple[str, str]], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: all(k in self.ready_at for k in keys), timeout)

    def not_ready(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        with self.cond:
            return [k for k in keys if k not in self.ready_at]

    def stop(self) -> None:
        self.stopping = True


# ------------------------------------------------------------------------------ operator
class Operator:
    """`flowstore operator` cluster-wide, with its Prometheus metrics; RSS sampled every 100 ms."""

    def __init__(self, extra: list[str], *, traced: bool = False, log_name: str = "operator-load.log") -> None:
        import psutil

        self.metrics_port = free_port()
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.log_path = RESULTS / log_name
        self.snapshot_path = RESULTS / "operator-load.tracemalloc"
        self.snapshot_path.unlink(missing_ok=True)
        self.snapshot_path.with_suffix(".done").unlink(missing_ok=True)
        python = [sys.executable, "-c", TRACED_OPERATOR, str(self.snapshot_path)] if traced else [
            sys.executable, "-m", "flowstore.cli"]
        self.proc = subprocess.Popen(
            [*python, "operator", "--metrics-port", str(self.metrics_port),
             "--metrics-address", "127.0.0.1", *extra],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, env=dict(os.environ), cwd=ROOT,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.samples: list[tuple[float, int, int]] = []
        self.sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        while self.sampling:
            try:
                own = self.ps.memory_info().rss
                kids = 0
                for c in self.ps.children(recursive=True):
                    try:
                        kids += c.memory_info().rss
                    except psutil.Error:
                        pass
                self.samples.append((time.monotonic(), own, kids))
            except psutil.Error:
                return
            time.sleep(0.1)

    def wait_metrics(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"operator exited; see {self.log_path}"
            try:
                operator_metrics(self.metrics_port)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("operator metrics endpoint never answered")

    def peak(self, since: float, until: float | None = None) -> tuple[float, float]:
        until = until or time.monotonic()
        window = [s for s in self.samples if since <= s[0] <= until]
        return (max((s[1] for s in window), default=0) / 2**20, max((s[2] for s in window), default=0) / 2**20)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def memory_breakdown(self, objects: int, timeout: float = 300) -> dict[str, Any]:
        """Where the operator's Python memory is (tracemalloc, --tracemalloc): it dumps a snapshot on
        SIGUSR2; grouped by the allocating source file and by line, with bytes per object."""
        import tracemalloc

        self.proc.send_signal(signal.SIGUSR2)
        done = self.snapshot_path.with_suffix(".done")
        deadline = time.monotonic() + timeout
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        snap = tracemalloc.Snapshot.load(str(self.snapshot_path))
        total = sum(s.size for s in snap.statistics("filename"))

        def rows(key: str, n: int) -> list[dict[str, Any]]:
            out = []
            for stat in snap.statistics(key)[:n]:
                frame = stat.traceback[0]
                where = _short(frame.filename) + (f":{frame.lineno}" if key == "lineno" else "")
                out.append({"where": where, "mib": stat.size / 2**20, "bytes_per_object": stat.size / max(objects, 1),
                            "blocks": stat.count})
            return out

        return {"objects": objects, "traced_mib": total / 2**20, "bytes_per_object": total / max(objects, 1),
                "by_file": rows("filename", 15), "by_line": rows("lineno", 20)}

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def kill(self) -> None:
        """SIGKILL, as the kernel's OOM killer or a node loss would: no cleanup, no graceful stop."""
        self.proc.kill()
        self.proc.wait()
        self.sampling = False

    def stop(self) -> float:
        self.sampling = False
        if self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - t0


#: the operator under tracemalloc (--tracemalloc): argv[1] is where SIGUSR2 dumps a snapshot
TRACED_OPERATOR = """
import signal, sys, tracemalloc
from pathlib import Path
out = Path(sys.argv.pop(1))
import os
tracemalloc.start(int(os.environ.get("FLOWSTORE_TRACEMALLOC_FRAMES", "1")))
def dump(*_):
    tracemalloc.take_snapshot().dump(str(out))
    out.with_suffix('.done').write_text('')
signal.signal(signal.SIGUSR2, dump)
from flowstore.cli import main
sys.argv[0] = 'flowstore'
sys.exit(main())
"""


def _short(path: str) -> str:
    """A source file's path from its package on (site-packages/…, flowstore/…)."""
    for marker in ("site-packages/", "/operator/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


class Profiler:
    def __init__(self, pid: int, name: str, enabled: bool, gil: bool = False) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = RESULTS / f"profile-load-{name}.txt"
        if enabled or gil:
            # --gil: only the thread holding the GIL, i.e. the Python work (not threads waiting on sockets)
            self.proc = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-o", str(self.path), "--format",
                                          "raw", "-r", "50", "--nonblocking", "--threads", *(["--gil"] if gil else [])],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------------------ the bench
class Cluster:
    def __init__(self) -> None:
        import boto3
        from kubernetes import client, config

        config.load_kube_config(os.environ["KUBECONFIG"])
        cfg = client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = 64
        self.api = client.ApiClient(cfg)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.metrics = ApiMetrics(self.api)
        self.s3_endpoint = os.environ["FLOWSTORE_S3_ENDPOINT"]
        self.s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106
        self.bench_calls: Counts[tuple[str, str]] = collections.Counter()
        self.calls_lock = threading.Lock()

    def create(self, namespace: str, plural: str, body: dict[str, Any]) -> None:
        with self.calls_lock:
            self.bench_calls[("POST", plural)] += 1
        for attempt in range(5):
            try:
                self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
                return
            except Exception as exc:
                if getattr(exc, "status", None) == 409 or attempt == 4:
                    raise
                with self.calls_lock:
                    self.bench_calls[("POST", plural)] += 1
                time.sleep(0.2 * (attempt + 1))

    def s3_count(self, bucket: str) -> int:
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            n += page.get("KeyCount", len(page.get("Contents", [])))
        return n


def stored_once(c: Cluster, namespaces: list[str], buckets: dict[str, str], n_flows: int) -> dict[str, Any]:
    """After a SIGKILL mid-burst: every flow's status names exactly one object and the buckets hold
    exactly those (none stored twice, none lost). Read after the steady window: its LISTs are the
    bench's own."""
    named: set[tuple[str, str]] = set()
    keys: set[tuple[str, str]] = set()
    for ns in namespaces:
        for sf in c.custom.list_namespaced_custom_object(GROUP, VERSION, ns, SF)["items"]:
            location = (sf.get("status") or {}).get("location")
            if location:
                named.add((ns, location))
        for page in c.s3.get_paginator("list_objects_v2").paginate(Bucket=buckets[ns]):
            keys.update((ns, o["Key"]) for o in page.get("Contents", []))
    return {"flows": len(namespaces) * n_flows, "locations_in_status": len(named), "objects_in_buckets": len(keys),
            "stored_twice_or_unnamed": len(keys - named), "lost": len(named - keys),
            "ok": len(named) == len(keys) == len(namespaces) * n_flows and named == keys}


def storage_body(namespace: str, bucket: str, endpoint: str, interval: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FlowStorage",
            "metadata": {"name": "store", "namespace": namespace},
            "spec": {"s3": {"bucket": bucket, "endpointURL": endpoint, "region": "us-east-1",
                            "keyPrefix": "load/", "credentialsSecretRef": {"name": "creds"}},
                     "storedAsScript": True, "interval": interval}}


def flow_body(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "StoredFlow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageRef": {"name": "store"}, "flowName": name, "source": {"inline": flow_script(name)}}}


def wait_settled(c: Cluster, watchers: list[ClusterWatcher], op: Operator, quiet: float,
                 timeout: float) -> tuple[float, bool]:
    """Until no watched object, no apiserver counter (our groups) and no operator metric changed
    for `quiet` seconds. Returns (time of the last change, settled)."""
    deadline = time.monotonic() + timeout
    last_t, last = time.monotonic(), (c.metrics.read(), operator_metrics(op.metrics_port))
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = time.monotonic()
        cur = (c.metrics.read(), operator_metrics(op.metrics_port))
        if cur != last:
            last_t, last = now, cur
        last_t = max([last_t, *(w.last_change for w in watchers)])
        if now - last_t >= quiet:
            return last_t, True
    return last_t, False


def run(args: argparse.Namespace, res: dict[str, Any], cleanup: bool) -> bool:
    n_ns, n_flows = args.namespaces, args.flows
    c = Cluster()
    proxy = None if args.no_proxy else CountingProxy(c.s3_endpoint)
    s3_url = proxy.url if proxy else c.s3_endpoint
    run_id = uuid.uuid4().hex[:6]
    namespaces = [f"load-{run_id}-{i:02d}" for i in range(n_ns)]
    buckets = {ns: f"load-{run_id}-{i:02d}" for i, ns in enumerate(namespaces)}
    from kubernetes import client as k

    sfw, fsw = ClusterWatcher(c.custom, SF), ClusterWatcher(c.custom, FS)
    sfw.synced.wait(30)
    fsw.synced.wait(30)
    op = Operator(args.operator_arg or [], traced=args.tracemalloc)
    res["operator_args"] = args.operator_arg or []
    try:
        op.wait_metrics(240 if args.tracemalloc else 60)  # imports under tracemalloc are slow
        time.sleep(1)
        res["rss_idle_empty_mib"] = op.peak(time.monotonic() - 0.5)[0]

        # ---- setup (not measured): namespaces, buckets, Secrets, FlowStorages, all Ready
        log(f"setup: {n_ns} namespaces with a bucket, a Secret and an S3 FlowStorage (interval {args.interval})")
        for ns in namespaces:
            c.core.create_namespace(k.V1Namespace(metadata=k.V1ObjectMeta(name=ns)))
            c.s3.create_bucket(Bucket=buckets[ns])
            c.core.create_namespaced_secret(ns, k.V1Secret(
                metadata=k.V1ObjectMeta(name="creds", labels={"flowstore.dev/allow": "true"}),
                string_data={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}))
            c.create(ns, FS, storage_body(ns, buckets[ns], s3_url, args.interval))
        fs_keys = [(ns, "store") for ns in namespaces]
        if not fsw.wait_ready(fs_keys, 120):
            raise TimeoutError(f"FlowStorages not Ready: {fsw.not_ready(fs_keys)}")
        wait_settled(c, [sfw, fsw], op, 2.0, 60)

        # ---- 1. burst
        keys = [(ns, f"f-{i:04d}") for i in range(n_flows) for ns in namespaces]  # namespaces interleaved
        log(f"burst: {len(keys)} StoredFlows from {args.threads} threads")
        created: dict[tuple[str, str], float] = {}
        calls0 = collections.Counter(c.bench_calls)
        lists0 = (sfw.lists, fsw.lists)
        s3_0 = proxy.snapshot() if proxy else collections.Counter()
        om0 = operator_metrics(op.metrics_port)
        m0 = c.metrics.read()
        cpu0 = op.cpu_seconds()
        prof = Profiler(op.proc.pid, "burst", args.profile, args.profile_gil)

        def create(key: tuple[str, str]) -> None:
            c.create(key[0], SF, flow_body(*key))
            created[key] = time.monotonic()

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(create, keys))
        t_created = time.monotonic()
        m_created = c.metrics.read()  # every client's writes while the bench was creating
        log(f"burst: created in {t_created - t0:.1f} s; waiting for all Ready")
        progress_t, progress_n = t_created, -1
        killed: Operator | None = None
        cpu_killed, uploads_killed, logged = 0.0, 0.0, time.monotonic()
        while not sfw.wait_ready(keys, 1 if args.kill_after and killed is None else 10):
            missing = sfw.not_ready(keys)
            if args.kill_after and killed is None and len(keys) - len(missing) >= args.kill_after:
                # crash consistency at scale: SIGKILL mid-burst, then a new operator finishes the job
                stored = "flowstore_artifacts_stored_total"
                uploads_killed = metric_sum(operator_metrics(op.metrics_port), stored) - metric_sum(om0, stored)
                killed, t_kill, cpu_killed = op, time.monotonic(), op.cpu_seconds() - cpu0
                op.kill()
                log(f"burst: SIGKILL of the operator with {len(keys) - len(missing)} Ready; starting a new one")
                op = Operator(args.operator_arg or [], traced=args.tracemalloc, log_name="operator-load-2.log")
                op.wait_metrics()
                cpu0, om0 = 0.0, operator_metrics(op.metrics_port)
                res["kill"] = {"ready_when_killed": len(keys) - len(missing), "at_s": t_kill - t0,
                               "restart_to_metrics_s": time.monotonic() - t_kill}
                continue
            if time.monotonic() - logged < 9:
                continue
            logged = time.monotonic()
            log(f"burst: {len(keys) - len(missing)}/{len(keys)} Ready after {time.monotonic() - t0:.0f} s")
            if not op.alive():
                raise RuntimeError(f"operator died; see {op.log_path}")
            if len(missing) != progress_n:  # --timeout counts from the last flow that got Ready
                progress_t, progress_n = time.monotonic(), len(missing)
            if time.monotonic() - progress_t > args.timeout:
                raise TimeoutError(f"{len(missing)} of {len(keys)} not Ready after {args.timeout} s: {missing[:5]}")
        t_ready = max(sfw.ready_at[x] for x in keys)
        prof.stop()
        m1 = c.metrics.read()
        s3_1 = proxy.snapshot() if proxy else collections.Counter()
        om1 = operator_metrics(op.metrics_port)
        cpu1 = op.cpu_seconds() + cpu_killed
        bench_burst = collections.Counter(c.bench_calls)
        bench_burst.subtract(calls0)
        for w, n0 in ((sfw, lists0[0]), (fsw, lists0[1])):  # a watch re-list is one LIST
            bench_burst[("LIST", w.plural)] += w.lists - n0
        op_req = diff(m1, m0, bench_burst)
        burst_s = t_ready - t0
        n_req = sum(op_req.values())
        own_rss, kids_rss = op.peak(t0, t_ready + 1)
        if killed is not None:
            res["kill"]["new_operator_peak_rss_mib"] = own_rss  # op is the new one
            res["kill"]["killed_operator_peak_rss_mib"] = killed.peak(t0, t_ready + 1)[0]
            own_rss = max(own_rss, res["kill"]["killed_operator_peak_rss_mib"])
        objects = sum(c.s3_count(b) for b in buckets.values())
        per = [sfw.ready_at[x] - created[x] for x in keys]
        res["burst"] = {
            "namespaces": n_ns, "flows_per_namespace": n_flows, "n": len(keys), "client_threads": args.threads,
            "create_all_s": t_created - t0, "first_create_to_all_ready_s": burst_s,
            "last_create_to_all_ready_s": t_ready - t_created, "throughput_flows_per_s": len(keys) / burst_s,
            "per_flow_latency": summary(per),
            "operator_peak_rss_mib": own_rss, "children_peak_rss_mib": kids_rss,
            "operator_cpu_s": cpu1 - cpu0,
            "bench_requests_subtracted": {" ".join(k_): v for k_, v in bench_burst.items() if v},
            "operator_api_requests": op_req, "operator_api_requests_total": n_req,
            "operator_api_requests_per_s": n_req / burst_s,
            "operator_api_writes_total": sum(writes(op_req).values()),
            "s3_requests": diff(s3_1, s3_0), "s3_requests_total": sum((s3_1 - s3_0).values()) if proxy else None,
            "uploads": metric_sum(om1, "flowstore_artifacts_stored_total")
            - metric_sum(om0, "flowstore_artifacts_stored_total") + uploads_killed,
            "s3_objects_when_all_ready": objects,
            # the API server's write rate (every client) while the bench created, and over the whole
            # burst: equal rates mean the server wrote as fast as it could throughout, and then no
            # operator gets all Ready sooner than all the burst's writes take at that rate
            "apiserver_writes_per_s_creating": sum(writes(diff(m_created, m0)).values()) / (t_created - t0),
            "apiserver_writes_per_s_burst": sum(writes(diff(m1, m0)).values()) / burst_s,
            "ready_floor_s": sum(writes(diff(m1, m0)).values())
            / (sum(writes(diff(m_created, m0)).values()) / (t_created - t0)),
        }
        log(f"burst: all {len(keys)} Ready in {burst_s:.1f} s; operator made {n_req} API requests "
            f"({n_req / burst_s:.1f}/s); waiting until settled")

        # ---- settle: trailing writes (FlowStorage status.flows) after the last Ready
        t_last, settled = wait_settled(c, [sfw, fsw], op, args.quiet, 300)
        m2 = c.metrics.read()
        s3_2 = proxy.snapshot() if proxy else collections.Counter()
        res["settle"] = {"all_ready_to_last_change_s": t_last - t_ready, "settled": settled,
                         "operator_api_requests": diff(m2, m1), "s3_requests": diff(s3_2, s3_1)}
        if args.tracemalloc:  # all objects present, and nothing in flight: what each one costs to keep
            res["memory"] = op.memory_breakdown(len(keys) + len(fs_keys))

        # ---- 2. steady state: nothing changes; the bench makes no request but its open WATCHes
        log(f"steady state: {args.steady:.0f} s window")
        objs_before = {b: c.s3_count(b) for b in buckets.values()}
        changes0, lists0 = sfw.changes + fsw.changes, sfw.lists + fsw.lists
        om2 = operator_metrics(op.metrics_port)
        s3_2 = proxy.snapshot() if proxy else collections.Counter()
        m2 = c.metrics.read()
        cpu2 = op.cpu_seconds()
        ts = time.monotonic()
        time.sleep(args.steady)
        m3 = c.metrics.read()
        te = time.monotonic()
        cpu3 = op.cpu_seconds()
        s3_3 = proxy.snapshot() if proxy else collections.Counter()
        om3 = operator_metrics(op.metrics_port)
        relists = sfw.lists + fsw.lists - lists0
        api_steady = diff(m3, m2)
        objs_after = {b: c.s3_count(b) for b in buckets.values()}
        not_ready = sfw.not_ready(keys)
        om_delta = {k_: om3.get(k_, 0) - om2.get(k_, 0) for k_ in sorted(set(om2) | set(om3))
                    if "_total" in k_ and om3.get(k_, 0) != om2.get(k_, 0)}
        res["steady"] = {
            "window_s": te - ts,
            "operator_api_requests": api_steady,
            "operator_api_writes": writes(api_steady),
            "operator_api_writes_total": sum(writes(api_steady).values()),
            "bench_watch_relists": relists,
            "watched_object_changes": sfw.changes + fsw.changes - changes0,
            "s3_requests": diff(s3_3, s3_2), "s3_requests_total": sum((s3_3 - s3_2).values()) if proxy else None,
            "uploads": metric_sum(om3, "flowstore_artifacts_stored_total")
            - metric_sum(om2, "flowstore_artifacts_stored_total"),
            "upload_bytes": metric_sum(om3, "flowstore_upload_bytes_total")
            - metric_sum(om2, "flowstore_upload_bytes_total"),
            "reconciles": metric_sum(om3, "flowstore_reconciles_total")
            - metric_sum(om2, "flowstore_reconciles_total"),
            "operator_counter_changes": om_delta,
            "s3_objects_before": sum(objs_before.values()), "s3_objects_after": sum(objs_after.values()),
            "operator_rss_mib": op.samples[-1][1] / 2**20 if op.samples else 0.0,
            "operator_cpu_s": cpu3 - cpu2,
            "still_ready": len(keys) - len(not_ready),
            "operator_alive": op.alive(),
        }
        if killed is not None:  # every version stored once (the bench's own LISTs: after the measured windows)
            res["kill"].update(stored_once(c, namespaces, buckets, n_flows))
        s = res["steady"]
        if "kill" in res and not res["kill"].get("ok"):
            return False
        return bool(s["operator_api_writes_total"] == 0 and s["uploads"] == 0 and s["watched_object_changes"] == 0
                    and s["s3_objects_before"] == s["s3_objects_after"] and not s["s3_requests_total"]
                    and s["operator_alive"])
    finally:
        if cleanup and op.alive():
            log("cleanup: deleting the bench's objects while the operator runs (it releases the finalizers)")
            for ns in namespaces:
                for plural in (SF, FS):
                    try:
                        c.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, plural)
                    except Exception as exc:
                        log(f"cleanup {ns} {plural}: {exc}")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and any(k_[0] in namespaces for k_ in list(sfw.rv) + list(fsw.rv)):
                time.sleep(1)
            for ns in namespaces:
                try:
                    c.core.delete_namespace(ns)
                except Exception as exc:
                    log(f"delete namespace {ns}: {exc}")
        sfw.stop()
        fsw.stop()
        if op.alive():
            res["operator_shutdown_s"] = op.stop()
        if proxy:
            proxy.stop()


def report(res: dict[str, Any]) -> str:
    m, b, st, se = res["machine"], res["burst"], res["steady"], res["settle"]
    lines = [
        f"machine: {m['nproc']} CPU ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"loadavg {' '.join(m['loadavg_at_start'])}; kopf {res['versions'].get('kopf')}; mode: {res['mode']}",
        "", f"{'figure':<60} {'value':>22}", "-" * 83,
    ]

    def row(name: str, value: str) -> None:
        lines.append(f"{name:<60} {value:>22}")

    def reqs(d: dict[str, int]) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items()) or "none"

    row(f"1. {b['n']} StoredFlows ({b['namespaces']} ns x {b['flows_per_namespace']}), script mode", "")
    row(f"   create calls ({b['client_threads']} client threads)", fmt_s(b["create_all_s"]))
    row("   first create -> all Ready", fmt_s(b["first_create_to_all_ready_s"]))
    row("   throughput", f"{b['throughput_flows_per_s']:.1f} flows/s")
    row("   per-flow create->Ready median / p95",
        f"{fmt_s(b['per_flow_latency']['median'])} / {fmt_s(b['per_flow_latency']['p95'])}")
    row("   operator peak RSS (own process, 100 ms samples)", f"{b['operator_peak_rss_mib']:.1f} MiB")
    row("   operator RSS idle at start (no objects)", f"{res['rss_idle_empty_mib']:.1f} MiB")
    row("   operator CPU time during the burst", f"{b['operator_cpu_s']:.1f} s")
    row("   operator API requests (non-WATCH, our groups)", str(b["operator_api_requests_total"]))
    row("   operator API requests per second", f"{b['operator_api_requests_per_s']:.1f}/s")
    row("   ... of which writes", str(b["operator_api_writes_total"]))
    row("   operator S3 requests (counting proxy)", str(b["s3_requests_total"]))
    row("   uploads recorded / S3 objects when all Ready", f"{b['uploads']:.0f} / {b['s3_objects_when_all_ready']}")
    if "ready_floor_s" in b:
        row("   API server writes/s, all clients: creating / whole burst",
            f"{b['apiserver_writes_per_s_creating']:.0f} / {b['apiserver_writes_per_s_burst']:.0f}")
        row("   all Ready at the creating write rate (floor) / ratio",
            f"{fmt_s(b['ready_floor_s'])} / {b['first_create_to_all_ready_s'] / b['ready_floor_s']:.2f}x")
    row("   all Ready -> last change (FlowStorage status.flows etc.)", fmt_s(se["all_ready_to_last_change_s"])
        + ("" if se["settled"] else " (!)"))
    row(f"2. steady state, {st['window_s']:.0f} s window", "")
    row("   operator API writes (must be 0)", str(st["operator_api_writes_total"]))
    row("   operator API requests, all verbs but WATCH", str(sum(st["operator_api_requests"].values())))
    row("   object changes seen by the watch (must be 0)", str(st["watched_object_changes"]))
    row("   operator S3 requests (must be 0)", str(st["s3_requests_total"]))
    row("   uploads / upload bytes (must be 0)", f"{st['uploads']:.0f} / {st['upload_bytes']:.0f}")
    row("   reconciles (interval 10m: 0 expected)", f"{st['reconciles']:.0f}")
    row("   S3 objects before -> after", f"{st['s3_objects_before']} -> {st['s3_objects_after']}")
    row("   operator CPU time in the window", f"{st['operator_cpu_s']:.2f} s")
    row("   operator RSS at the end", f"{st['operator_rss_mib']:.1f} MiB")
    row("   StoredFlows still Ready / operator alive", f"{st['still_ready']} / {st['operator_alive']}")
    lines.append("-" * 83)
    lines.append("burst API requests by the operator: " + reqs(b["operator_api_requests"]))
    lines.append("burst S3 requests by the operator: " + reqs(b["s3_requests"]))
    lines.append("after all Ready, until settled: API " + reqs(se["operator_api_requests"])
                 + "; S3 " + reqs(se["s3_requests"]))
    lines.append("steady-state API requests: " + reqs(st["operator_api_requests"]))
    if "kill" in res:
        k = res["kill"]
        lines.append(f"SIGKILL at {k['at_s']:.0f} s with {k['ready_when_killed']} Ready; new operator's metrics after "
                     f"{k['restart_to_metrics_s']:.1f} s; peak RSS killed / new operator "
                     f"{k.get('killed_operator_peak_rss_mib', 0):.1f} / "
                     f"{k.get('new_operator_peak_rss_mib', 0):.1f} MiB. "
                     f"Then: {k.get('locations_in_status')} locations in status, "
                     f"{k.get('objects_in_buckets')} objects in the buckets, {k.get('stored_twice_or_unnamed')} stored "
                     f"twice or unnamed, {k.get('lost')} lost -> {'OK' if k.get('ok') else 'FAILED'}")
    if "memory" in res:
        mem = res["memory"]
        lines.append(f"tracemalloc once settled: {mem['traced_mib']:.1f} MiB traced, "
                     f"{mem['bytes_per_object'] / 1024:.1f} KiB per object ({mem['objects']} objects); by file:")
        row_ = "  {mib:8.1f} MiB {bytes_per_object:9.0f} B/object  {where}"
        lines.extend(row_.format(**r) for r in mem["by_file"])
        lines.append("  by line:")
        lines.extend(row_.format(**r) for r in mem["by_line"])
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 namespaces x 20 flows, 15 s steady window")
    ap.add_argument("--namespaces", type=int, default=20)
    ap.add_argument("--flows", type=int, default=100, help="StoredFlows per namespace (default 100)")
    ap.add_argument("--threads", type=int, default=16, help="client threads creating the flows (default 16)")
    ap.add_argument("--steady", type=float, default=60.0, help="steady-state window in seconds (default 60)")
    ap.add_argument("--quiet", type=float, default=5.0,
                    help="settled = nothing changed for this many seconds (default 5)")
    ap.add_argument("--interval", default="10m", help="FlowStorage drift-check interval (default 10m)")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up when no flow got Ready for this long")
    ap.add_argument("--cloud-dir", default=str(RESULTS / "localcloud-load"),
                    help="FLOWSTORE_LOCALCLOUD_DIR of the private cloud (default bench/results/localcloud-load)")
    ap.add_argument("--shared", action="store_true", help="use the local cloud of the environment instead")
    ap.add_argument("--no-proxy", action="store_true", help="no S3 counting proxy (S3 requests not counted)")
    ap.add_argument("--profile", action="store_true", help="py-spy record the operator during the burst")
    ap.add_argument("--profile-gil", action="store_true",
                    help="py-spy record only the thread holding the GIL: where the operator's Python CPU goes")
    ap.add_argument("--operator-arg", action="append", help="extra operator argument (repeatable)")
    ap.add_argument("--kill-after", type=int, default=0,
                    help="SIGKILL the operator once this many flows are Ready, start a new one, and check that "
                         "every flow was stored exactly once")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="run the operator under tracemalloc and show where its memory is once all are Ready "
                         "(slower: not for the timing figures)")
    args = ap.parse_args()
    need_modules("kubernetes", "boto3", "psutil")
    if args.quick:
        args.namespaces, args.flows = 2, 20
        if args.steady == 60.0:
            args.steady = 15.0
    res: dict[str, Any] = {"mode": ("quick" if args.quick else "full") + (", shared cloud" if args.shared
                                                                          else ", private cloud"),
                           "machine": machine(), "versions": versions("kopf", "kubernetes", "boto3"),
                           "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    print(machine_line(res["machine"]), flush=True)
    others = other_operators([])
    res["other_operators_running"] = others
    if others:
        log(f"note: other flowstore operator processes are running ({others}); they share the CPU")
    ok = False
    with cloud(["kube", "s3"], state_dir=None if args.shared else Path(args.cloud_dir), crds=True) as lc:
        ok = run(args, res, cleanup=not lc.started)
    res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    res["ok"] = ok
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load-latest.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    print(report(res), flush=True)
    print(f"\nJSON: {RESULTS / 'load-latest.json'}; operator log: {RESULTS / 'operator-load.log'}")
    if not ok:
        log("FAILED: the steady state was not quiet (see the table)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
