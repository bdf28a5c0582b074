"""A flow of several files end to end: examples/multifile (a flow, a helper module and a SQL file
in a ConfigMap that kustomize generates) applied through an overlay, stored pickled (S3) and as a
bundle (GCS) by the real operator, and loaded back by agents that have only flowstore installed:
the library, `flowstore get -o DIR` and `flowstore run`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

from flowstore import client
from flowstore.artifacts import bundle
from tests.helpers.kube import apply, kubectl, wait_for, wait_ready
from tests.helpers.localcloud import ROOT
from tests.helpers.manifests import flow_storage, kustomize_overlay, manifests, s3_storage
from tests.helpers.operator import OperatorProcess

EXAMPLE = ROOT / "examples" / "multifile"
EXPECTED = ["east: 45", "north: 150", "south: 80"]


def overlay(tmp_path: Path, namespace: str, example: Path = EXAMPLE) -> list[dict[str, Any]]:
    path = kustomize_overlay(tmp_path / "overlay", example, namespace)
    rendered = kubectl("kustomize", str(path)).stdout
    kubectl("apply", "-f", "-", input=rendered)
    return [d for d in yaml.safe_load_all(rendered) if d]


def storages(namespace: str, s3_bucket: str, s3_endpoint: str, gcs_endpoint: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    bucket = f"flows-{uuid.uuid4().hex[:12]}"
    gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                   client_options={"api_endpoint": gcs_endpoint}).create_bucket(bucket)
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="team-s3"))
    apply(manifests(flow_storage(namespace, "team-gcs", "gcs", {"bucket": bucket, "endpointURL": gcs_endpoint})))


def flowstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flowstore.cli", *args], capture_output=True, text=True,
                          env=os.environ, timeout=120)


def test_the_example_is_stored_and_agents_without_its_helpers_run_it(
        operator: OperatorProcess, namespace: str, tmp_path: Path, s3_bucket: str, s3_endpoint: str,
        gcs_endpoint: str) -> None:
    storages(namespace, s3_bucket, s3_endpoint, gcs_endpoint)
    docs = overlay(tmp_path, namespace)
    [configmap] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert sorted(configmap["data"]) == ["daily_sales.sql", "helpers.py", "sales_report.py"]
    pickled = wait_ready(namespace, "sales-report", timeout=60)["status"]
    files = wait_ready(namespace, "sales-report-files", timeout=60)["status"]
    assert (pickled["artifact"]["format"], pickled["artifact"]["fileCount"]) == ("pickle", 3)
    assert pickled["artifact"]["entrypoint"] == "sales_report.py:flow"
    assert (files["artifact"]["format"], files["artifact"]["fileCount"]) == ("bundle", 3)
    assert "helpers" not in sys.modules and importlib.util.find_spec("helpers") is None, \
        "this agent must not have the flow's helpers"

    # the library: the pickle carries the helpers by value; the bundle is extracted and imported
    os.environ["FLOWSTORE_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        assert client.load_flow("sales-report", namespace).run() == EXPECTED
        assert client.load_flow("sales-report-files", namespace).run() == EXPECTED
    finally:
        del os.environ["FLOWSTORE_CACHE_DIR"]

    # the CLI: the bundle's files into a directory, byte for byte the example's
    target = tmp_path / "checkout"
    done = flowstore_cli("get", "sales-report-files", "-n", namespace, "-o", str(target))
    assert done.returncode == 0, done.stderr
    source = EXAMPLE / "flows" / "sales"
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == ["helpers.py", "queries/daily_sales.sql", "sales_report.py"]
    for path in written:
        assert (target / path).read_bytes() == (source / path).read_bytes(), path
    refused = flowstore_cli("get", "sales-report-files", "-n", namespace, "-o", str(target))
    assert refused.returncode != 0 and "not an empty directory" in refused.stderr
    for name in ("sales-report", "sales-report-files"):
        ran = flowstore_cli("run", name, "-n", namespace)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout.splitlines()[-1]) == {"flow": "sales report", "result": EXPECTED}

    # a change to a helper is a new ConfigMap name: both flows are stored again, with the change
    changed = tmp_path / "changed"
    shutil.copytree(EXAMPLE, changed)
    helpers = changed / "flows" / "sales" / "helpers.py"
    helpers.write_text(helpers.read_text().replace('("east", 45)', '("east", 46)'))
    second = tmp_path / "second"
    second.mkdir()
    overlay(second, namespace, changed)
    for name in ("sales-report", "sales-report-files"):
        wait_for("storedflow", namespace, name,
                 lambda o, before=(pickled if name == "sales-report" else files): (o.get("status") or {}).get(
                     "artifact", {}).get("digest") not in (None, before["artifact"]["digest"])
                 and o["status"]["observedGeneration"] == o["metadata"]["generation"],
                 timeout=60, what="to be stored again")
    data = client.load_artifact("sales-report-files", namespace).data
    assert b'("east", 46)' in bundle.unpack(data).files["helpers.py"]
    assert operator.alive()
