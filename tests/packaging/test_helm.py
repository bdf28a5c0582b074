"""The Helm chart against a real helm binary and the real kube-apiserver.

The module runs on a kube-apiserver of its own (`scripts/localcloud up kube` with a private
state directory, ~4 s): its operators run cluster-wide or watch chosen namespaces, and the
session's cluster-wide e2e operator (tests/e2e) must not serve, and so hide, their objects.

- `helm lint`, and `helm template` in both RBAC modes applied with `kubectl apply
  --dry-run=server` (the API server validates every object, RBAC escalation checks included);
- the rendered RBAC for real: the chart's ServiceAccount, Roles and bindings applied, a real
  token taken for the ServiceAccount, `kubectl auth can-i` as it, and then the real
  `flowstore operator` run with nothing but that token, storing flows to Ready with no 403.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.helm import DENIAL, run_helm
from tests.helpers.kube import apply, kubectl, wait_listed, wait_ready, wait_reason
from tests.helpers.localcloud import LOCALCLOUD, ROOT
from tests.helpers.manifests import configmap, inline_flow, local_storage, manifests, s3_storage, stored_flow
from tests.helpers.operator import OperatorProcess, local_dir

CHART = ROOT / "helm" / "flowstore-operator"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


# ---------------------------------------------------------------------- helpers and fixtures
def render(helm: str, release: str, namespace: str, *options: str) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *options)
    return [doc for doc in yaml.safe_load_all(out) if doc]


def set_namespaces(*names: str) -> str:
    return "watchNamespaces={" + ",".join(names) + "}"


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kube-apiserver (and etcd) for this module alone, with the project's CRDs; KUBECONFIG
    points at it for the module's duration. Depends on `s3_endpoint` so that the session's own
    cloud is set up first and never overwrites KUBECONFIG afterwards."""
    env = {**os.environ, "FLOWSTORE_LOCALCLOUD_DIR": str(tmp_path_factory.mktemp("kube"))}
    subprocess.run([sys.executable, str(LOCALCLOUD), "up", "kube"], check=True, env=env, cwd=ROOT)
    try:
        exports = subprocess.run([sys.executable, str(LOCALCLOUD), "env"], check=True, env=env, cwd=ROOT,
                                 capture_output=True, text=True).stdout
        kubeconfig = next(shlex.split(line.partition("=")[2])[0] for line in exports.splitlines()
                          if line.startswith("export KUBECONFIG="))
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = kubeconfig
        try:
            kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
            kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/flowstorages.flowstore.dev", "crd/storedflows.flowstore.dev")
            yield kubeconfig
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous
    finally:
        subprocess.run([sys.executable, str(LOCALCLOUD), "down", "kube"], check=False, env=env, cwd=ROOT,
                       capture_output=True)


@pytest.fixture
def make_namespace(cluster: str) -> Iterator[Callable[[], str]]:
    """Creates fresh namespaces on demand; removes them afterwards (not waited on)."""
    made: list[str] = []

    def make() -> str:
        name = f"h-{uuid.uuid4().hex[:10]}"
        kubectl("create", "namespace", name)
        made.append(name)
        return name

    yield make
    for name in made:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def release(cluster: str) -> Iterator[str]:
    """A release name per test; its cluster-scoped RBAC objects are removed afterwards."""
    name = f"fs-{uuid.uuid4().hex[:8]}"
    yield name
    kubectl("delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={name}",
            "--ignore-not-found", check=False)


def service_account_kubeconfig(path: Path, token: str) -> Path:
    """A kubeconfig with the admin one's server and CA, but the ServiceAccount's token."""
    admin = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }))
    path.chmod(0o600)
    return path


def install_rbac(docs: list[dict[str, Any]], release_namespace: str, sa_kubeconfig: Path) -> Path:
    """Apply only the chart's RBAC (no Deployment: no image here) and return a kubeconfig
    carrying a real token of the chart's ServiceAccount."""
    kubectl("apply", "-f", "-", input=dump([d for d in docs if d["kind"] in RBAC_KINDS]))
    (sa,) = by_kind(docs, "ServiceAccount")
    token = kubectl("create", "token", sa["metadata"]["name"], "-n", release_namespace,
                    "--duration=1h").stdout.strip()
    return service_account_kubeconfig(sa_kubeconfig, token)


