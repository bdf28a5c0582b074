"""Crash-consistent stores, offline: the reconcile core with a real Local storage, the operator
"killed" at chosen points (an exception no reconcile catches, as SIGKILL ends a pass), and the
API server's view of the object being whatever status was last written (the progress status).

After any crash the retry of the same inputs stores to the location recorded before the upload,
so a version is one file; an interrupted store of other inputs leaves nothing behind."""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from flowstore.reconcile import reconcile_stored_flow
from flowstore.storage import Storage
from tests.fakes.ports import FakeCluster
from tests.helpers.webhook_server import WebhookServer

SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl', lambda: 1)\n"


class Killed(BaseException):
    """Ends a reconcile pass the way SIGKILL ends the operator: nothing after it runs."""


class Cluster(FakeCluster):
    """FakeCluster whose storage can be made to die before or after a put lands."""

    def __init__(self) -> None:
        super().__init__()
        self.kill: str | None = None  # "before-put" | "after-put" | "fail-put" | None

    def storage_for(self, spec: Any, credentials: Any, cache_key: str, identity: Any = None, *,
                    namespace: str = "") -> Storage:
        storage = super().storage_for(spec, credentials, cache_key, identity, namespace=namespace)
        put = storage.put_bytes

        def dying_put(location: str, data: bytes, **kwargs: Any) -> Any:
            if self.kill == "before-put":
                raise Killed
            if self.kill == "fail-put":
                from flowstore.storage import Unavailable

                raise Unavailable("the backend went away")
            stored = put(location, data, **kwargs)
            if self.kill == "after-put":
                raise Killed
            return stored

        storage.put_bytes = dying_put  # type: ignore[method-assign]
        return storage


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return local_cluster(tmp_path)


def local_cluster(directory: Path) -> Cluster:
    """A Local FlowStorage "store" in `directory` (Retain)."""
    c = Cluster()
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"local": {"directory": str(directory)}, "interval": "10m"}}
    return c


def flow(script: str = SCRIPT) -> dict[str, Any]:
    return {"metadata": {"name": "etl", "namespace": "ns", "uid": "f1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl", "source": {"inline": script}}}


def reconcile(obj: dict[str, Any], cluster: Cluster) -> tuple[dict[str, Any], Cluster]:
    """One pass as the operator runs it: progress statuses are written to the object as they
    happen; a crash leaves the object with the last one written, and the next pass is made by a
    new operator process (new ports: it knows only what the cluster holds)."""

    def written(status: dict[str, Any]) -> None:
        obj["status"] = copy.deepcopy(status)

    try:
        obj["status"] = reconcile_stored_flow(copy.deepcopy(obj), cluster, on_progress=written).status
    except Killed:
        restarted = Cluster()
        restarted.storages, restarted.uploads = cluster.storages, cluster.uploads
        return obj, restarted
    return obj, cluster


def files(directory: Path) -> list[str]:
    """Every file in the storage, temporary files of interrupted writes included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"].get("conditions", []))


@pytest.mark.parametrize("point", ["before-put", "after-put"])
def test_a_store_killed_anywhere_is_retried_at_the_same_location(cluster: Cluster, tmp_path: Path,
                                                                 point: str) -> None:
    obj = flow()
    cluster.kill = point
    obj, cluster = reconcile(obj, cluster)
    storing = obj["status"]["storing"]
    assert not ready(obj) and storing["location"].startswith(str(tmp_path))
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and obj["status"]["location"] == storing["location"]
    assert "storing" not in obj["status"]
    assert files(tmp_path) == [str(Path(storing["location"]).relative_to(tmp_path))]


def test_a_failed_upload_keeps_its_location_for_the_retry(cluster: Cluster, tmp_path: Path) -> None:
    obj = flow()
    cluster.kill = "fail-put"
    obj, cluster = reconcile(obj, cluster)
    storing = obj["status"]["storing"]
    assert [c["reason"] for c in obj["status"]["conditions"] if c["type"] == "Ready"] == ["BackendUnavailable"]
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert obj["status"]["location"] == storing["location"] and len(files(tmp_path)) == 1


def interrupted_second_store(cluster: Cluster) -> tuple[dict[str, Any], Cluster, str]:
    """A flow stored once (its location returned), then changed and killed right after the
    second version's upload: the pass that stored it never recorded it."""
    obj, cluster = reconcile(flow(), cluster)
    first = obj["status"]["location"]
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    cluster.kill = "after-put"
    obj, cluster = reconcile(obj, cluster)
    return obj, cluster, first


def test_an_interrupted_store_of_inputs_that_changed_is_deleted(cluster: Cluster, tmp_path: Path) -> None:
    obj, cluster, first = interrupted_second_store(cluster)
    orphan = obj["status"]["storing"]["location"]
    assert len(files(tmp_path)) == 2 and obj["status"]["location"] == first
    obj["spec"]["source"]["inline"] = SCRIPT + "# v3\n"
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and obj["status"]["location"] not in (first, orphan)
    assert not (tmp_path / Path(orphan).relative_to(tmp_path)).exists()
    # Retain: the superseded first version stays; the interrupted one is gone
    assert files(tmp_path) == sorted(str(Path(p).relative_to(tmp_path)) for p in (first, obj["status"]["location"]))


