"""Revisions in the pure core (docs/revisions.md), offline: in-memory cluster ports and a real Local
storage in a temp directory, the objects counted on disk.

History bounded by revisionHistoryLimit, numbers that only grow, reverts that re-point (zero
uploads), pins (status.latest, the Pinned condition, PinNotFound), and retention: under
deletionPolicy Delete an object is deleted only once its revision left the history and minAge
passed since it stopped being current, in a later pass than the status that retired it."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from flowstore.reconcile import delete_stored_flow, reconcile_stored_flow, status_changed
from flowstore.storage import Storage
from tests.fakes.ports import FakeCluster

SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl', lambda: {})\n"


class Killed(BaseException):
    """Ends a pass the way SIGKILL ends the operator."""


class Cluster(FakeCluster):
    def __init__(self) -> None:
        super().__init__()
        self.kill_delete = False
        self.deletes = 0

    def storage_for(self, spec: Any, credentials: Any, cache_key: str, identity: Any = None, *,
                    namespace: str = "") -> Storage:
        storage = super().storage_for(spec, credentials, cache_key, identity, namespace=namespace)
        delete = storage.delete

        def counted(location: str) -> None:
            if self.kill_delete:
                raise Killed
            self.deletes += 1
            delete(location)

        storage.delete = counted  # type: ignore[method-assign]
        return storage


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    c = Cluster()
    c.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                           "spec": {"local": {"directory": str(tmp_path / "flows")}, "interval": "10m",
                                    "deletionPolicy": "Delete", "retention": {"minAge": "0s"}}}
    return c


def flow(version: int = 0, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "etl", "namespace": "ns", "uid": "f1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl",
                     "source": {"inline": SCRIPT.format(version)}, **spec}}


def edit(obj: dict[str, Any], version: int) -> dict[str, Any]:
    obj["spec"]["source"]["inline"] = SCRIPT.format(version)
    obj["metadata"]["generation"] += 1
    return obj


def settle(obj: dict[str, Any], cluster: Cluster, passes: int = 1) -> dict[str, Any]:
    for _ in range(passes):
        obj["status"] = reconcile_stored_flow(copy.deepcopy(obj), cluster).status
    return obj


def files(tmp_path: Path) -> list[str]:
    return sorted(str(p) for p in (tmp_path / "flows").rglob("*") if p.is_file())


def revisions(obj: dict[str, Any]) -> list[int]:
    return [e["revision"] for e in obj["status"]["history"]]


def cond(obj: dict[str, Any], ctype: str = "Ready") -> dict[str, Any]:
    return next((c for c in obj["status"]["conditions"] if c["type"] == ctype), {})


def set_storage(cluster: Cluster, **spec: Any) -> None:
    cluster.storages["store"]["spec"].update(spec)


# --------------------------------------------------------------------------- history and retention
def test_five_edits_with_a_limit_of_three_leave_three_entries_and_three_objects(cluster: Cluster,
                                                                                tmp_path: Path) -> None:
    obj = flow(revisionHistoryLimit=3)
    for version in range(5):
        settle(edit(obj, version), cluster)
    settle(obj, cluster)  # the pass after: retired objects are deleted (status named them first)
    status = obj["status"]
    assert revisions(obj) == [5, 4, 3] and status["lastRevision"] == 5 and cluster.uploads == 5
    assert status["artifact"]["revision"] == 5 and status["artifact"]["designation"] == 5
    assert files(tmp_path) == sorted(e["location"] for e in status["history"])
    assert "retired" not in status and cluster.deletes == 2
    assert all(e["supersededAt"] for e in status["history"][1:]) and "supersededAt" not in status["history"][0]
    for entry in status["history"]:  # enough to load the revision without the current status
        assert {"revision", "digest", "size", "format", "url", "location", "storedAt", "inputsDigest",
                "sourceDigest", "versions"} <= set(entry)


def test_status_names_a_retired_object_before_it_is_deleted(cluster: Cluster, tmp_path: Path) -> None:
    obj = settle(flow(revisionHistoryLimit=1), cluster)
    first = obj["status"]["location"]
    outcome = reconcile_stored_flow(copy.deepcopy(edit(obj, 1)), cluster)
    assert outcome.status["retired"] == [{"location": first, "revision": 1,
                                          "supersededAt": outcome.status["retired"][0]["supersededAt"]}]
    assert first in files(tmp_path) and outcome.requeue_after is not None and outcome.requeue_after <= 1.0
    obj["status"] = outcome.status
    # killed while deleting: the record stays, and the next operator deletes it
    cluster.kill_delete = True
    with pytest.raises(Killed):
        reconcile_stored_flow(copy.deepcopy(obj), cluster)
    cluster.kill_delete = False
    settle(obj, cluster)
    assert "retired" not in obj["status"] and first not in files(tmp_path)
    assert files(tmp_path) == [obj["status"]["location"]]


def test_min_age_keeps_an_object_until_it_has_passed(cluster: Cluster, tmp_path: Path) -> None:
    set_storage(cluster, retention={"minAge": "1h"}, interval="2h")
    obj = settle(flow(revisionHistoryLimit=1), cluster)
    first = obj["status"]["location"]
    settle(edit(obj, 1), cluster, passes=3)
    assert first in files(tmp_path) and obj["status"]["retired"][0]["location"] == first
    outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster)
    assert outcome.requeue_after is not None and 3500 < outcome.requeue_after <= 3600
    # an hour later (the record says when it stopped being current)
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1, seconds=5)
    obj["status"]["retired"][0]["supersededAt"] = an_hour_ago.isoformat().replace("+00:00", "Z")
    settle(obj, cluster)
    assert first not in files(tmp_path) and "retired" not in obj["status"]


def test_under_retain_nothing_is_deleted_and_history_stays_bounded(cluster: Cluster, tmp_path: Path) -> None:
    set_storage(cluster, deletionPolicy="Retain")
    obj = flow(revisionHistoryLimit=2)
    for version in range(4):
        settle(edit(obj, version), cluster, passes=2)
    assert revisions(obj) == [4, 3] and "retired" not in obj["status"]
    assert len(files(tmp_path)) == 4 and cluster.deletes == 0


def test_the_storage_gives_the_default_limit_and_the_flow_overrides_it(cluster: Cluster) -> None:
    set_storage(cluster, revisionHistoryLimit=2)
    obj = flow()
    for version in range(3):
        settle(edit(obj, version), cluster)
    assert revisions(obj) == [3, 2]
    obj["spec"]["revisionHistoryLimit"] = 1
    settle(obj, cluster)
    assert revisions(obj) == [3]


# --------------------------------------------------------------------------- reverts
def test_a_revert_re_points_to_the_recorded_revision_with_zero_uploads(cluster: Cluster, tmp_path: Path) -> None:
    obj = flow()
    for version in range(3):
        settle(edit(obj, version), cluster)
    second = next(e for e in obj["status"]["history"] if e["revision"] == 2)
    uploads, before = cluster.uploads, files(tmp_path)
    settle(edit(obj, 1), cluster)  # the content of revision 2 again
    status = obj["status"]
    assert cluster.uploads == uploads and files(tmp_path) == before
    assert revisions(obj) == [2, 3, 1] and status["lastRevision"] == 3
    assert status["artifact"]["revision"] == 2 and status["artifact"]["digest"] == second["digest"]
    assert status["location"] == second["location"] and status["artifact"]["designation"] == 4
    assert "supersededAt" not in status["history"][0] and status["history"][1]["supersededAt"]
    # numbers are never reused: the next content is revision 4, not 3 again
    settle(edit(obj, 7), cluster)
    assert revisions(obj)[0] == 4 and obj["status"]["lastRevision"] == 4


def test_a_revert_whose_object_is_gone_is_stored_again(cluster: Cluster, tmp_path: Path) -> None:
    obj = settle(flow(), cluster)
    first = obj["status"]["location"]
    settle(edit(obj, 1), cluster)
    Path(first).unlink()
    settle(edit(obj, 0), cluster)
    assert obj["status"]["artifact"]["revision"] == 3 and Path(obj["status"]["location"]).is_file()


# --------------------------------------------------------------------------- pins
def test_a_pin_holds_while_new_content_is_recorded(cluster: Cluster, tmp_path: Path) -> None:
    obj = flow()
    for version in range(2):
        settle(edit(obj, version), cluster)
    first = obj["status"]["history"][1]
    obj["spec"]["pin"] = {"revision": 1}
    settle(obj, cluster)
    status = obj["status"]
    assert status["artifact"]["revision"] == 1 and status["location"] == first["location"]
    assert status["latest"] == {"revision": 2, "digest": status["history"][1]["digest"]}
    assert cond(obj)["status"] == "True" and "revision 1" in cond(obj)["message"]
    pinned = cond(obj, "Pinned")
    assert pinned["status"] == "True" and pinned["reason"] == "RevisionPinned" and "revision 1" in pinned["message"]
    settle(edit(obj, 2), cluster)  # new content is built and recorded, the pin stays current
    assert obj["status"]["artifact"]["revision"] == 1 and obj["status"]["latest"]["revision"] == 3
    assert revisions(obj) == [3, 1, 2] and cluster.uploads == 3
    again = reconcile_stored_flow(copy.deepcopy(obj), cluster)
    assert not status_changed(obj["status"], again.status) and cluster.uploads == 3


def test_a_pin_by_digest_and_its_release(cluster: Cluster) -> None:
    obj = flow()
    for version in range(2):
        settle(edit(obj, version), cluster)
    digest = obj["status"]["history"][1]["digest"]
    obj["spec"]["pin"] = {"digest": digest}
    settle(obj, cluster)
    assert obj["status"]["artifact"]["digest"] == digest and obj["status"]["artifact"]["designation"] == 3
    del obj["spec"]["pin"]
    settle(obj, cluster)
    assert obj["status"]["artifact"]["revision"] == 2 and obj["status"]["artifact"]["designation"] == 4
    assert "latest" not in obj["status"] and not cond(obj, "Pinned")


def test_a_pinned_revision_is_never_retired(cluster: Cluster, tmp_path: Path) -> None:
    obj = settle(flow(revisionHistoryLimit=1), cluster)
    first = obj["status"]["location"]
    obj["spec"]["pin"] = {"revision": 1}
    for version in range(1, 4):
        settle(edit(obj, version), cluster, passes=2)
    assert revisions(obj) == [4, 1] and obj["status"]["artifact"]["revision"] == 1
    assert first in files(tmp_path) and len(files(tmp_path)) == 2


def test_a_pin_not_in_history_says_which_revisions_exist(cluster: Cluster) -> None:
    obj = settle(flow(), cluster)
    good = copy.deepcopy(obj["status"])
    obj["spec"]["pin"] = {"revision": 9}
    outcome = reconcile_stored_flow(copy.deepcopy(edit(obj, 1)), cluster)
    obj["status"] = outcome.status
    assert outcome.failure is not None and outcome.failure.reason == "PinNotFound" and outcome.failure.stalled
    assert "revision 9" in outcome.failure.message and "1 (sha256:" in outcome.failure.message
    assert "2 (sha256:" in outcome.failure.message  # the new content was recorded all the same
    assert obj["status"]["artifact"] == good["artifact"] and obj["status"]["location"] == good["location"]
    assert cond(obj, "Pinned")["status"] == "False" and cond(obj, "Stalled")["reason"] == "PinNotFound"
    obj["spec"]["pin"] = {"revision": 2}
    settle(obj, cluster)
    assert cond(obj)["status"] == "True" and obj["status"]["artifact"]["revision"] == 2


# --------------------------------------------------------------------------- objects in one place
def test_a_fixed_key_keeps_one_entry_and_never_deletes_the_current_object(cluster: Cluster, tmp_path: Path) -> None:
    obj = flow(key="etl/current.pkl")
    for version in range(3):
        settle(edit(obj, version), cluster, passes=2)
    assert revisions(obj) == [3] and cluster.deletes == 0
    assert files(tmp_path) == [obj["status"]["location"]] and Path(obj["status"]["location"]).is_file()


# --------------------------------------------------------------------------- migration, deletion, input
def test_a_status_from_before_revisions_becomes_revision_1_and_its_superseded_object_goes(
        cluster: Cluster, tmp_path: Path) -> None:
    obj = settle(flow(), cluster)
    old = obj["status"]["location"]
    settle(edit(obj, 1), cluster)
    legacy = copy.deepcopy(obj["status"])
    for key in ("history", "lastRevision", "retired", "latest", "historyStorage"):
        legacy.pop(key, None)
    for key in ("revision", "designation"):
        legacy["artifact"].pop(key)
    legacy["superseded"] = {"location": old, "storageState": {}}
    obj["status"], uploads = legacy, cluster.uploads
    settle(obj, cluster)
    assert revisions(obj) == [1] and obj["status"]["artifact"]["revision"] == 1 and cluster.uploads == uploads
    assert "superseded" not in obj["status"] and old not in files(tmp_path)


def test_deleting_the_storedflow_under_delete_removes_every_object_it_holds(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    set_storage(cluster, retention={"minAge": "1h"})
    obj = flow(revisionHistoryLimit=2)
    for version in range(4):
        settle(edit(obj, version), cluster, passes=2)
    assert len(files(tmp_path)) == 4 and len(obj["status"]["retired"]) == 2
    outcome = delete_stored_flow(obj, cluster, attempt=0, max_attempts=2)
    assert outcome.retry_after is None and outcome.event is not None and outcome.event.reason == "Deleted"
    assert files(tmp_path) == []


def test_deleting_the_storedflow_under_retain_keeps_every_object(cluster: Cluster, tmp_path: Path) -> None:
    set_storage(cluster, deletionPolicy="Retain")
    obj = flow()
    for version in range(3):
        settle(edit(obj, version), cluster)
    delete_stored_flow(obj, cluster, attempt=0, max_attempts=2)
    assert len(files(tmp_path)) == 3


@pytest.mark.parametrize("junk", [
    {"history": "all of them"}, {"history": [1, "two", None, {"revision": "3"}]},
    {"history": [{"revision": 1, "location": 5, "digest": "sha256:" + "a" * 64}]},
    {"lastRevision": -4}, {"retired": [{"location": ["x"]}, "y"]}, {"latest": 7},
])
def test_unreadable_revision_records_are_not_recorded(cluster: Cluster, junk: dict[str, Any]) -> None:
    obj = settle(flow(), cluster)
    obj["status"].update(copy.deepcopy(junk))
    outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster)
    assert outcome.failure is None and cond({"status": outcome.status})["status"] == "True"
    json.dumps(outcome.status)
    assert outcome.status["artifact"]["revision"] >= 1


# --------------------------------------------------------------------------- agents and the CLI
def test_an_agent_loads_any_revision_in_history_verified(cluster: Cluster, tmp_path: Path) -> None:
    """An older revision goes through the agent's checks as the current one does: its status
    view parsed, its location checked against the FlowStorage, its bytes against its digest."""
    from flowstore.agent import status as statuses
    from flowstore.agent import trust
    from flowstore.api.history import RevisionNotFound, status_for
    from flowstore.artifacts import loading
    from flowstore.client import Located, check_location, download

    obj = flow()
    for version in range(3):
        settle(edit(obj, version), cluster)
    status = obj["status"]
    storage = cluster.storages["store"]

    def located(view_status: dict[str, Any]) -> Located:
        view = statuses.parse({**obj, "status": view_status}, namespace="ns", name="etl")
        return check_location(view, api=None, sources=[
            lambda _: [trust.from_flowstorage(storage, namespace="ns", name="store")]])

    for revision, want in ((1, 0), (2, 1), (3, 2)):
        view = status_for(status, revision=revision)
        assert view["artifact"]["revision"] == revision
        assert (view["location"] == status["location"]) == (revision == 3)
        assert view["storage"]["flows"] == {"etl": view["location"]}
        data = download(located(view))  # verified against the entry's digest
        assert loading.load(data, "pickle", flow_name="etl").run() == want
    by_digest = status_for(status, digest=status["history"][2]["digest"])
    assert by_digest["artifact"]["revision"] == 1
    with pytest.raises(RevisionNotFound, match=r"revision 7 is not in the StoredFlow's history \(revisions: 3 \("):
        status_for(status, revision=7)
    Path(status_for(status, revision=2)["location"]).write_bytes(b"tampered")
    from flowstore.storage import IntegrityError

    with pytest.raises(IntegrityError):
        download(located(status_for(status, revision=2)))


def test_a_signed_older_revision_loads_only_when_asked_for_and_a_replayed_one_is_refused(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator signs every revision of the history with its own statement; an agent that
    asks for one by number or digest verifies that statement, pinned (its memory of a newer
    designation does not refuse it); an older statement put back as current is refused."""
    from flowstore import client
    from flowstore.artifacts.freshness import RollbackRefused
    from tests.fakes.agent_api import FakeApi

    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "agent"))
    key = "k3y-for-signing-flows-0123456789"
    cluster.secrets["sig"] = {"metadata": {"uid": "s", "resourceVersion": "1"}, "data": {"FLOWSTORE_SIGNING_KEY": key}}
    cluster.storages["store"]["spec"]["signing"] = {"provider": "hmac", "secretRef": {"name": "sig"}}
    obj = settle(flow(), cluster)
    first = copy.deepcopy(obj["status"])
    settle(edit(obj, 1), cluster)
    api = FakeApi(obj, cluster.storages["store"])
    load = client.load_flow
    assert load("etl", "ns", api=api, signing_key=key).run() == 1  # remembers designation 2
    assert load("etl", "ns", api=api, signing_key=key, revision=1).run() == 0
    assert load("etl", "ns", api=api, signing_key=key, digest=first["artifact"]["digest"]).run() == 0
    assert load("etl", "ns", api=api, signing_key=key).run() == 1  # pinning changed nothing remembered
    # revision 1's statement put back as current, exactly as the operator once signed it
    obj["status"].update(location=first["location"], artifact=first["artifact"], storage=first["storage"])
    with pytest.raises(RollbackRefused, match="revision 1"):
        load("etl", "ns", api=api, signing_key=key)
    # a retained entry's signature (designation 0) never passes for a current one
    retained = next(e for e in obj["status"]["history"] if e["revision"] == 1)
    obj["status"]["artifact"] = {**first["artifact"], "signature": retained["signature"]}
    with pytest.raises(client.SignatureError, match="does not match"):
        load("etl", "ns", api=api, signing_key=key)