def can_i(kubeconfig: Path, verb: str, resource: str, *where: str) -> bool:
    """`kubectl auth can-i` as the ServiceAccount itself (its own token, no impersonation)."""
    done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, resource, *where],
                          capture_output=True, text=True, check=False)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"auth can-i {verb} {resource} {where}: {done.stdout} {done.stderr}"
    return answer == "yes"


def deleting_local_storage(namespace: str, directory: Path) -> str:
    return local_storage(namespace, "local", directory, deletionPolicy="Delete")


def configmap_flow(namespace: str, name: str, flow_name: str, storage: str) -> str:
    script = f"from flowstore.flow import Flow\n\nflow = Flow({flow_name!r}, lambda: 7)\n"
    source = {"configMapRef": {"name": f"{name}-src", "key": "flow.py"}}
    return manifests(configmap(namespace, f"{name}-src", {"flow.py": script}),
                     stored_flow(namespace, name, flow_name, source, storage, storedAsScript=True))


def apply_each(*docs: str) -> None:
    """Apply manifests in order, one at a time: some are JSON Lists (tests/helpers/manifests.py),
    which a YAML `---` join would make one unparsable JSON stream."""
    for doc in docs:
        apply(doc)


def assert_no_denials(op: OperatorProcess) -> None:
    logs = op.logs()
    denied = [line for line in logs.splitlines() if DENIAL.search(line)]
    assert not denied, "the operator met RBAC denials:\n" + "\n".join(denied[:20])


def delete_and_wait(namespace: str, *resources: str) -> None:
    """Delete StoredFlows/FlowStorages while the operator runs: it releases the finalizer
    (a patch) under the same least privilege."""
    for resource in resources:
        kubectl("delete", resource, "-n", namespace, "--timeout=60s")


# ---------------------------------------------------------------------- lint and render
def test_lint(helm: str) -> None:
    run_helm(helm, "lint", "--strict", str(CHART))
    run_helm(helm, "lint", "--strict", str(CHART), "--set", set_namespaces("a", "b"),
             "--set", "metrics.serviceMonitor.enabled=true", "--set", "pdb.enabled=true",
             "--set", "localStorage.enabled=true", "--set", "localStorage.existingClaim=flows",
             "--set", "shards={shard1,shard2}")


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_template_applies_on_the_server(helm: str, make_namespace: Callable[[], str],
                                        release: str, mode: str) -> None:
    home = make_namespace()
    options = ["--set", set_namespaces(make_namespace(), make_namespace())] if mode == "namespaced" else []
    docs = render(helm, release, home, "--set", "pdb.enabled=true", "--set", "shards={shard1}", *options)
    kinds = sorted({d["kind"] for d in docs})
    assert {"Deployment", "ServiceAccount", "Service", "PodDisruptionBudget", "ClusterRole",
            "ClusterRoleBinding"} <= set(kinds)
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=dump(docs))
    assert done.stdout.count("(server dry run)") == len(docs), done.stdout