def test_reverting_to_the_recorded_version_deletes_the_interrupted_store(cluster: Cluster, tmp_path: Path) -> None:
    obj, cluster, first = interrupted_second_store(cluster)
    assert len(files(tmp_path)) == 2
    obj["spec"]["source"]["inline"] = SCRIPT  # back to what status records: nothing to store
    cluster.kill = None
    uploads = cluster.uploads
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and obj["status"]["location"] == first and "storing" not in obj["status"]
    assert cluster.uploads == uploads
    assert files(tmp_path) == [str(Path(first).relative_to(tmp_path))]


def test_a_write_killed_before_its_rename_leaves_no_temporary_file(cluster: Cluster, tmp_path: Path) -> None:
    obj = flow()
    cluster.kill = "before-put"
    obj, cluster = reconcile(obj, cluster)
    location = Path(obj["status"]["storing"]["location"])
    location.parent.mkdir(parents=True, exist_ok=True)
    (location.parent / f".{location.name}.x1y2z3.tmp").write_bytes(b"half a fl")  # what SIGKILL mid-write leaves
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert files(tmp_path) == [str(location.relative_to(tmp_path))]


def deleting(cluster: Cluster) -> Cluster:
    """deletionPolicy Delete, objects deleted as soon as their revision left the history."""
    cluster.storages["store"]["spec"].update(deletionPolicy="Delete", retention={"minAge": "0s"})
    return cluster


def one_revision(obj: dict[str, Any]) -> dict[str, Any]:
    obj["spec"]["revisionHistoryLimit"] = 1
    return obj


def test_under_delete_a_retired_artifact_goes_only_after_status_recorded_it(cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    cluster = deleting(cluster)
    obj = one_revision(flow())
    obj, cluster = reconcile(obj, cluster)
    first = obj["status"]["location"]
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster)
    obj["status"] = outcome.status
    second = obj["status"]["location"]
    # the new status names the new artifact and records the old one for deletion: both exist
    assert [r["location"] for r in obj["status"]["retired"]] == [first]
    assert outcome.requeue_after is not None and outcome.requeue_after <= 1.0
    assert sorted(files(tmp_path)) == sorted(str(Path(p).relative_to(tmp_path)) for p in (first, second))
    # the operator is killed now; the next one finds the record and deletes the old artifact
    restarted = Cluster()
    restarted.storages = cluster.storages
    obj, _ = reconcile(obj, restarted)
    assert ready(obj) and "retired" not in obj["status"] and obj["status"]["location"] == second
    assert files(tmp_path) == [str(Path(second).relative_to(tmp_path))]


def test_deleting_a_storedflow_deletes_what_an_interrupted_store_left(cluster: Cluster, tmp_path: Path) -> None:
    from flowstore.reconcile import delete_stored_flow

    obj, cluster, first = interrupted_second_store(cluster)
    assert len(files(tmp_path)) == 2
    outcome = delete_stored_flow(obj, cluster, attempt=0, max_attempts=2)  # Retain: the artifact stays
    assert outcome.retry_after is None and outcome.event is not None and outcome.event.reason == "Retained"
    assert files(tmp_path) == [str(Path(first).relative_to(tmp_path))]


def test_versions_stored_back_to_back_under_delete_leave_only_the_last(cluster: Cluster, tmp_path: Path) -> None:
    """A new version stored before the pass that deletes the previous one's predecessor: nothing
    in between may leak (seen under SIGKILLs: every version but the record's stayed)."""
    cluster = deleting(cluster)
    obj = one_revision(flow())
    for version in range(4):
        obj["spec"]["source"]["inline"] = SCRIPT + f"# v{version}\n"
        obj["status"] = reconcile_stored_flow(copy.deepcopy(obj), cluster).status  # no settling pass between
    obj, _ = reconcile(obj, cluster)  # the settling pass
    assert "retired" not in obj["status"]
    assert files(tmp_path) == [str(Path(obj["status"]["location"]).relative_to(tmp_path))]


# ---------------------------------------------------------------------- a service that assigns ids
# The Webhook location is the flow name for every version: only the id in the build response
# tells an interrupted store's object from the recorded one (tests/helpers/webhook_server.py, a
# real HTTP service that honours Idempotency-Key as the IETF draft describes).

@pytest.fixture
def hooked(hook: WebhookServer) -> Cluster:
    return webhook_cluster(hook)


def webhook_cluster(hook: WebhookServer) -> Cluster:
    """A Webhook FlowStorage "store" on `hook` (Retain), whose get and delete requests name the id."""
    c = Cluster()
    url = f"{hook.url}/flows"
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"interval": "10m", "webhook": {
                               "buildRequest": {"method": "POST", "url": url},
                               "getFlowRequest": {"method": "GET", "url": url + "/${response.json.id}"},
                               "deleteRequest": {"method": "DELETE", "url": url + "/${response.json.id}"}}}}
    return c


