"""The status records (api/status.py) are built and read in one place, and read as hostile input:
anyone who may patch the status subresource can write anything there, so a field of the wrong
type is *not recorded* — never an exception, never a value of the wrong type handed on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from flowstore.api.status import Artifact, GitPin, ImageRef, Storing, Superseded
from flowstore.reconcile import delete_stored_flow, reconcile_flow_storage, reconcile_stored_flow
from tests.fakes.ports import FakeCluster

SCRIPT = "from flowstore.flow import Flow\nflow = Flow('etl', lambda: 1)\n"
D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64

ARTIFACT = Artifact(url="file:///x", digest=D1, size=12, format="pickle", source_digest=D2, inputs_digest=D2,
                    last_update_time="2026-01-01T00:00:00Z", storage_state={"buildResponse": {"id": "7"}},
                    signature="hmac-sha256:ab", file_name=None, entrypoint="a.py:flow", file_count=2,
                    versions={"python": "3.11.7"})
RECORDS = [ARTIFACT, Storing(D1, "etl/v1"), Storing(D1, "etl/v1", D1 + "+r3"),
           Superseded("etl/v0", {"buildResponse": {"id": "6"}}),
           GitPin(repo="r", path="flows/a.py", ref="main", commit="3f2c" * 10, url="http://git/r"),
           ImageRef(name="127.0.0.1:5000/flows", tag="t1", digest=D2, path="/opt/prefect/flows/etl.prefect")]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_each_record_reads_back_what_it_writes(record: Any) -> None:
    status: dict[str, Any] = {}
    record.write(status)
    assert set(status) == {record.KEY}
    assert type(record).read(status) == record
    type(record).clear(status)
    assert status == {} and type(record).read(status) is None


HOSTILE: list[Any] = ["text", 7, True, None, [], ["a"], {}, {"location": 5}, {"digest": "sha256:short"}]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("junk", HOSTILE, ids=repr)
def test_a_section_of_the_wrong_shape_is_not_recorded(record: Any, junk: Any) -> None:
    assert type(record).read({record.KEY: junk}) is None
    assert type(record).read(junk) is None  # the whole status, too


@pytest.mark.parametrize("field, junk", [("digest", 5), ("digest", "md5:x"), ("inputsDigest", None),
                                         ("size", "12"), ("size", -1), ("size", True), ("size", 1.5)])
def test_an_artifact_without_a_readable_digest_or_size_is_not_recorded(field: str, junk: Any) -> None:
    doc = ARTIFACT.to_status()
    doc[field] = junk
    assert Artifact.from_status(doc) is None


@pytest.mark.parametrize("key", [7, "", 'a"b', "a\\b", "a\nb", "k" * 129])
def test_an_idempotency_key_that_could_not_be_a_header_value_falls_back_to_the_digest(key: Any) -> None:
    storing = Storing.read({"storing": {"inputsDigest": D1, "location": "etl", "idempotencyKey": key}})
    assert storing is not None and storing.idempotency_key == D1


def test_optional_fields_of_the_wrong_type_are_dropped_not_passed_on() -> None:
    doc = ARTIFACT.to_status()
    doc.update(storageState=["x"], signature=7, fileName={"a": 1}, entrypoint=[], fileCount="2",
               versions={"python": 3, "cloudpickle": "3.0.0"}, url=None, sourceDigest=4)
    artifact = Artifact.from_status(doc)
    assert artifact is not None and artifact.digest == D1
    assert (artifact.storage_state, artifact.signature, artifact.file_name, artifact.entrypoint,
            artifact.file_count, artifact.url, artifact.source_digest) == (None, None, None, None, None, "", "")
    assert artifact.versions == {"cloudpickle": "3.0.0"}


JUNK_STATUS: dict[str, Any] = {
    "location": {"a": 1}, "flowName": ["etl"], "artifact": {"digest": D1, "inputsDigest": D2, "size": "big"},
    "storing": "somewhere", "superseded": [1, 2], "git": {"commit": 5}, "image": {"digest": "latest"},
    "conditions": "all good", "observedGeneration": "one",
}


def test_a_stored_flow_with_a_junk_status_is_stored_again_without_a_crash(tmp_path: Path) -> None:
    cluster = FakeCluster()
    cluster.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                                 "spec": {"local": {"directory": str(tmp_path)}, "deletionPolicy": "Delete"}}
    obj = {"metadata": {"name": "etl", "namespace": "ns", "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"storageRef": {"name": "store"}, "flowName": "etl", "source": {"inline": SCRIPT}},
           "status": copy.deepcopy(JUNK_STATUS)}
    outcome = reconcile_stored_flow(obj, cluster)
    assert outcome.failure is None and cluster.uploads == 1
    ready = next(c for c in outcome.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and Path(outcome.status["location"]).is_file()
    assert "storing" not in outcome.status  # an unreadable record is not carried on as a store under way

    cluster.flows["etl"] = {**obj, "status": copy.deepcopy(JUNK_STATUS)}
    listed = reconcile_flow_storage(cluster.storages["store"], cluster)
    assert listed.failure is None and listed.status["flows"] == {}  # a junk location is no location

    cleanup = delete_stored_flow({**obj, "status": copy.deepcopy(JUNK_STATUS)}, cluster, attempt=0, max_attempts=3)
    assert cleanup.retry_after is None and Path(outcome.status["location"]).is_file()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (JSON Merge Patch), section 2's algorithm: how the API server applies the
    operator's status patches to a custom resource."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = _merge_patch(result.get(name), value)
    return result


def test_the_status_patch_removes_members_dropped_at_any_depth() -> None:
    from flowstore.controller.runtime import _with_removals

    current = {"location": "a", "superseded": {"location": "old"}, "flows": {"x": "1", "y": "2"},
               "image": {"name": "r/i", "digest": "sha256:b", "signatureTag": "sha256-b.sig", "signatureKeyId": "k"},
               "artifact": {"digest": "sha256:1", "signature": "ed25519:s", "keyId": "k",
                            "storageState": {"imageDigest": "sha256:b", "imageTag": "t"}},
               "history": [{"revision": 2}, {"revision": 1}]}
    desired = {"location": "a", "flows": {"x": "1"}, "image": {"name": "r/i", "digest": "sha256:a"},
               "artifact": {"digest": "sha256:1", "storageState": {"imageDigest": "sha256:a"}},
               "history": [{"revision": 1}]}
    assert _merge_patch(current, _with_removals(current, desired)) == desired
