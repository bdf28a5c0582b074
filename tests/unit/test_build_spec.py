"""spec.build in the reconcile core, offline: a build elsewhere (a builder Job) is Pending until
it ends; the envelope records the versions of the image that pickled the flow; the image is an
input of the artifact; a StoredFlow's build replaces its FlowStorage's. The builder Jobs
themselves run on the real node (tests/cluster/test_builder_jobs.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from flowstore import sandbox
from flowstore.api.models import BuildSpec, SpecError
from flowstore.artifacts import envelope
from flowstore.reconcile import reconcile_stored_flow
from flowstore.reconcile.ports import BuildRequest, Pending
from tests.fakes.ports import FakeCluster

SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl', lambda: 1)\n"
IMAGE = "registry.example.com/data/runtime:1"


class FakeJobs:
    """Stands in for the Job builder: Pending for `passes` calls, then the real sandbox's
    pickle reported with the image's versions."""

    def __init__(self, passes: int = 2) -> None:
        self.passes = passes
        self.requests: list[BuildRequest] = []

    def __call__(self, request: BuildRequest) -> sandbox.Built | Pending:
        self.requests.append(request)
        if len([r for r in self.requests if r.digest == request.digest]) <= self.passes:
            return Pending(f"Building in image {request.spec.image if request.spec else '?'}", retry_after=0.5)
        built = sandbox.build_pickle(request.source, flow_name=request.flow_name, object_name=request.object_name)
        return sandbox.Built(built.pickle, {"python": "3.12.9", "cloudpickle": "3.0.0", "prefect": "1.4.1"})


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    c = FakeCluster()
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"local": {"directory": str(tmp_path)}, "interval": "10m",
                                    "build": {"image": IMAGE}}}
    c.jobs = FakeJobs()
    return c


def flow(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "etl", "namespace": "ns", "uid": "f1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl", "source": {"inline": SCRIPT}, **spec}}


def settle(obj: dict[str, Any], cluster: FakeCluster, passes: int = 10) -> list[dict[str, Any]]:
    """Reconcile until Ready (at most `passes` times); the statuses seen on the way."""
    seen = []
    for _ in range(passes):
        outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster)
        obj["status"] = outcome.status
        seen.append(outcome.status)
        if any(c["type"] == "Ready" and c["status"] == "True" for c in outcome.status["conditions"]):
            break
    return seen


def test_a_build_in_the_image_is_pending_then_stored_with_the_image_versions(cluster: FakeCluster) -> None:
    obj = flow()
    seen = settle(obj, cluster)
    assert len(seen) == 3 and cluster.builds == 0, "nothing runs in the operator's sandbox"
    reconciling = next(c for c in seen[0]["conditions"] if c["type"] == "Reconciling")
    assert reconciling["message"] == f"Building in image {IMAGE}"
    assert "location" not in seen[0] and "storing" not in seen[0], "nothing is claimed before the build ends"
    request = cluster.jobs.requests[-1]  # type: ignore[union-attr]
    assert (request.namespace, request.owner_name, request.owner_uid) == ("ns", "etl", "f1")
    assert request.spec == BuildSpec(image=IMAGE) and request.digest == obj["status"]["artifact"]["inputsDigest"]
    _, versions = envelope.unwrap(Path(obj["status"]["location"]).read_bytes())
    assert versions == {"python": "3.12.9", "cloudpickle": "3.0.0", "prefect": "1.4.1", "flowstore": "0.1.0"}


def test_the_image_is_an_input_and_a_storedflow_build_replaces_the_storage_s(cluster: FakeCluster) -> None:
    obj = flow()
    settle(obj, cluster)
    first = obj["status"]["artifact"]["inputsDigest"]
    obj["spec"]["build"] = {"image": "registry.example.com/data/runtime:2", "timeoutSeconds": 60}
    settle(obj, cluster)
    assert obj["status"]["artifact"]["inputsDigest"] != first
    assert cluster.jobs.requests[-1].spec == BuildSpec(  # type: ignore[union-attr]
        image="registry.example.com/data/runtime:2", timeout_seconds=60)


def test_without_build_the_sandbox_builds_and_the_digest_is_what_it_was(cluster: FakeCluster,
                                                                       tmp_path: Path) -> None:
    with_build = flow()
    settle(with_build, cluster)
    del cluster.storages["store"]["spec"]["build"]
    without = flow()
    settle(without, cluster)
    assert cluster.builds == 1 and without["status"]["artifact"]["inputsDigest"] != \
        with_build["status"]["artifact"]["inputsDigest"]


def test_build_spec_parsing() -> None:
    assert BuildSpec.parse(None) is None
    spec = BuildSpec.parse({"image": IMAGE, "imagePullSecrets": [{"name": "regcred"}], "nodeSelector": {"a": "b"},
                            "resources": {"limits": {"memory": "2Gi"}}, "timeoutSeconds": 30})
    assert spec is not None and spec.image_pull_secrets == ("regcred",) and spec.timeout_seconds == 30
    with pytest.raises(SpecError, match=r"spec\.build\.image is required"):
        BuildSpec.parse({"timeoutSeconds": 30})


def test_a_failures_output_is_the_log_without_the_result_frame_wherever_it_is() -> None:
    # stdout (the frame) and stderr (the flow's prints) reach the log through two pipes: the
    # flow's last lines may follow the frame
    from flowstore.artifacts import builder
    from flowstore.controller.jobs import _tail

    frame = builder.frame({"ok": False, "reason": "ScriptFailed", "message": "m"}, b"", "n1")
    assert _tail("before\n" + frame + "after\n", "n1").endswith("---\nbefore\nafter")
    assert _tail(frame + "after\n", "n1").endswith("---\nafter")
    assert _tail(frame, "n1") == ""
    assert _tail("x" * 5000, "n1").endswith("x" * 2048)
