"""Prometheus metrics of the operator (served on ``--metrics-port``).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Labels are
bounded: kinds, results, reasons and backend types — never object names.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "flowstore_reconciles_total", "Reconciles by kind and result (ready, failed, stalled, suspended)",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "flowstore_reconcile_duration_seconds", "Duration of one reconcile pass", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BUILD_SECONDS = Histogram(
    "flowstore_build_duration_seconds", "Duration of a sandboxed pickle build", [],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UPLOAD_BYTES = Counter("flowstore_upload_bytes_total", "Bytes uploaded to storage backends", ["backend"])
ARTIFACTS_STORED = Counter("flowstore_artifacts_stored_total", "Artifacts stored (uploads that were recorded)",
                           ["backend"])
NOT_READY = Gauge("flowstore_not_ready", "Objects whose Ready condition is not True", ["kind"])
FAILURES = Counter("flowstore_failures_total", "Failed reconciles by kind and condition reason",
                   ["kind", "reason"])
SANDBOX_CONFINED = Gauge(
    "flowstore_sandbox_confined",
    "1 when this kernel confines operator-side builds in that respect (filesystem, network, signals, processes), "
    "0 when it cannot (docs/security.md); sandbox builds are refused unless all are 1 or --allow-unconfined-builds",
    ["feature"])
SANDBOX_LANDLOCK_ABI = Gauge("flowstore_sandbox_landlock_abi", "The Landlock ABI version the build sandbox applies "
                             "(0: none)")


class ReadinessTracker:
    """Keeps flowstore_not_ready exact: the set of objects currently not Ready, per kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_ready: dict[str, set[tuple[str, str]]] = {}

    def observe(self, kind: str, key: tuple[str, str], ready: bool | None) -> None:
        """`ready` None: the object is gone."""
        with self._lock:
            bucket = self._not_ready.setdefault(kind, set())
            if ready is False:
                bucket.add(key)
            else:
                bucket.discard(key)
            NOT_READY.labels(kind=kind).set(len(bucket))