def test_rollback_resolves_a_revision_or_a_unique_digest_prefix(cluster: Cluster) -> None:
    from flowstore.api.history import History
    from flowstore.cli_revisions import RollbackRefused, resolve

    obj = flow()
    for version in range(3):
        settle(edit(obj, version), cluster)
    history = History.read(obj["status"])
    second = history.find(revision=2)
    assert second is not None
    assert resolve(history, "2") is second
    assert resolve(history, second.digest) is second and resolve(history, second.digest[:14]) is second
    with pytest.raises(RollbackRefused, match="9 is not in the StoredFlow's history"):
        resolve(history, "9")
    with pytest.raises(RollbackRefused, match="neither a revision number nor"):
        resolve(history, "sha256:zz")


def test_a_flow_moved_to_another_storage_starts_a_new_history_and_deletes_nothing_elsewhere(
        cluster: Cluster, tmp_path: Path) -> None:
    obj = flow()
    for version in range(2):
        settle(edit(obj, version), cluster)
    old = files(tmp_path)
    cluster.storages["store"]["spec"]["local"]["directory"] = str(tmp_path / "flows" / "moved")
    settle(obj, cluster, passes=2)
    status = obj["status"]
    assert revisions(obj) == [3] and status["lastRevision"] == 3 and "retired" not in status
    assert status["location"].startswith(str(tmp_path / "flows" / "moved"))
    assert all(Path(p).is_file() for p in old) and cluster.deletes == 0


def test_a_retired_record_naming_another_place_is_not_deleted(cluster: Cluster, tmp_path: Path) -> None:
    """A status is hostile input: a retired record pointing outside this flow's keys (another
    flow's object) is dropped with a Warning, never deleted."""
    victim = tmp_path / "flows" / "payroll" / "2026-01-01t00-00-00-000000-00-00"
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"someone else's flow")
    obj = settle(flow(), cluster)
    obj["status"]["retired"] = [{"location": str(victim), "supersededAt": "2026-01-01T00:00:00Z"}]
    outcome = reconcile_stored_flow(copy.deepcopy(obj), cluster)
    assert victim.is_file() and "retired" not in outcome.status
    assert any(e.type == "Warning" and "not where flow 'etl' stores" in e.message for e in outcome.events)