def test_default_values(helm: str) -> None:
    docs = render(helm, "flowstore", "flowstore-system")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["flowstore", "operator"]
    assert container["image"] == "ghcr.io/flowstore/flowstore-operator:0.1.0"  # the appVersion
    args = container["args"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--metrics-port=9090" in args and "--log-format=json" in args and "-v" not in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert "--leader-elect" in args and deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    # the safe policy (docs/security.md): Secrets opted in, no Local root, no private webhook
    # endpoints, no builder Jobs, no unconfined builds
    assert "--secret-policy=opt-in" in args
    assert not [a for a in args if a.startswith(("--local-root", "--allow-", "--enable-build-jobs", "--build-image",
                                                 "--build-service-account", "--build-toleration-key",
                                                 "--build-node-selector-key", "--webhook-allowed-env"))]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert deploy["spec"]["replicas"] == 1
    # The local-testing aids are off: the Pod's own network, the kubelet's KUBERNETES_SERVICE_*.
    assert "hostNetwork" not in pod and "dnsPolicy" not in pod
    assert not [e for e in container["env"] if e["name"].startswith("KUBERNETES_SERVICE_")]
    assert "--metrics-address=127.0.0.1" not in args
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 9090
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodDisruptionBudget")
    assert sorted(rb["metadata"]["name"] for rb in by_kind(docs, "RoleBinding")) == [
        "flowstore-flowstore-operator-leader-election", "flowstore-flowstore-operator-record-key"]
    assert "--record-key-secret=flowstore-flowstore-operator-record-key" in args


def test_options_render(helm: str) -> None:
    docs = render(helm, "flowstore", "ops", "--set", set_namespaces("a", "b"),
                  "--set", "log.level=debug", "--set", "metrics.serviceMonitor.enabled=true",
                  "--set", "pdb.enabled=true", "--set", "pdb.maxUnavailable=1",
                  "--set", "localStorage.enabled=true", "--set", "localStorage.existingClaim=flows",
                  "--set", "image.tag=9.9.9", "--set", "metrics.port=9300")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith(":9.9.9")
    args = container["args"]
    assert args[:2] == ["--namespace=a", "--namespace=b"] and "-v" in args and "--metrics-port=9300" in args
    assert {"name": "local-storage", "mountPath": "/var/lib/flowstore/flows"} in container["volumeMounts"]
    assert {"name": "local-storage", "persistentVolumeClaim": {"claimName": "flows"}} in pod["volumes"]
    assert "--local-root=/var/lib/flowstore/flows" in args  # the volume is the Local root
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(docs, "Role")}
    assert roles == {("a", "flowstore-flowstore-operator"), ("b", "flowstore-flowstore-operator"),
                     ("ops", "flowstore-flowstore-operator-leader-election"),
                     ("ops", "flowstore-flowstore-operator-record-key")}


