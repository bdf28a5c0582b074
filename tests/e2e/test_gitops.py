"""The GitOps example (examples/gitops) end to end: kustomize renders it, the real operator
stores every flow, `kubectl wait --for=condition=Ready` (kstatus) and the Argo CD health check
agree that it is done."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.health_harness import argocd, evaluate, harness_binary, kstatus
from tests.helpers.kube import kubectl, wait_ready
from tests.helpers.localcloud import ROOT
from tests.helpers.manifests import kustomize_overlay
from tests.helpers.operator import OperatorProcess, local_dir

EXAMPLE = ROOT / "examples" / "gitops"


def kustomize(directory: Path) -> list[dict[str, Any]]:
    rendered = kubectl("kustomize", str(directory)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def overlay(tmp_path: Path, namespace: str, directory: Path) -> Path:
    """A kustomization on top of the example, as a user's environment overlay would be: another
    namespace, and the Local storage's directory on this machine."""
    return kustomize_overlay(tmp_path / "overlay", EXAMPLE, namespace, f"""\
  - target: {{group: flowstore.dev, kind: FlowStorage, name: gitops-local}}
    patch: |
      - op: replace
        path: /spec/local/directory
        value: {directory}
""")


def test_generated_configmap_name_is_referenced_by_every_storedflow() -> None:
    docs = kustomize(EXAMPLE)
    [configmap] = of_kind(docs, "ConfigMap")
    name = configmap["metadata"]["name"]
    assert name.startswith("gitops-flows-") and name != "gitops-flows-"  # the hash suffix
    flows = of_kind(docs, "StoredFlow")
    assert len(flows) >= 2
    for flow in flows:
        ref = flow["spec"]["source"]["configMapRef"]
        assert ref["name"] == name, flow["metadata"]["name"]
        assert ref["key"] in configmap["data"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"flowstore-gitops"}


def test_without_the_configuration_the_reference_is_left_dangling(tmp_path: Path) -> None:
    """Why kustomizeconfig.yaml exists: kustomize does not know StoredFlow's configMapRef."""
    copy = tmp_path / "gitops"
    shutil.copytree(EXAMPLE, copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    del kustomization["configurations"]
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    flows = of_kind(kustomize(copy), "StoredFlow")
    assert {f["spec"]["source"]["configMapRef"]["name"] for f in flows} == {"gitops-flows"}


def test_application_points_at_the_example() -> None:
    app = yaml.safe_load((EXAMPLE / "application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    assert app["spec"]["source"]["path"] == "examples/gitops"
    assert app["spec"]["destination"]["namespace"] == yaml.safe_load(
        (EXAMPLE / "kustomization.yaml").read_text())["namespace"]


def test_sync_waves_put_storages_before_flows() -> None:
    def wave(doc: dict[str, Any]) -> int:
        return int((doc["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", "0"))

    docs = kustomize(EXAMPLE)
    assert max(map(wave, of_kind(docs, "FlowStorage") + of_kind(docs, "ConfigMap"))) < min(
        map(wave, of_kind(docs, "StoredFlow")))


def test_example_is_stored_and_ready(operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    harness = harness_binary()
    directory = local_dir(namespace, "flows")
    directory.mkdir(parents=True)
    rendered = kubectl("kustomize", str(overlay(tmp_path, namespace, directory))).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {namespace}
    kubectl("apply", "-f", "-", input=rendered)

    names = [f["metadata"]["name"] for f in of_kind(docs, "StoredFlow")]
    objects = {}
    for name in names:
        objects[name] = obj = wait_ready(namespace, name, timeout=60)
        assert obj["status"]["location"], name
    objects["gitops-local"] = wait_ready(namespace, "gitops-local", kind="flowstorage", timeout=60)
    # Argo CD's health checks as Argo CD runs them (gopher-lua, docs/argocd.md's argocd-cm), and
    # kstatus (Flux) on the live objects
    for name, verdict in evaluate(harness, objects).items():
        assert argocd(verdict)[0] == "Healthy", name
        assert kstatus(verdict)[0] == "Current", name
    assert sorted(p.name for p in directory.iterdir()) == ["etl-daily", "weekly-report"]

    # The kstatus check the issue asks for: `kubectl wait` understands the conditions as is.
    done = subprocess.run(["kubectl", "wait", "--for=condition=Ready", "storedflow", "--all", "-n", namespace,
                           "--timeout=60s"], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("condition met") == len(names), done.stdout
