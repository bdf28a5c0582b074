"""Shards end to end: `flowstore operator --watch-label-selector`, filtered by the API server.

Real operator processes (two shards and the default one, scoped to the test's namespace), each
talking to the real kube-apiserver through its own recording proxy (tests/helpers/api_proxy.py),
so the test sees every request an operator made; the real S3 server counts uploads (each upload
writes a new timestamped key, so a duplicate shows up as an extra object).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowstore.controller.handlers import LIST_CHUNK
from tests.e2e.test_ha import flows, metric, pid, stored, wait_all_ready, with_labels
from tests.helpers.api_proxy import ApiProxy
from tests.helpers.kube import get, kubectl, kubectl_json, message, wait_for, wait_reason
from tests.helpers.manifests import s3_storage
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess

pytestmark = [pytest.mark.usefixtures("own_operators_only")]

SHARD = "flowstore.dev/shard"
SELECTORS = {"shard1": f"{SHARD}=shard1", "shard2": f"{SHARD}=shard2", "default": f"!{SHARD}"}


@pytest.fixture
def sharded(crds: None, kube_env: dict[str, str], s3_endpoint: str,
            tmp_path: Path) -> Iterator[dict[str, tuple[OperatorProcess, ApiProxy]]]:
    """Operators by name, each behind its own recording proxy; all stopped afterwards."""
    started: dict[str, tuple[OperatorProcess, ApiProxy]] = {}
    yield started
    for op, _ in started.values():  # every operator first: a proxy that fails to stop must not leave one running
        op.stop(signal.SIGKILL)
    for _, proxy in started.values():
        proxy.__exit__(None, None, None)


def start(sharded: dict[str, tuple[OperatorProcess, ApiProxy]], tmp_path: Path, name: str,
          *args: str) -> OperatorProcess:
    directory = tmp_path / name
    directory.mkdir()
    proxy = ApiProxy(os.environ["KUBECONFIG"], directory).__enter__()
    op = OperatorProcess(directory, {**os.environ, "KUBECONFIG": proxy.kubeconfig})
    sharded[name] = (op, proxy)
    op.start(*args)
    print(f"started operator {name} (pid {pid(op)}): {' '.join(args)}")
    return op


def objects(namespace: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kubectl_json("get", kind, "-n", namespace)["items"]}


def collection_reads(proxy: ApiProxy) -> list[tuple[str, dict[str, str]]]:
    """The LIST and WATCH requests of FlowStorages and StoredFlows (not reads of one by name)."""
    return [(r.path, r.query) for r in proxy.requests()
            if r.method == "GET" and r.path.rstrip("/").endswith(("/storedflows", "/flowstorages"))]


def test_each_shard_holds_and_stores_only_its_own_flows_and_a_flow_moves_without_a_new_upload(
        sharded: dict[str, tuple[OperatorProcess, ApiProxy]], tmp_path: Path, namespace: str, s3_bucket: str,
        s3_endpoint: str) -> None:
    ops = {shard: start(sharded, tmp_path, shard, "--namespace", namespace, "--watch-label-selector", selector)
           for shard, selector in SELECTORS.items()}
    docs, names = [], {}
    for shard in SELECTORS:
        storage, labels = f"store-{shard}", ({SHARD: shard} if shard != "default" else None)
        manifest = s3_storage(namespace, s3_bucket, s3_endpoint, name=storage, key_prefix=f"{shard}/")
        docs.append(with_labels(manifest, namespace, storage, labels) if labels else manifest)
        names[shard] = [f"{shard}-flow-{i}" for i in range(4)]
        docs.append(flows(namespace, names[shard], storage=storage, labels=labels))
    # on shard1, but its FlowStorage is on shard2
    docs.append(flows(namespace, ["misfit"], storage="store-shard2", labels={SHARD: "shard1"}))
    kubectl("apply", "-f", "-", input="\n---\n".join(docs))
    print("injected: 3 FlowStorages (shard1, shard2, no label) with 4 StoredFlows each; 'misfit' on shard1 "
          "naming shard2's FlowStorage")
    wait_all_ready(namespace, [n for shard in SELECTORS for n in names[shard]])
    for shard in SELECTORS:
        wait_for("flowstorage", namespace, f"store-{shard}",
                 lambda o: len((o.get("status") or {}).get("flows") or {}) == 4, timeout=60, what="to list 4 flows")
    misfit = wait_reason(namespace, "misfit", "StorageOnOtherShard")
    print(f"observed: misfit: {misfit['status']['conditions']}")
    assert "is labelled flowstore.dev/shard=shard2" in message(misfit)
    assert "same flowstore.dev/shard label" in message(misfit)
    keys = s3_keys(s3_endpoint, s3_bucket)
    for shard in SELECTORS:
        print(f"observed: operator {shard} stored {sorted(stored(ops[shard]))}")
        assert sorted(stored(ops[shard])) == names[shard]
        assert sum(k.startswith(f"{shard}/") for k in keys) == 4
    assert len(keys) == 12

    # Server side: every LIST/WATCH of the sharded kinds carried the operator's own selector.
    for shard, selector in SELECTORS.items():
        reads = collection_reads(sharded[shard][1])
        assert reads, f"operator {shard} made no LIST/WATCH of flowstore resources"
        assert all(query.get("labelSelector") == selector for _, query in reads), (shard, reads)
        print(f"observed: operator {shard}: {len(reads)} LIST/WATCH requests, all with labelSelector={selector}")
        # the initial listings come in pages, not as one response of every object
        lists = [query for _, query in reads if query.get("watch") != "true"]
        assert lists and all(query.get("limit") == str(LIST_CHUNK) for query in lists), (shard, lists)
    # ... and nothing it holds is another shard's: its readiness gauge counts its own objects only
    for shard in ("shard2", "default"):
        assert metric(ops[shard], "flowstore_not_ready", kind="StoredFlow") == 0
    assert metric(ops["shard1"], "flowstore_not_ready", kind="StoredFlow") == 1  # misfit only

    # Move shard1 to shard2: the FlowStorage first (its flows then say so and keep their
    # location), then the flows (stored again? no: the same inputs are already in their history).
    before = {n: o["status"]["location"] for n, o in objects(namespace, "storedflows").items()
              if n in names["shard1"]}
    kubectl("label", "flowstorage", "store-shard1", "-n", namespace, f"{SHARD}=shard2", "--overwrite")
    for name in names["shard1"]:
        moved = wait_reason(namespace, name, "StorageOnOtherShard")
        assert moved["status"]["location"] == before[name]
    print("observed: after relabelling FlowStorage store-shard1 to shard2, its 4 flows on shard1 say "
          "StorageOnOtherShard and keep their locations")
    moved_at = time.monotonic()
    kubectl("label", "storedflows", "-n", namespace, "-l", f"{SHARD}=shard1", f"{SHARD}=shard2", "--overwrite")
    for name in [*names["shard1"], "misfit"]:
        wait_for("storedflow", namespace, name,
                 lambda o: any(c["type"] == "Ready" and c["status"] == "True"
                               for c in (o.get("status") or {}).get("conditions") or []), timeout=60,
                 what="to be Ready on shard2")
    print(f"observed: relabelled flows Ready on shard2 {time.monotonic() - moved_at:.1f}s after the relabel")
    after = objects(namespace, "storedflows")
    assert {n: after[n]["status"]["location"] for n in names["shard1"]} == before
    keys_after = s3_keys(s3_endpoint, s3_bucket)
    assert len(keys_after) == 13, sorted(set(keys_after) - set(keys))  # only misfit was new
    assert sorted(stored(ops["shard2"])) == sorted([*names["shard2"], "misfit"])
    assert sorted(stored(ops["shard1"])) == names["shard1"]  # nothing after the move
    wait_for("flowstorage", namespace, "store-shard1",
             lambda o: sorted((o.get("status") or {}).get("flows") or {}) == sorted(names["shard1"]),
             timeout=60, what="to list its 4 flows again (written by shard2)")
    # shard1 holds nothing any more: its loops stopped (nothing not ready, nothing reconciled since)
    assert metric(ops["shard1"], "flowstore_not_ready", kind="StoredFlow") == 0
    reconciles = metric(ops["shard1"], "flowstore_reconciles_total", kind="StoredFlow")
    kubectl("annotate", "storedflows", "--all", "-n", namespace, "flowstore.dev/requested-at=moved", "--overwrite")
    wait_for("storedflow", namespace, names["shard1"][0],
             lambda o: (o.get("status") or {}).get("lastHandledReconcileAt") == "moved", timeout=60,
             what="to be reconciled on request (by shard2)")
    time.sleep(2)
    assert metric(ops["shard1"], "flowstore_reconciles_total", kind="StoredFlow") == reconciles
    conditions = get("storedflow", namespace, names["shard1"][0])["status"]["conditions"]
    print(f"observed: status of a moved flow: {json.dumps(conditions)}")
