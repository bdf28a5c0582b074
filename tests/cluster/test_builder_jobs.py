"""Builder Jobs on the real node (spec.build): a flow's code runs in its own runtime image as a
locked-down Job, never in the operator, and the pickled flow comes back through the Job's log.

The operator runs here as a local process (the admin kubeconfig) watching the test's namespace;
its Jobs run on the local cloud's node, pulling the runtime image (Python 3.11, prefect 1.4.1,
cloudpickle: examples/runtime/prefect1) from the local registry with an imagePullSecret. Agents
are Prefect 1.4.1 in a virtualenv of their own with flowstore's client (tests/helpers/prefect1.py).
The chart's RBAC for Jobs is exercised by the operator Pod in test_operator_pod.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.cluster.conftest import NO_PYTHON_IMAGE, pull_secret
from tests.helpers import prefect1
from tests.helpers.gitrepo import LocalGitRepo
from tests.helpers.kube import apply, condition, get, kubectl, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import manifests, s3_storage, secret, stored_flow
from tests.helpers.operator import OperatorProcess

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prefect1" / "flows" / "orders"
MANAGED = "app.kubernetes.io/managed-by=flowstore"

#: the Prefect 1.x flow of the issue: two tasks, `with Flow(...) as flow`
PREFECT_ETL = '''\
from prefect import Flow, task


@task
def extract():
    return [1, 2, 3]


@task
def load(rows):
    return sum(rows)


with Flow("prefect etl") as flow:
    total = load(extract())
'''


def prefect_etl(flow_name: str) -> str:
    """PREFECT_ETL with another flow name (names are unique per FlowStorage)."""
    return PREFECT_ETL.replace('Flow("prefect etl")', f"Flow({flow_name!r})")

#: a flow that reports, from inside the builder Job, what the flow's code could see and do there
PROBE = '''\
import os


def _probe():
    seen = {"uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME")}
    seen["token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
    seen["env"] = sorted(k for k in os.environ if k.startswith(("AWS_", "AZURE_", "GOOGLE_", "GIT_", "FLOWSTORE")))
    try:
        open("/probe", "w")
        seen["root_writable"] = True
    except OSError:
        seen["root_writable"] = False
    with open(os.path.join(os.environ["HOME"], "scratch"), "w") as fh:
        seen["home_writable"] = fh.write("x") == 1
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    seen["cap_eff"] = status["CapEff"].strip()
    seen["no_new_privs"] = status["NoNewPrivs"].strip()
    seen["seccomp"] = status["Seccomp"].strip()
    return seen


class Probe:
    name = "probe"

    def __init__(self):
        self.seen = _probe()

    def run(self):
        return self.seen


flow = Probe()
'''


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def ns(new_namespace: Callable[[], str], docker_env: dict[str, str], crds: None) -> str:
    """A namespace with the registry's pull Secret ("registry"); the CRDs applied."""
    name = new_namespace()
    pull_secret(name, docker_env)
    return name


