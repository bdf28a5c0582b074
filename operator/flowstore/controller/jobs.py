"""Builder Jobs: a flow's code runs in its own runtime image (``spec.build``), never in the
operator, with no credentials; the pickled flow comes back through the Pod's log.

One Job per build request, named after its digest (``flowstore-build-<16 hex>``): a resync or
an operator restart mid-build finds the running Job and waits for it rather than starting
another, and a spec change mid-build deletes the stale Job of that StoredFlow. The Job mounts a
ConfigMap of the same name holding the builder program (``flowstore/artifacts/builder.py`` and
``bundle.py``: standard library and cloudpickle only) and the request. Both are owned by the
StoredFlow (deleting it deletes them) and deleted once the result is read.

The Job is locked down: no ServiceAccount token (unless spec.build names an account), non-root
uid/gid 65532 with HOME and TMPDIR on an emptyDir, read-only root filesystem, every capability
dropped, seccomp RuntimeDefault, no privilege escalation, no service links, backoffLimit 0, the
Pod's activeDeadlineSeconds (the build's timeout; the Job's is a minute longer, for a Pod that
never starts), ttlSecondsAfterFinished as a backstop.

The result: the builder prints a frame (``artifacts/builder.frame``) on stdout; the operator
reads the log through the API (``pods/log``), checks the sha256 and size the builder computed,
and the pickle goes on as a sandbox build's would. Its size is bounded (MAX_RESULT_BYTES) so the
log stays well within the kubelet's rotation size (10 MiB by default).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from flowstore.api.constants import (
    API_VERSION,
    BUILD_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    STOREDFLOW_KIND,
    STOREDFLOW_LABEL,
    Reason,
)
from flowstore.api.models import BuildSpec
from flowstore.artifacts import builder, bundle
from flowstore.controller.policy import BuildPolicy
from flowstore.reconcile.failures import ClusterUnavailable, ReconcileError
from flowstore.reconcile.ports import BuildRequest, Pending
from flowstore.sandbox import BuildError, Built, MalformedReply, reply_failure, reply_header, reply_versions

log = logging.getLogger(__name__)

#: what the builder sends back through its log, at most (base64 makes it 4/3 as long)
MAX_RESULT_BYTES = 6 * 1024 * 1024
#: what goes to the builder through its ConfigMap, at most (a ConfigMap holds 1 MiB)
MAX_REQUEST_BYTES = 700 * 1024
#: an image that cannot be pulled for this long (or for spec.build.timeoutSeconds, when shorter)
#: stalls the StoredFlow; before that it is temporary (the kubelet retries the pull with backoff)
IMAGE_PULL_BOUND_SECONDS = 120.0
#: the Job's own deadline exceeds its Pod's (the build's) by this much
JOB_DEADLINE_MARGIN = 60
#: seconds a builder Pod gets between SIGTERM and SIGKILL when its Job is deleted
BUILD_GRACE_SECONDS = 5
#: a finished Job the operator did not get to clean up goes by itself after this long
TTL_AFTER_FINISHED = 600
BUILD_UID = 65532
#: the builder Pod's writable scratch: an emptyDir, HOME and TMPDIR
SCRATCH = "/tmp"  # noqa: S108 - a path in the builder Pod, its own emptyDir
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
_PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
#: pull failures remembered at most (one per Job whose image is failing to pull)
MAX_REMEMBERED_PULL_FAILURES = 256
_START_FAILURES = {"CreateContainerError", "CreateContainerConfigError", "RunContainerError", "StartError",
                   "ContainerCannotRun"}


def job_name(request: BuildRequest) -> str:
    return "flowstore-build-" + request.digest.removeprefix("sha256:")[:16]


@dataclasses.dataclass
class _Job:
    """What the operator knows of one of its Jobs."""

    name: str
    namespace: str
    nonce: str
    image: str


class JobBuilder:
    """Runs builds as Jobs; at most `max_jobs` of this operator's Jobs run at once."""

    def __init__(self, api: client.ApiClient, *, max_jobs: int = 4, policy: BuildPolicy | None = None) -> None:
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.max_jobs = max_jobs
        self.policy = policy or BuildPolicy()
        self._lock = threading.Lock()
        #: (namespace, Job name) of the Jobs this operator started or adopted and has not finished
        self._running: set[tuple[str, str]] = set()
        #: (namespace, Job name) -> the last pull failure its Pod showed (reason, message). A Pod
        #: stopped at its deadline no longer says why its image never arrived (kubelets since
        #: 1.3x report the never-started container as terminated, ContainerStatusUnknown), so
        #: the message that ends the build comes from what was seen while it waited.
        self._pull_failures: dict[tuple[str, str], tuple[str, str]] = {}
        program = Path(builder.__file__).resolve().parent
        self._program = {"builder.py": (program / "builder.py").read_text(),
                         "bundle.py": (Path(bundle.__file__).resolve()).read_text()}

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # ------------------------------------------------------------------ the one entry point
    def build(self, request: BuildRequest) -> Built | Pending:
        assert request.spec is not None
        refusal = self.policy.refusal(request.spec)
        if refusal is not None:  # before anything is read or made: the spec asks for what it may not
            raise ReconcileError(Reason.BUILD_NOT_ALLOWED, refusal, stalled=True)
        name = job_name(request)
        job = self._get_job(request.namespace, name)
        if job is None:
            return self._start(request, name)
        with self._lock:
            self._running.add((request.namespace, name))  # adopted after a restart, or ours
        nonce = str((_meta(job).annotations or {}).get("flowstore.dev/nonce", ""))
        status = job.status or client.V1JobStatus()
        if status.succeeded:
            return self._finish(request, name, nonce)
        failed = next((c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None)
        if failed is not None:
            self._fail(request, name, nonce, failed)
        return self._watch_pod(request, name, job, nonce)

    # ------------------------------------------------------------------ starting
    def _start(self, request: BuildRequest, name: str) -> Pending:
        spec = request.spec
        assert spec is not None
        self._delete_stale(request, name)
        payload = json.dumps({
            **({"bundle": base64.b64encode(request.source).decode()} if request.bundle
               else {"source": base64.b64encode(request.source).decode()}),
            "flow_name": request.flow_name, "object_name": request.object_name,
        }).encode()
        if len(payload) > MAX_REQUEST_BYTES:
            raise BuildError(Reason.BUILD_TOO_LARGE, (
                f"the flow's source is {len(request.source)} bytes, more than a builder Job takes "
                f"({MAX_REQUEST_BYTES // 1024} KiB through its ConfigMap); leave out what the flow does not need "
                "(spec.source.ignore), or build it in the operator's sandbox (no spec.build)"))
        with self._lock:
            if len(self._running) >= self.max_jobs:
                return Pending(f"Waiting for a build slot: {len(self._running)} builder Jobs are running "
                               f"(--max-build-jobs {self.max_jobs})", retry_after=2.0)
            self._running.add((request.namespace, name))
        nonce = secrets.token_hex(8)
        # owned by the StoredFlow: deleting it deletes them (no blockOwnerDeletion, which would need
        # update on storedflows/finalizers where OwnerReferencesPermissionEnforcement is on)
        owner = [client.V1OwnerReference(api_version=API_VERSION, kind=STOREDFLOW_KIND, name=request.owner_name,
                                          uid=request.owner_uid)]
        labels = {MANAGED_BY_LABEL: MANAGED_BY, STOREDFLOW_LABEL: request.owner_name, BUILD_LABEL: name[-16:]}
        request_json = json.dumps({"nonce": nonce, **json.loads(payload)}).encode()
        configmap = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, namespace=request.namespace, labels=labels, owner_references=owner),
            data=self._program, binary_data={"request.json": base64.b64encode(request_json).decode()})
        job = self._job(request, spec, name, nonce, labels, owner)
        try:
            self._create(lambda: self.core.create_namespaced_config_map(request.namespace, configmap),
                         "configmaps", request.namespace)
            self._create(lambda: self.batch.create_namespaced_job(request.namespace, job), "jobs.batch",
                         request.namespace)
        except BaseException:
            with self._lock:
                self._running.discard((request.namespace, name))
            raise
        log.info("started builder Job %s/%s in image %s", request.namespace, name, spec.image)
        return Pending(f"Building flow {request.flow_name!r} in image {spec.image}: Job {name}", retry_after=0.5)

    def _job(self, request: BuildRequest, spec: BuildSpec, name: str, nonce: str, labels: dict[str, str],
             owner: list[client.V1OwnerReference]) -> client.V1Job:
        container = client.V1Container(
            name="build", image=spec.image, image_pull_policy=spec.image_pull_policy,
            command=["python3", "-B", "/flowstore/builder.py", "/flowstore/request.json"],
            # /tmp is the Pod's own emptyDir (the root filesystem is read-only)
            env=[client.V1EnvVar(name=k, value=v) for k, v in
                 (("HOME", SCRATCH), ("TMPDIR", SCRATCH), ("PYTHONUNBUFFERED", "1"), ("PYTHONDONTWRITEBYTECODE", "1"))],
            resources=client.V1ResourceRequirements(**_resources(spec)),
            security_context=client.V1SecurityContext(
                allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
                run_as_user=BUILD_UID, run_as_group=BUILD_UID, capabilities=client.V1Capabilities(drop=["ALL"])),
            volume_mounts=[client.V1VolumeMount(name="program", mount_path="/flowstore", read_only=True),
                           client.V1VolumeMount(name="scratch", mount_path=SCRATCH)],
        )
        pod = client.V1PodSpec(
            restart_policy="Never", active_deadline_seconds=spec.timeout_seconds, containers=[container],
            # a build stopped midway (its flow changed or was deleted) has nothing to save
            termination_grace_period_seconds=BUILD_GRACE_SECONDS,
            enable_service_links=False,
            automount_service_account_token=bool(spec.service_account_name),
            service_account_name=spec.service_account_name,
            image_pull_secrets=[client.V1LocalObjectReference(name=s) for s in spec.image_pull_secrets] or None,
            node_selector=dict(spec.node_selector) or None,
            tolerations=[client.V1Toleration(**{_snake(k): v for k, v in t.items()}) for t in spec.tolerations] or None,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=BUILD_UID, run_as_group=BUILD_UID, fs_group=BUILD_UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")),
            volumes=[client.V1Volume(name="program", config_map=client.V1ConfigMapVolumeSource(name=name)),
                     client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource(size_limit="1Gi"))],
        )
        return client.V1Job(
            metadata=client.V1ObjectMeta(name=name, namespace=request.namespace, labels=labels, owner_references=owner,
                                         annotations={"flowstore.dev/nonce": nonce,
                                                      "flowstore.dev/flow-name": request.flow_name[:253]}),
            # the Pod's deadline is the build's (its log stays readable after); the Job's is a
            # backstop for a Pod that never starts (unschedulable)
            spec=client.V1JobSpec(backoff_limit=0, ttl_seconds_after_finished=TTL_AFTER_FINISHED,
                                  active_deadline_seconds=spec.timeout_seconds + JOB_DEADLINE_MARGIN,
                                  template=client.V1PodTemplateSpec(
                                      metadata=client.V1ObjectMeta(labels=labels), spec=pod)))

    def _create(self, call: Any, what: str, namespace: str) -> None:
        try:
            call()
        except ApiException as exc:
            if exc.status == 409:  # made by an earlier pass that did not get to record it
                return
            if exc.status == 403:
                raise ReconcileError(Reason.BUILD_FORBIDDEN, (
                    f"the operator may not create {what} in namespace {namespace!r}, which builds in the flow's "
                    f"image (spec.build) need: grant it create, get, list and delete on {what}, get and list on "
                    "pods and get on pods/log there (the Helm chart's RBAC does, for the namespaces it watches)"),
                    stalled=True) from None
            raise ClusterUnavailable(f"creating {what}: HTTP {exc.status} {exc.reason}") from None

    # ------------------------------------------------------------------ while it runs
    def _watch_pod(self, request: BuildRequest, name: str, job: client.V1Job, nonce: str) -> Built | Pending:
        pod = self._pod(request.namespace, name)
        image = (request.spec.image if request.spec else "?")
        if pod is None:
            return Pending(f"Building flow {request.flow_name!r} in image {image}: Job {name} (waiting for its Pod)")
        for status in (pod.status.container_statuses or []) if pod.status else []:
            waiting = status.state.waiting if status.state else None
            if waiting is None:
                continue
            if waiting.reason in _PULL_FAILURES:
                with self._lock:
                    self._pull_failures.pop((request.namespace, name), None)
                    self._pull_failures[(request.namespace, name)] = (str(waiting.reason), str(waiting.message or ""))
                    while len(self._pull_failures) > MAX_REMEMBERED_PULL_FAILURES:
                        del self._pull_failures[next(iter(self._pull_failures))]
                started = _meta(job).creation_timestamp or dt.datetime.now(dt.UTC)
                waited = (dt.datetime.now(dt.UTC) - started).total_seconds()
                message = _pull_failure(image, waiting)
                bound = min(IMAGE_PULL_BOUND_SECONDS, float(request.spec.timeout_seconds if request.spec else 0))
                if waited >= bound or waiting.reason in ("InvalidImageName", "ErrImageNeverPull"):
                    with self._lock:
                        self._pull_failures.pop((request.namespace, name), None)
                    self._cleanup(request.namespace, name)
                    raise ReconcileError(Reason.IMAGE_PULL_FAILED, message + f"; gave up after {waited:.0f} s",
                                         stalled=True)
                raise ReconcileError(Reason.IMAGE_PULL_FAILED,
                                     message + f"; the kubelet keeps retrying for up to {bound:.0f} s",
                                     stalled=False, retry_after=5.0)
            if waiting.reason in _START_FAILURES:
                self._cleanup(request.namespace, name)
                raise BuildError(Reason.BUILD_IMAGE_UNUSABLE, _start_failure(image, waiting.message or waiting.reason))
        phase = pod.status.phase if pod.status else "Pending"
        # the kubelet reports a started container a second or so late: try the log once the Pod
        # is on a node (until its container starts, the API answers 400 at once)
        if pod.spec and pod.spec.node_name:
            early = self._early_result(request, name, nonce, pod)
            if early is not None:
                return early
        return Pending(f"Building flow {request.flow_name!r} in image {image}: Job {name} ({phase})", retry_after=0.5)

    # ------------------------------------------------------------------ when it ended
    def _early_result(self, request: BuildRequest, name: str, nonce: str, pod: client.V1Pod) -> Built | None:
        """A successful result already in the log of a Pod that has not finished (or whose end
        the kubelet and the Job controller have not reported yet: a second or two saved). A
        failure waits for the end, so that its message has all of the output."""
        try:
            text = self._log(request.namespace, name, attempts=1, pod=pod)
            result = builder.unframe(text, nonce)
        except (ClusterUnavailable, ValueError):
            return None
        if result is None or not isinstance(result[0], dict) or result[0].get("ok") is not True:
            return None
        return self._result(request, name, nonce, text)

    def _finish(self, request: BuildRequest, name: str, nonce: str) -> Built:
        return self._result(request, name, nonce, self._log(request.namespace, name))

    def _result(self, request: BuildRequest, name: str, nonce: str, text: str) -> Built:
        """The build's result from its log; the Job and its ConfigMap are deleted whatever the
        log holds."""
        self._cleanup(request.namespace, name)
        return result_from_log(text, nonce, job=name, image=request.spec.image if request.spec else "?")

    def _fail(self, request: BuildRequest, name: str, nonce: str, failed: Any) -> None:
        """The Job failed: say why (deadline, memory, the image, the script) and clean up."""
        spec = request.spec
        assert spec is not None
        pod = self._pod(request.namespace, name)
        terminated = next((s.state.terminated for s in (pod.status.container_statuses or [])
                           if s.state and s.state.terminated), None) if pod and pod.status else None
        waiting = next((s.state.waiting for s in (pod.status.container_statuses or [])
                        if s.state and s.state.waiting), None) if pod and pod.status else None
        with self._lock:
            seen = self._pull_failures.pop((request.namespace, name), None)
        text = ""
        if pod is not None and waiting is None:  # its output, for the message, if it can still be read
            try:
                text = self._log(request.namespace, name)
            except ClusterUnavailable:
                text = ""
        self._cleanup(request.namespace, name)
        pod_deadline = bool(pod and pod.status and pod.status.reason == "DeadlineExceeded")
        if failed.reason == "DeadlineExceeded" or pod_deadline:
            statuses = (pod.status.container_statuses or []) if pod and pod.status else []
            if waiting is not None and waiting.reason in _PULL_FAILURES:
                raise ReconcileError(Reason.IMAGE_PULL_FAILED, _pull_failure(spec.image, waiting) + (
                    f"; gave up after spec.build.timeoutSeconds ({spec.timeout_seconds} s)"), stalled=True)
            if pod is not None and not any(s.image_id for s in statuses):  # its image never arrived
                if seen is not None:  # and it was seen failing to pull: say why
                    raise ReconcileError(Reason.IMAGE_PULL_FAILED, _pull_failure(
                        spec.image, client.V1ContainerStateWaiting(reason=seen[0], message=seen[1])) + (
                        f"; gave up after spec.build.timeoutSeconds ({spec.timeout_seconds} s)"), stalled=True)
                raise ReconcileError(Reason.IMAGE_PULL_FAILED, (
                    f"the build image {spec.image} was not pulled within spec.build.timeoutSeconds "
                    f"({spec.timeout_seconds} s); gave up after that. Check spec.build.image and "
                    "spec.build.imagePullSecrets (a Secret of type kubernetes.io/dockerconfigjson in this "
                    "namespace), or raise timeoutSeconds for a large image"), stalled=True)
            raise BuildError(Reason.BUILD_TIMEOUT, (
                f"building the flow in image {spec.image} did not finish within spec.build.timeoutSeconds "
                f"({spec.timeout_seconds} s) and was stopped; make the script only define the flow when it is "
                "loaded (not run it), or raise spec.build.timeoutSeconds" + _tail(text, nonce)))
        if terminated is not None and terminated.reason == "OOMKilled":
            limit = (spec.resources.get("limits") or DEFAULT_RESOURCES["limits"]).get("memory", "?")
            raise BuildError(Reason.BUILD_OUT_OF_MEMORY, (
                f"building the flow ran out of memory in image {spec.image} (limit {limit}) and was killed; make the "
                "script use less memory when it is loaded, or raise spec.build.resources.limits.memory"))
        if terminated is not None and terminated.reason in ("StartError", "ContainerCannotRun"):
            raise BuildError(Reason.BUILD_IMAGE_UNUSABLE, _start_failure(spec.image, terminated.message or ""))
        if terminated is not None and terminated.exit_code == 127:
            raise BuildError(Reason.BUILD_IMAGE_UNUSABLE, _start_failure(spec.image, text))
        raise BuildError(Reason.SCRIPT_FAILED, (
            f"builder Job {name} failed ({failed.reason}: {failed.message or 'no details'})"
            + (f", its container ended with {terminated.reason} (exit code {terminated.exit_code})" if terminated
               else "") + _tail(text, nonce)))

    # ------------------------------------------------------------------ the API
    def _get_job(self, namespace: str, name: str) -> client.V1Job | None:
        try:
            job: client.V1Job = self.batch.read_namespaced_job(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise ReconcileError(Reason.BUILD_FORBIDDEN, (
                    f"the operator may not read jobs.batch in namespace {namespace!r}, which builds in the flow's "
                    "image (spec.build) need: grant it create, get, list and delete on jobs.batch and configmaps, "
                    "get and list on pods and get on pods/log there"), stalled=True) from None
            raise ClusterUnavailable(f"reading Job {name}: HTTP {exc.status} {exc.reason}") from None
        return job

    def _pod(self, namespace: str, name: str) -> client.V1Pod | None:
        try:
            pods = self.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}")
        except ApiException as exc:
            raise ClusterUnavailable(f"listing the Pods of Job {name}: HTTP {exc.status} {exc.reason}") from None
        items = sorted(pods.items or [], key=lambda p: _meta(p).creation_timestamp
                       or dt.datetime.min.replace(tzinfo=dt.UTC))
        return items[-1] if items else None

    def _log(self, namespace: str, name: str, attempts: int = 3, pod: client.V1Pod | None = None) -> str:
        pod = pod or self._pod(namespace, name)
        if pod is None:
            return ""
        for attempt in range(attempts):
            try:
                text: str = self.core.read_namespaced_pod_log(
                    str(_meta(pod).name), namespace, container="build",
                    limit_bytes=MAX_RESULT_BYTES * 4 // 3 + 1024 * 1024)
                return text
            except ApiException as exc:
                if exc.status == 403:
                    raise ReconcileError(Reason.BUILD_FORBIDDEN, (
                        f"the operator may not read pods/log in namespace {namespace!r}: the result of a builder Job "
                        "comes back through its log; grant it get on pods/log there"), stalled=True) from None
                if attempt == attempts - 1:
                    raise ClusterUnavailable(f"reading the log of Job {name}: HTTP {exc.status} {exc.reason}") from None
                time.sleep(0.5)
        return ""

    def _delete_stale(self, request: BuildRequest, name: str) -> None:
        """Jobs of this StoredFlow for other inputs (the spec changed mid-build) go."""
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{STOREDFLOW_LABEL}={request.owner_name}"
        try:
            jobs = self.batch.list_namespaced_job(request.namespace, label_selector=selector)
        except ApiException as exc:
            if exc.status == 403:
                return  # the create that follows says what is missing
            raise ClusterUnavailable(f"listing builder Jobs: HTTP {exc.status} {exc.reason}") from None
        for job in jobs.items or []:
            stale = str(_meta(job).name)
            if stale != name:
                log.info("deleting stale builder Job %s/%s (the flow changed)", request.namespace, stale)
                self._cleanup(request.namespace, stale)

    def _cleanup(self, namespace: str, name: str) -> None:
        """Delete the Job (its Pods with it) and its ConfigMap; already gone counts as done."""
        with self._lock:
            self._running.discard((namespace, name))
        calls: list[Callable[[], object]] = [
            lambda: self.batch.delete_namespaced_job(name, namespace, propagation_policy="Background"),
            lambda: self.core.delete_namespaced_config_map(name, namespace)]
        for call in calls:
            try:
                call()
            except ApiException as exc:
                if exc.status != 404:
                    log.warning("could not delete builder %s/%s: HTTP %s %s", namespace, name, exc.status, exc.reason)


def result_from_log(text: str, nonce: str, *, job: str, image: str) -> Built:
    """The pickled flow framed in a builder Job's log, or BuildError saying why not. The flow's
    code writes to the same log (and can read the nonce), so every part of the reply is hostile:
    a reason builders do not report, a header that is not an object, versions that are not
    strings all end as a clear failure, never as an exception that would leave the Job behind
    or a reason the API server refuses."""
    try:
        result = builder.unframe(text, nonce)
        if result is None:
            raise BuildError(Reason.SCRIPT_FAILED, f"builder Job {job} ended without a result{_tail(text, nonce)}")
        header, payload = reply_header(result[0]), result[1]
        if header["ok"] is True:
            return Built(payload, reply_versions(header))
    except (ValueError, MalformedReply) as exc:  # MalformedReply is a ValueError; named for the reader
        raise BuildError(Reason.SCRIPT_FAILED, f"builder Job {job}: the result in its log cannot be used: "
                         f"{exc}{_tail(text, nonce)}") from None
    reason, message = reply_failure(header)
    if reason == Reason.SCRIPT_FAILED:
        message += _tail(text, nonce)
    elif reason == Reason.BUILD_IMAGE_UNUSABLE:
        message = f"build image {image}: {message}"
    raise BuildError(reason, message)


def _meta(obj: Any) -> client.V1ObjectMeta:
    meta: client.V1ObjectMeta = obj.metadata or client.V1ObjectMeta()
    return meta


def _resources(spec: BuildSpec) -> dict[str, Any]:
    if not spec.resources:
        return {k: dict(v) for k, v in DEFAULT_RESOURCES.items()}
    return {k: dict(v) for k, v in spec.resources.items() if k in ("requests", "limits")}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _pull_failure(image: str, waiting: Any) -> str:
    detail = " ".join(str(waiting.message or "no details").split())[:500]
    return (f"cannot pull the build image {image} ({waiting.reason}: {detail}); check spec.build.image and "
            "spec.build.imagePullSecrets (a Secret of type kubernetes.io/dockerconfigjson in this namespace)")


def _start_failure(image: str, detail: str) -> str:
    words = " ".join(detail.split())[:500]
    if "python3" in words and ("not found" in words or "no such file" in words.lower()):
        return (f"the build image {image} has no python3 on its PATH ({words}); build flows in an image with Python "
                "and cloudpickle (the image the flow's agents run)")
    return f"the build image {image} could not start the builder ({words}); it needs python3 and cloudpickle"


def _tail(text: str, nonce: str, limit: int = 2048) -> str:
    """The end of the Job's output without the result frame, for a failure's message."""
    # stdout (the frame) and stderr (the flow's output) reach the log through two pipes, so the
    # flow's last lines may come after the frame: leave out the frame wherever it is
    begin, end = text.find(f"{builder.FRAME_BEGIN} {nonce}") if nonce else -1, -1
    if begin >= 0:
        end = text.find(f"{builder.FRAME_END} {nonce}", begin)
    if begin < 0:
        output = text.strip()
    elif end < 0:
        output = text[:begin].strip()
    else:
        after = text.find("\n", end)
        output = (text[:begin] + (text[after + 1:] if after >= 0 else "")).strip()
    if not output:
        return ""
    return f"\n--- build output (last {limit} bytes) ---\n{output[-limit:]}"