def flow_id(obj: dict[str, Any]) -> str:
    return str(obj["status"]["storage"]["buildResponse"]["json"]["id"])


@pytest.mark.parametrize("point", ["before-put", "after-put"])
def test_a_webhook_store_interrupted_before_a_change_leaves_no_object(hooked: Cluster, hook: WebhookServer,
                                                                      point: str) -> None:
    cluster = hooked
    obj, cluster = reconcile(flow(), cluster)
    first = flow_id(obj)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    cluster.kill = point
    obj, cluster = reconcile(obj, cluster)
    assert len(hook.bodies) == (2 if point == "after-put" else 1) and flow_id(obj) == first
    obj["spec"]["source"]["inline"] = SCRIPT + "# v3\n"
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and "storing" not in obj["status"]
    # Retain: the superseded first version stays; the interrupted one is gone, and so is what
    # finding it made where the first request never arrived
    assert sorted(hook.bodies) == sorted([first, flow_id(obj)]) and flow_id(obj) != first
    assert "sha256:" + hashlib.sha256(hook.bodies[flow_id(obj)]).hexdigest() == obj["status"]["artifact"]["digest"]


def test_reverting_a_webhook_flow_deletes_the_interrupted_store(hooked: Cluster, hook: WebhookServer) -> None:
    cluster = hooked
    obj, cluster = reconcile(flow(), cluster)
    first = flow_id(obj)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    cluster.kill = "after-put"
    obj, cluster = reconcile(obj, cluster)
    assert len(hook.bodies) == 2
    obj["spec"]["source"]["inline"] = SCRIPT  # back to what status records: nothing to store
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and flow_id(obj) == first and "storing" not in obj["status"]
    assert list(hook.bodies) == [first]


def test_a_webhook_flow_changed_back_after_its_object_was_deleted_is_stored_again(hooked: Cluster,
                                                                                  hook: WebhookServer) -> None:
    """A version stored, replaced, deleted (Delete, one revision), then wanted again: the service
    made a new object for it; the key of the first store must not answer with the deleted one."""
    cluster = deleting(hooked)
    obj = one_revision(flow())
    for script in (SCRIPT, SCRIPT + "# v2\n", SCRIPT):
        obj["spec"]["source"]["inline"] = script
        for _ in range(3):  # the store, then the passes that delete what left the history
            obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and "retired" not in obj["status"]
    assert list(hook.bodies) == [flow_id(obj)]


def test_a_retired_webhook_object_goes_though_a_store_interrupted_since(hooked: Cluster,
                                                                        hook: WebhookServer) -> None:
    """Every webhook version has the flow name as its location: a store under way writes a new
    object (a new id), never the retired one, so the retired one is still deleted once its
    retention.minAge has passed."""
    cluster = deleting(hooked)
    cluster.storages["store"]["spec"]["retention"] = {"minAge": "1s"}
    obj = one_revision(flow())
    obj, cluster = reconcile(obj, cluster)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    obj["status"] = reconcile_stored_flow(copy.deepcopy(obj), cluster).status  # v1 retired, not yet deleted
    assert len(obj["status"]["retired"]) == 1 and len(hook.bodies) == 2
    obj["spec"]["source"]["inline"] = SCRIPT + "# v3\n"
    cluster.kill = "after-put"
    obj, cluster = reconcile(obj, cluster)
    assert len(obj["status"]["retired"]) == 1 and "storing" in obj["status"]
    time.sleep(1.1)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v4\n"
    cluster.kill = None
    obj, cluster = reconcile(obj, cluster)  # v4 stored, v2 retired
    time.sleep(1.1)
    obj, cluster = reconcile(obj, cluster)
    assert ready(obj) and "retired" not in obj["status"] and "storing" not in obj["status"]
    assert list(hook.bodies) == [flow_id(obj)]



@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_deleting_a_webhook_storedflow_deletes_what_an_interrupted_store_made(hooked: Cluster, hook: WebhookServer,
                                                                            policy: str) -> None:
    """The interrupted store's object is named only in the answer that never arrived: the deletion
    finds it by the request's idempotency key, whatever the policy (no revision ever named it)."""
    from flowstore.reconcile import delete_stored_flow

    cluster = hooked
    cluster.storages["store"]["spec"]["deletionPolicy"] = policy
    obj, cluster = reconcile(flow(), cluster)
    first = flow_id(obj)
    obj["spec"]["source"]["inline"] = SCRIPT + "# v2\n"
    cluster.kill = "after-put"
    obj, cluster = reconcile(obj, cluster)
    assert len(hook.bodies) == 2 and "storing" in obj["status"]
    outcome = delete_stored_flow(obj, cluster, attempt=0, max_attempts=2)
    assert outcome.retry_after is None and outcome.event is not None
    if policy == "Retain":
        assert outcome.event.reason == "Retained" and list(hook.bodies) == [first]
    else:
        assert outcome.event.reason == "Deleted" and list(hook.bodies) == []