@pytest.fixture
def start_operator(tmp_path: Path, kube_env: dict[str, str]) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator(namespace, *args)`: `flowstore operator -n namespace` as a local process
    (no prefect in its environment), builder Jobs enabled for any image (these tests try images
    that cannot build too); stopped afterwards. The build policy itself: tests/e2e/test_security.py."""
    started: list[OperatorProcess] = []

    def start(namespace: str, *args: str) -> OperatorProcess:
        op = OperatorProcess(tmp_path / f"op{len(started)}", dict(os.environ))
        op.log_dir.mkdir()
        op.start("-n", namespace, "--enable-build-jobs", "--build-image", "*", *args)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


class JobRecorder:
    """Watches a namespace's builder Jobs: every Job created (by name and uid), and the most
    that were active at once."""

    def __init__(self, namespace: str) -> None:
        config.load_kube_config()
        self.batch = client.BatchV1Api()
        self.namespace = namespace
        self.created: dict[str, str] = {}  # uid -> name
        self.active: set[str] = set()
        self.most_active = 0
        self._watch = watch.Watch()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            try:
                self._follow()
            except Exception:  # the API server ended the watch: watch again
                time.sleep(0.2)

    def _follow(self) -> None:
        for event in self._watch.stream(self.batch.list_namespaced_job, self.namespace, label_selector=MANAGED,
                                        timeout_seconds=600):
            job = event["object"]
            uid, name = job.metadata.uid, job.metadata.name
            done = bool(job.status and (job.status.succeeded or job.status.failed)) or event["type"] == "DELETED" \
                or job.metadata.deletion_timestamp is not None
            self.created.setdefault(uid, name)
            if done:
                self.active.discard(uid)
            else:
                self.active.add(uid)
            self.most_active = max(self.most_active, len(self.active))

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


@pytest.fixture
def jobs(ns: str) -> Iterator[JobRecorder]:
    recorder = JobRecorder(ns)
    time.sleep(0.5)  # the watch is established
    yield recorder
    recorder.stop()


def built_storage(namespace: str, bucket: str, endpoint: str, image: str, name: str = "store",
                  **build: Any) -> str:
    return s3_storage(namespace, bucket, endpoint, name=name, key_prefix=f"{name}/",
                      build={"image": image, "imagePullSecrets": [{"name": "registry"}], **build})


def script_flow(namespace: str, name: str, flow_name: str, script: str, storage: str = "store",
                **spec: Any) -> str:
    return manifests(stored_flow(namespace, name, flow_name, {"inline": script}, storage, **spec))


def orders_report(namespace: str, storage: str = "store") -> str:
    """The example's three files (flow, helper module, SQL file) as a ConfigMap and a StoredFlow."""
    files = {p.name: p.read_text() for p in EXAMPLE.rglob("*") if p.is_file()}
    return manifests(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orders-files", "namespace": namespace},
         "data": files},
        {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
         "metadata": {"name": "orders-report", "namespace": namespace},
         "spec": {"storageRef": {"name": storage}, "flowName": "orders report", "entrypoint": "orders_report.py:flow",
                  "source": {"configMapRef": {"name": "orders-files", "items": [
                      {"key": "orders_report.py", "path": "orders_report.py"},
                      {"key": "report_lib.py", "path": "report_lib.py"},
                      {"key": "top_customers.sql", "path": "queries/top_customers.sql"}]}}}})


def leftovers(namespace: str) -> list[str]:
    return kubectl("get", "jobs,configmaps,pods", "-n", namespace, "-l", MANAGED, "-o", "name").stdout.split()


def wait_cleaned_up(namespace: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (left := leftovers(namespace)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"builder objects left behind: {left}"


LOAD_AND_RUN = """
from flowstore.client import load_flow
import prefect
out = {}
for name in payload["names"]:
    flow = load_flow(name, payload["namespace"])
    state = flow.run()
    results = {task.name: r.result for task, r in state.result.items()}
    out[name] = {"type": type(flow).__module__ + "." + type(flow).__name__, "successful": state.is_successful(),
                 "state": type(state).__name__, "results": results}
answer(out)
"""


# ---------------------------------------------------------------------- a real Prefect flow
def test_prefect_flows_are_built_in_their_image_and_run_by_a_prefect_1_agent(
        ns: str, start_operator: Callable[..., OperatorProcess], runtime_image: str, s3_endpoint: str,
        s3_bucket: str, jobs: JobRecorder) -> None:
    # The operator's own environment has no prefect: the build must happen in the image.
    assert subprocess.run([sys.executable, "-c", "import prefect"], capture_output=True).returncode != 0
    op = start_operator(ns)
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    apply(script_flow(ns, "prefect-etl", "prefect etl", PREFECT_ETL))
    apply(orders_report(ns))
    statuses = {name: wait_ready(ns, name, timeout=240)["status"] for name in ("prefect-etl", "orders-report")}

    for status in statuses.values():
        versions = status["artifact"]["versions"]
        # the image's Python, cloudpickle and prefect, not the operator's
        assert versions["prefect"] == "1.4.1", versions
        assert versions["python"] == prefect_image_python(runtime_image), versions
        assert status["artifact"]["format"] == "pickle"
    assert statuses["orders-report"]["artifact"]["fileCount"] == 3
    # one Job per flow, and nothing left of them
    assert sorted(jobs.created.values()) == sorted(set(jobs.created.values())) and len(jobs.created) == 2
    wait_cleaned_up(ns)
    assert "Traceback" not in op.logs()

    # A Prefect 1.4.1 agent with flowstore's client: digest-verified load, then flow.run().
    env = {"KUBECONFIG": os.environ["KUBECONFIG"], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    ran = prefect1.run_agent(LOAD_AND_RUN, {"names": ["prefect-etl", "orders-report"], "namespace": ns}, env=env)
    assert ran["prefect-etl"]["type"] == "prefect.core.flow.Flow"
    assert ran["prefect-etl"]["successful"] and ran["prefect-etl"]["state"] == "Success", ran
    assert ran["prefect-etl"]["results"]["load"] == 6
    orders = ran["orders-report"]
    assert orders["successful"] and orders["state"] == "Success", orders
    # the helper module and the SQL file came with the flow
    assert orders["results"]["publish"] == 3
    assert orders["results"]["transform"] == ["acme         150.00", "initech       99.90", "globex        85.50"]


def prefect_image_python(image: str) -> str:
    """The Python version of the runtime image (run here with podman, from its local name)."""
    done = subprocess.run(["podman", "run", "--rm", "localhost/flowstore-runtime-prefect1:1.4.1", "python3", "-c",
                           "import platform; print(platform.python_version())"], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_a_git_flow_is_checked_in_its_image(ns: str, start_operator: Callable[..., OperatorProcess],
                                           runtime_image: str, git_server: dict[str, str]) -> None:
    """storedAsScript on git (the file stays in the repository) with checkFlow: the flow is
    loaded in the runtime image before its commit is pinned; a file without the flow is not."""
    repo = LocalGitRepo(Path(git_server["root"]))
    files = {f"flows/orders/{p.relative_to(EXAMPLE)}": p.read_bytes() for p in EXAMPLE.rglob("*") if p.is_file()}
    commit = repo.commit({**files, "flows/etl.py": PREFECT_ETL.encode()})
    start_operator(ns)
    storage = {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
               "metadata": {"name": "repo", "namespace": ns},
               "spec": {"git": {"url": f"{git_server['url']}/{repo.name}.git", "credentialsSecretRef": {"name": "git"},
                                "checkFlow": True},
                        "build": {"image": runtime_image, "imagePullSecrets": [{"name": "registry"}]}}}

    def flow(name: str, flow_name: str, path: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"storageRef": {"name": "repo"}, "flowName": flow_name, "source": {"path": path}, **spec}}

    apply(manifests(secret(ns, "git", {"GIT_USERNAME": git_server["username"], "GIT_PASSWORD": git_server["password"]}),
                    storage, flow("etl", "prefect etl", "flows/etl.py"),
                    flow("orders", "orders report", "flows/orders", entrypoint="orders_report.py"),
                    flow("wrong-name", "nightly etl", "flows/etl.py")))
    for name in ("etl", "orders"):
        status = wait_ready(ns, name, timeout=240)["status"]
        assert status["git"]["commit"] == commit
        assert status["artifact"]["format"] in ("script", "bundle")
    failed = wait_reason(ns, "wrong-name", "FlowNotFound", timeout=240)
    assert "no object whose name is 'nightly etl'" in condition(failed)["message"]
    assert "git" not in failed.get("status", {}) or failed["status"]["git"].get("commit") is None
    wait_cleaned_up(ns)


# ---------------------------------------------------------------------- the Job itself
def test_the_builder_job_is_locked_down_and_owned_by_its_flow(
        ns: str, start_operator: Callable[..., OperatorProcess], runtime_image: str, s3_endpoint: str,
        s3_bucket: str) -> None:
    start_operator(ns)
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image, timeoutSeconds=90))
    # Slow to load (8 s) so that the Job can be looked at while it runs.
    apply(script_flow(ns, "probe", "probe", "import time\ntime.sleep(8)\n" + PROBE))
    job = wait_job(ns, "probe")
    spec = job["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 90 + 60
    assert spec["template"]["spec"]["activeDeadlineSeconds"] == 90
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 5  # nothing to save midway
    assert spec["ttlSecondsAfterFinished"] > 0
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("StoredFlow", "probe", get("storedflow", ns, "probe")
                                                            ["metadata"]["uid"])
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod.get("serviceAccountName") in (None, "default")
    assert pod["enableServiceLinks"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == runtime_image
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert not [e for e in container.get("env", []) if "valueFrom" in e or e["name"].startswith(("AWS", "AZURE"))]
    # kubectl finds a flow's builds by label; the ConfigMap with the program is the Job's own
    assert kubectl("get", "jobs", "-n", ns, "-l", "flowstore.dev/storedflow=probe", "-o", "name").stdout.strip() \
        == f"job.batch/{job['metadata']['name']}"
    configmap = get("configmap", ns, job["metadata"]["name"])
    assert set(configmap["data"]) == {"builder.py", "bundle.py"} and set(configmap["binaryData"]) == {"request.json"}
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == owner["uid"]

    # What the flow's code saw inside the Job: non-root with a writable HOME, read-only root,
    # no token, no credentials, no capabilities, no privilege escalation, seccomp on.
    wait_ready(ns, "probe", timeout=120)
    from flowstore.client import load_flow

    seen = load_flow("probe", ns).run()
    assert (seen["uid"], seen["gid"]) == (65532, 65532), seen
    assert seen["home_writable"] and not seen["root_writable"], seen
    assert seen["token"] is False and seen["env"] == [], seen
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1" and seen["seccomp"] == "2", seen
    wait_cleaned_up(ns)


def wait_job(namespace: str, flow: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = json.loads(kubectl("get", "jobs", "-n", namespace, "-l", f"flowstore.dev/storedflow={flow}",
                                   "-o", "json").stdout)["items"]
        if found:
            return found[0]  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"no builder Job for {flow} in {timeout:.0f} s")


def test_deleting_the_flow_mid_build_deletes_its_job(ns: str, start_operator: Callable[..., OperatorProcess],
                                                    runtime_image: str, s3_endpoint: str, s3_bucket: str) -> None:
    start_operator(ns)
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    apply(script_flow(ns, "slow", "prefect etl", "import time\ntime.sleep(60)\n" + PREFECT_ETL))
    wait_job(ns, "slow")
    kubectl("delete", "storedflow", "slow", "-n", ns, "--timeout=60s")
    wait_cleaned_up(ns, timeout=60)


# ---------------------------------------------------------------------- failures
FAILING = {
    # name: (script, reason, words the message must hold)
    "raises": ("print('loading the flow')\nraise ValueError('no database today')\n", "ScriptFailed",
               ["ValueError: no database today", "loading the flow"]),
    "syntax": ("def broken(:\n    pass\n", "ScriptSyntaxError", ["syntax error at line 1"]),
    "no-flow": ("x = 1\n", "FlowNotFound", ["no object whose name is 'no-flow'"]),
    "unpicklable": (PREFECT_ETL + "import threading\nflow.lock = threading.Lock()\n", "Unpicklable",
                    ["cannot be pickled", "lock"]),
}


def test_each_build_failure_says_what_and_the_others_still_build(
        ns: str, start_operator: Callable[..., OperatorProcess], runtime_image: str, plain_python_image: str,
        s3_endpoint: str, s3_bucket: str) -> None:
    start_operator(ns, "--max-build-jobs", "8")
    registry = runtime_image.split("/", 1)[0]
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    for name, (script, _, _) in FAILING.items():
        apply(script_flow(ns, name, name, script.replace("prefect etl", name)))
    # StoredFlows overriding spec.build as a whole
    overrides = {
        "no-python": {"image": NO_PYTHON_IMAGE, "imagePullPolicy": "Never"},
        "no-cloudpickle": {"image": plain_python_image, "imagePullSecrets": [{"name": "registry"}]},
        "no-such-image": {"image": f"{registry}/flowstore/no-such-image:1", "imagePullSecrets": [{"name": "registry"}],
                          "timeoutSeconds": 20},
        # (Always: with the image on the node already, IfNotPresent would not ask the registry)
        "no-pull-secret": {"image": runtime_image, "imagePullPolicy": "Always", "timeoutSeconds": 20},
        "deadline": {"image": runtime_image, "imagePullSecrets": [{"name": "registry"}], "timeoutSeconds": 10},
        "oom": {"image": runtime_image, "imagePullSecrets": [{"name": "registry"}],
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "32Mi"}}},
    }
    scripts = {"deadline": "import time\nprint('still loading')\ntime.sleep(600)\n" + PREFECT_ETL,
               "oom": "hog = bytearray(1024 * 1024 * 1024)\n" + PREFECT_ETL}
    for name, build in overrides.items():
        apply(script_flow(ns, name, name, scripts.get(name, PREFECT_ETL).replace("prefect etl", name), build=build))
    apply(script_flow(ns, "fine", "fine", prefect_etl("fine")))

    expected = {name: (reason, words) for name, (_, reason, words) in FAILING.items()}
    expected |= {
        "no-python": ("BuildImageUnusable", [NO_PYTHON_IMAGE, "no python3"]),
        "no-cloudpickle": ("BuildImageUnusable", [plain_python_image, "cannot import cloudpickle"]),
        "no-such-image": ("ImagePullFailed", ["cannot pull the build image", "no-such-image", "imagePullSecrets"]),
        "no-pull-secret": ("ImagePullFailed", ["cannot pull the build image", runtime_image]),
        "deadline": ("BuildTimeout", ["timeoutSeconds (10 s)", "still loading"]),
        "oom": ("BuildOutOfMemory", ["ran out of memory", "64Mi"]),
    }
    wait_ready(ns, "fine", timeout=240)
    for name, (reason, words) in expected.items():
        obj = wait_reason(ns, name, reason, timeout=240)
        message = condition(obj)["message"]
        for word in words:
            assert word in message, (name, message)
        assert "testing" not in message  # no credential ever reaches a message
    # Pull failures are temporary at first (the kubelet retries), then stalled after the bound.
    for name in ("no-such-image", "no-pull-secret"):
        obj = wait_for("storedflow", ns, name, lambda o: condition(o, "Stalled").get("status") == "True", timeout=120,
                       what="to stall")
        assert "gave up after" in condition(obj)["message"]
    described = kubectl("describe", "storedflow", "no-cloudpickle", "-n", ns).stdout
    assert "BuildImageUnusable" in described and "pip install cloudpickle" in described
    wait_cleaned_up(ns, timeout=60)


# ---------------------------------------------------------------------- idempotence and faults
def test_a_restarted_operator_adopts_the_running_job(ns: str, start_operator: Callable[..., OperatorProcess],
                                                     runtime_image: str, s3_endpoint: str, s3_bucket: str,
                                                     jobs: JobRecorder) -> None:
    op = start_operator(ns)
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    apply(script_flow(ns, "slow", "prefect etl", "import time\ntime.sleep(10)\n" + PREFECT_ETL))
    first = wait_job(ns, "slow")
    op.stop(signal.SIGKILL)
    op.start("-n", ns, "--enable-build-jobs", "--build-image", "*")  # the same operator, restarted
    status = wait_ready(ns, "slow", timeout=120)["status"]
    assert list(jobs.created) == [first["metadata"]["uid"]], jobs.created
    assert status["artifact"]["versions"]["prefect"] == "1.4.1"
    wait_cleaned_up(ns)


def test_a_spec_change_mid_build_deletes_the_stale_job(ns: str, start_operator: Callable[..., OperatorProcess],
                                                       runtime_image: str, s3_endpoint: str, s3_bucket: str,
                                                       jobs: JobRecorder) -> None:
    start_operator(ns)
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    apply(script_flow(ns, "changing", "prefect etl", "import time\ntime.sleep(120)\n" + PREFECT_ETL))
    stale = wait_job(ns, "changing")["metadata"]["name"]
    apply(script_flow(ns, "changing", "prefect etl", PREFECT_ETL))
    wait_ready(ns, "changing", timeout=120)
    assert len(jobs.created) == 2, jobs.created
    # the stale Job went as soon as the new one started, not at its deadline
    assert kubectl("get", "job", stale, "-n", ns, check=False).returncode != 0
    wait_cleaned_up(ns)


def test_at_most_max_build_jobs_run_and_the_others_wait(ns: str, start_operator: Callable[..., OperatorProcess],
                                                        runtime_image: str, s3_endpoint: str, s3_bucket: str,
                                                        jobs: JobRecorder) -> None:
    start_operator(ns, "--max-build-jobs", "2")
    apply(built_storage(ns, s3_bucket, s3_endpoint, runtime_image))
    names = [f"flow-{i}" for i in range(6)]
    for name in names:
        apply(script_flow(ns, name, name, "import time\ntime.sleep(3)\n" + prefect_etl(name)))
    waiting_seen = ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        objs = json.loads(kubectl("get", "storedflows", "-n", ns, "-o", "json").stdout)["items"]
        for obj in objs:
            message = condition(obj, "Reconciling").get("message", "")
            if "Waiting for a build slot" in message:
                waiting_seen = message
        if all(condition(o).get("status") == "True" for o in objs) and len(objs) == len(names):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("not every flow became Ready")
    assert jobs.most_active <= 2, jobs.most_active
    assert len(jobs.created) == len(names)
    assert "--max-build-jobs 2" in waiting_seen, waiting_seen
    wait_cleaned_up(ns)