def test_shards_render_one_operator_each_plus_the_default(helm: str) -> None:
    docs = render(helm, "flowstore", "ops", "--set", "shards={shard1,shard2}", "--set", "replicas=2",
                  "--set", "pdb.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert sorted(deployments) == ["flowstore-flowstore-operator", "flowstore-flowstore-operator-shard1",
                                   "flowstore-flowstore-operator-shard2"]
    selectors, leases = {}, {}
    for name, deploy in deployments.items():
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        (selectors[name],) = [a.split("=", 1)[1] for a in args if a.startswith("--watch-label-selector=")]
        (leases[name],) = [a.split("=", 1)[1] for a in args if a.startswith("--lease-name=")]
        assert "--leader-elect" in args and deploy["spec"]["replicas"] == 2
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for other in deployments.values():  # no Deployment's selector matches another's Pods
            if other is not deploy:
                assert not other["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert selectors == {"flowstore-flowstore-operator": "!flowstore.dev/shard",
                         "flowstore-flowstore-operator-shard1": "flowstore.dev/shard=shard1",
                         "flowstore-flowstore-operator-shard2": "flowstore.dev/shard=shard2"}
    assert leases == {name: name for name in deployments}  # each shard elects its own leader
    # the main Deployment's selector is what it was before shards (immutable on upgrade)
    assert deployments["flowstore-flowstore-operator"]["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "flowstore-operator", "app.kubernetes.io/instance": "flowstore"}
    services = by_kind(docs, "Service")
    assert len(services) == 3 and len(by_kind(docs, "PodDisruptionBudget")) == 3
    (monitor,) = by_kind(docs, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    assert all(wanted <= s["metadata"]["labels"].items() for s in services)  # metrics of every shard
    for service in services:
        pods = [d for d in deployments.values()
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1
    # RBAC as without shards: one ServiceAccount, the same roles
    plain = render(helm, "flowstore", "ops")
    assert dump([d for d in docs if d["kind"] in RBAC_KINDS]) == dump([d for d in plain if d["kind"] in RBAC_KINDS])
    assert not [a for a in by_kind(plain, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
                if a.startswith("--watch-label-selector")]  # without shards the operator serves every object


@pytest.mark.parametrize("bad", ["Shard1", "a_b", "-a", "x" * 64])
def test_a_bad_shard_name_fails_the_render(helm: str, bad: str) -> None:
    with pytest.raises(AssertionError, match="not a lowercase DNS label"):
        render(helm, "flowstore", "ops", "--set", f"shards={{{bad}}}")
    with pytest.raises(AssertionError, match="each name once"):
        render(helm, "flowstore", "ops", "--set", "shards={a,a}")


def test_policy_values_render(helm: str) -> None:
    docs = render(helm, "flowstore", "ops", "--set", "secrets.policy=any",
                  "--set", "webhook.allowPrivateEndpoints=true",
                  "--set", "webhook.allowedEnv={REGION}", "--set", "builds.enabled=true",
                  "--set", "builds.allowedImages={registry.example.com/team/*,python:3.11*}",
                  "--set", "builds.allowedServiceAccounts={builder}", "--set", "builds.allowedTolerationKeys={pool}",
                  "--set", "builds.allowedNodeSelectorKeys={pool}", "--set", "sandbox.allowUnconfined=true")
    (deploy,) = by_kind(docs, "Deployment")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--secret-policy=any", "--allow-private-endpoints", "--webhook-allowed-env=REGION",
                 "--enable-build-jobs", "--build-image=registry.example.com/team/*", "--build-image=python:3.11*",
                 "--build-service-account=builder", "--build-toleration-key=pool", "--build-node-selector-key=pool",
                 "--allow-unconfined-builds"):
        assert flag in args, flag
    # build values without builds.enabled say nothing (and grant nothing)
    docs = render(helm, "flowstore", "ops", "--set", "builds.allowedImages={python:*}")
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith(("--build-image", "--build-service-account", "--enable-build-jobs"))]


def test_local_testing_values_render(helm: str) -> None:
    """hostNetwork + apiServer (the local node's API server on 127.0.0.1): the node's network,
    endpoints and probe on its loopback, the address in the env, old Pods stopped first."""
    docs = render(helm, "flowstore", "ops", "--set", "hostNetwork=true", "--set", "apiServer.host=127.0.0.1",
                  "--set", "apiServer.port=6443", "--set", "probes.port=18080", "--set", "metrics.port=19090")
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "--liveness=http://127.0.0.1:18080/healthz" in container["args"]
    assert "--metrics-port=19090" in container["args"] and "--metrics-address=127.0.0.1" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health", "host": "127.0.0.1"}
    assert container["readinessProbe"]["httpGet"] == container["livenessProbe"]["httpGet"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    # Several replicas on one node: no probe and no metrics, so no port of the node is taken.
    docs = render(helm, "flowstore", "ops", "--set", "hostNetwork=true", "--set", "replicas=2",
                  "--set", "probes.liveness.enabled=false", "--set", "probes.readiness.enabled=false",
                  "--set", "metrics.enabled=false")
    (container,) = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert "ports" not in container and "livenessProbe" not in container and "readinessProbe" not in container
    assert not [a for a in container["args"] if a.startswith(("--liveness", "--metrics"))]
    # apiServer.host without a port is a mistake, said at render time.
    done = subprocess.run([helm, "template", "x", str(CHART), "--set", "apiServer.host=127.0.0.1"],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "apiServer.port is required" in done.stderr


def _rules(doc: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """Verbs by (group, resource), over every rule that names them."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for rule in doc["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


NAMESPACED = {
    ("flowstore.dev", "flowstorages"): {"get", "list", "watch", "patch"},
    ("flowstore.dev", "storedflows"): {"get", "list", "watch", "patch"},
    ("flowstore.dev", "flowstorages/status"): {"patch"},
    ("flowstore.dev", "storedflows/status"): {"patch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
    # spec.serviceAccountName: the account's annotations, and TokenRequests for it
    ("", "serviceaccounts"): {"get"},
    ("", "serviceaccounts/token"): {"create"},
}
#: only with builds.enabled: the Job, its ConfigMap, its Pod's state and log
BUILDS = {
    ("", "configmaps"): {"get", "list", "watch", "create", "delete"},
    ("batch", "jobs"): {"get", "list", "create", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
}


@pytest.mark.parametrize("builds", [False, True], ids=["no-builds", "builds"])
def test_rbac_is_exactly_what_the_operator_uses(helm: str, builds: bool) -> None:
    namespaced = NAMESPACED | BUILDS if builds else NAMESPACED
    options = ["--set", f"builds.enabled={str(builds).lower()}"]
    crds = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    docs = render(helm, "flowstore", "flowstore-system", *options)
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert _rules(cluster_role) == namespaced | crds
    docs = render(helm, "flowstore", "flowstore-system", "--set", set_namespaces("a", "b"), *options)
    cluster_roles = by_kind(docs, "ClusterRole")
    assert [_rules(r) for r in cluster_roles] == [crds | {("", "namespaces"): {"list", "watch"}}]
    for role in by_kind(docs, "Role"):
        if role["metadata"]["name"].endswith("-leader-election"):
            assert _rules(role) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
            assert role["metadata"]["namespace"] == "flowstore-system"
        elif role["metadata"]["name"].endswith("-record-key"):
            assert role["metadata"]["namespace"] == "flowstore-system"
            assert role["rules"] == [
                {"apiGroups": [""], "resources": ["secrets"],
                 "resourceNames": ["flowstore-flowstore-operator-record-key"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
        else:
            assert _rules(role) == namespaced
    docs = render(helm, "flowstore", "flowstore-system", "--set", set_namespaces("a"),
                  "--set", "rbac.observeNamespaces=false", "--set", "rbac.leaderElection=false")
    assert [_rules(r) for r in by_kind(docs, "ClusterRole")] == [crds]
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "a"] == [
        "flowstore-flowstore-operator"]


# ---------------------------------------------------------------------- real RBAC, real operator
def can_build(sa_config: Path, namespace: str) -> dict[str, bool]:
    """What the ServiceAccount may do with builder Jobs in `namespace` (builds.enabled grants all)."""
    return {"create jobs": can_i(sa_config, "create", "jobs.batch", "-n", namespace),
            "delete jobs": can_i(sa_config, "delete", "jobs.batch", "-n", namespace),
            "create configmaps": can_i(sa_config, "create", "configmaps", "-n", namespace),
            "delete configmaps": can_i(sa_config, "delete", "configmaps", "-n", namespace),
            "get pods/log": can_i(sa_config, "get", "pods", "--subresource=log", "-n", namespace),
            "list pods": can_i(sa_config, "list", "pods", "-n", namespace)}


def wait_for_job(namespace: str, storedflow: str, timeout: float = 60) -> None:
    """The operator made the builder Job of `storedflow` (with the chart's RBAC only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = kubectl("get", "jobs", "-n", namespace, "-l", f"flowstore.dev/storedflow={storedflow}", "-o", "name")
        if jobs.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"no builder Job for {namespace}/{storedflow} within {timeout}s")


def try_as(sa_config: Path, *args: str) -> str:
    """A real request with the ServiceAccount's token: "Forbidden" when RBAC refused it, else
    its stderr (empty when it was allowed)."""
    done = subprocess.run(["kubectl", "--kubeconfig", str(sa_config), *args], capture_output=True, text=True,
                          check=False)
    if not done.returncode:
        return ""
    return "Forbidden" if "forbidden" in done.stderr.lower() else done.stderr


@pytest.mark.parametrize("builds", [False, True], ids=["no-builds", "builds"])
def test_namespaced_rbac_runs_the_operator(helm: str, s3_endpoint: str, s3_bucket: str,
                                           make_namespace: Callable[[], str], release: str,
                                           tmp_path: Path, builds: bool) -> None:
    home, watched, watched2, unwatched = (make_namespace() for _ in range(4))
    docs = render(helm, release, home, "--set", set_namespaces(watched, watched2),
                  "--set", f"builds.enabled={str(builds).lower()}")
    sa_config = install_rbac(docs, home, tmp_path / "operator.kubeconfig")
    job = ["create", "job", "probe", "--image=registry.example.com/x:1"]

    for ns in (watched, watched2):
        assert can_i(sa_config, "get", "secrets", "-n", ns)
        assert not can_i(sa_config, "list", "secrets", "-n", ns)
        assert not can_i(sa_config, "watch", "secrets", "-n", ns)
        assert can_i(sa_config, "patch", "storedflows.flowstore.dev", "--subresource=status", "-n", ns)
        assert can_i(sa_config, "patch", "storedflows.flowstore.dev", "-n", ns)
        assert can_i(sa_config, "watch", "configmaps", "-n", ns)
        assert can_i(sa_config, "create", "events", "-n", ns)
        for verb in ("delete", "create", "update"):
            assert not can_i(sa_config, verb, "storedflows.flowstore.dev", "-n", ns), verb
        assert not can_i(sa_config, "update", "storedflows.flowstore.dev", "--subresource=status", "-n", ns)
        assert set(can_build(sa_config, ns).values()) == {builds}  # builder Jobs: only with builds.enabled
        assert ("Forbidden" in try_as(sa_config, *job, "-n", ns, "--dry-run=server")) is not builds
        assert not can_i(sa_config, "update", "configmaps", "-n", ns)
        assert not can_i(sa_config, "patch", "jobs.batch", "-n", ns)
        assert not can_i(sa_config, "create", "leases.coordination.k8s.io", "-n", ns)
        # spec.serviceAccountName: read one account by name, request tokens for it; nothing more
        assert can_i(sa_config, "get", "serviceaccounts", "-n", ns)
        assert can_i(sa_config, "create", "serviceaccounts", "--subresource=token", "-n", ns)
        for verb in ("list", "watch", "create", "update", "patch", "delete"):
            assert not can_i(sa_config, verb, "serviceaccounts", "-n", ns), verb
    for ns in (unwatched, home):
        assert not any(can_build(sa_config, ns).values())
        assert "Forbidden" in try_as(sa_config, *job, "-n", ns, "--dry-run=server")
        assert "Forbidden" in try_as(sa_config, "get", "secret", "anything", "-n", ns)
        assert not can_i(sa_config, "create", "serviceaccounts", "--subresource=token", "-n", ns)
        assert not can_i(sa_config, "get", "serviceaccounts", "-n", ns)
        assert not can_i(sa_config, "get", "secrets", "-n", ns)
        assert not can_i(sa_config, "list", "storedflows.flowstore.dev", "-n", ns)
        assert not can_i(sa_config, "get", "configmaps", "-n", ns)
    assert not can_i(sa_config, "list", "secrets", "--all-namespaces")
    assert not can_i(sa_config, "get", "secrets", "--all-namespaces")
    assert not can_i(sa_config, "list", "storedflows.flowstore.dev", "--all-namespaces")
    assert can_i(sa_config, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(sa_config, "delete", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(sa_config, "list", "namespaces")
    assert not can_i(sa_config, "delete", "namespaces")
    assert can_i(sa_config, "create", "leases.coordination.k8s.io", "-n", home)
    # the record key: its own Secret by name in the release namespace (made at the first start)
    (key_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-record-key")]
    record_key = key_role["metadata"]["name"]
    assert can_i(sa_config, "get", f"secrets/{record_key}", "-n", home)
    assert can_i(sa_config, "create", "secrets", "-n", home)
    for ns in (watched, unwatched):
        assert not can_i(sa_config, "create", "secrets", "-n", ns)
    assert not can_i(sa_config, "delete", "leases.coordination.k8s.io", "-n", home)
    assert not can_i(sa_config, "create", "serviceaccounts", "--subresource=token", "--all-namespaces")
    # A real TokenRequest with the operator's own token: granted where it watches, refused elsewhere.
    for ns in (watched, unwatched):
        kubectl("create", "serviceaccount", "team-flows", "-n", ns)
    token = kubectl("--kubeconfig", str(sa_config), "create", "token", "team-flows", "-n", watched,
                    "--audience", "sts.amazonaws.com").stdout.strip()
    assert token.count(".") == 2
    refused = kubectl("--kubeconfig", str(sa_config), "create", "token", "team-flows", "-n", unwatched, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()

    # The operator with nothing but the ServiceAccount's token: the flows become Ready.
    directory = local_dir(watched, "flows")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["KUBECONFIG"] = str(sa_config)
    op = OperatorProcess(tmp_path / "logs", env)
    op.log_dir.mkdir()
    # As the chart runs it: with leader election, so the Lease rules are exercised too.
    policy = ["--enable-build-jobs", "--build-image", "registry.example.com/team/*"] if builds else []
    op.start("--namespace", watched, "--namespace", watched2, "--leader-elect", "--lease-namespace", home,
             "--operator-namespace", home, "--record-key-secret", record_key, *policy)
    try:
        apply_each(deleting_local_storage(watched, directory),
                   inline_flow(watched, "inline", "inline flow", storage="local"),
                   configmap_flow(watched, "from-cm", "cm flow", "local"))
        # S3 with a credentials Secret: the Secret is read by name under `get` alone.
        apply_each(s3_storage(watched2, s3_bucket, s3_endpoint), inline_flow(watched2, "s3", "s3 flow"))
        # The same objects in a namespace the operator does not serve stay untouched.
        apply_each(deleting_local_storage(unwatched, directory),
                   inline_flow(unwatched, "ignored", "ignored", storage="local"))
        # spec.build: refused by the operator's policy without builds (no request is tried, so
        # no 403); with them, the chart's RBAC lets it make the Job (its image never pulls here)
        apply(inline_flow(watched2, "built", "built flow", build={"image": "registry.example.com/team/runtime:1"}))
        if builds:
            wait_for_job(watched2, "built")
        else:
            wait_reason(watched2, "built", "BuildNotAllowed", timeout=60)
        inline = wait_ready(watched, "inline", timeout=60)
        assert (directory / inline["status"]["location"]).is_file()
        wait_ready(watched, "from-cm", timeout=60)
        made = json.loads(kubectl("get", "secret", record_key, "-n", home, "-o", "json").stdout)
        assert made["immutable"] is True and len(base64.b64decode(made["data"]["key"])) == 32
        wait_ready(watched2, "s3", timeout=60)
        wait_ready(watched, "local", kind="flowstorage", timeout=60)
        # status.flows follows the flows once they were quiet for a moment (SUMMARY_QUIET)
        storage = wait_listed(watched, "local", 2, timeout=60)
        assert set(storage["status"]["flows"]) == {"inline flow", "cm flow"}
        wait_ready(watched2, "store", kind="flowstorage", timeout=60)
        delete_and_wait(watched, "storedflow/inline", "storedflow/from-cm")  # finalizers released
        assert not (directory / inline["status"]["location"]).exists()  # deletionPolicy: Delete
        delete_and_wait(watched2, "storedflow/s3", "storedflow/built")
        ignored = json.loads(kubectl("get", "storedflow", "ignored", "-n", unwatched, "-o", "json").stdout)
        assert "status" not in ignored and not ignored["metadata"].get("finalizers")
        # Leave nothing behind for the cluster-wide operator of the next test.
        delete_and_wait(unwatched, "storedflow/ignored", "flowstorage/local")
        delete_and_wait(watched, "flowstorage/local")
        delete_and_wait(watched2, "flowstorage/store")
        assert op.alive(), op.logs()
    finally:
        op.stop()
    assert_no_denials(op)


@pytest.mark.parametrize("builds", [False, True], ids=["no-builds", "builds"])
def test_cluster_wide_rbac_runs_the_operator(helm: str, make_namespace: Callable[[], str],
                                             release: str, tmp_path: Path, builds: bool) -> None:
    home, ns = make_namespace(), make_namespace()
    docs = render(helm, release, home, "--set", f"builds.enabled={str(builds).lower()}")
    sa_config = install_rbac(docs, home, tmp_path / "operator.kubeconfig")
    assert set(can_build(sa_config, ns).values()) == {builds}
    assert ("Forbidden" in try_as(sa_config, "create", "job", "probe", "--image=registry.example.com/x:1", "-n", ns,
                                  "--dry-run=server")) is not builds
    assert can_i(sa_config, "get", "secrets", "-n", ns)
    assert not can_i(sa_config, "list", "secrets", "--all-namespaces")
    assert not can_i(sa_config, "list", "namespaces")  # cluster-wide kopf never lists them
    assert can_i(sa_config, "list", "storedflows.flowstore.dev", "--all-namespaces")
    assert not can_i(sa_config, "delete", "storedflows.flowstore.dev", "-n", ns)
    assert can_i(sa_config, "create", "serviceaccounts", "--subresource=token", "-n", ns)
    assert can_i(sa_config, "get", "serviceaccounts", "-n", ns)
    assert not can_i(sa_config, "list", "serviceaccounts", "--all-namespaces")

    directory = local_dir(ns, "flows")
    env = {**os.environ, "KUBECONFIG": str(sa_config)}
    op = OperatorProcess(tmp_path / "logs", env)
    op.log_dir.mkdir()
    (key_role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-record-key")]
    op.start("--operator-namespace", home, "--record-key-secret", key_role["metadata"]["name"])
    try:
        apply_each(deleting_local_storage(ns, directory), inline_flow(ns, "inline", "inline flow", storage="local"))
        inline = wait_ready(ns, "inline", timeout=60)
        assert (directory / inline["status"]["location"]).is_file()
        delete_and_wait(ns, "storedflow/inline", "flowstorage/local")
        assert op.alive(), op.logs()
    finally:
        op.stop()
    assert_no_denials(op)
