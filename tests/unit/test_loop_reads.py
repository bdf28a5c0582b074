"""What a reconcile pass reads without an API call (controller/runtime.py, controller/kube.py): the
daemon's body unless it does not show yet the loop's own last status write; FlowStorages as the
watch saw them. No server: the kubernetes client is built but never connects."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from flowstore.api.constants import STOREDFLOW_PLURAL
from flowstore.controller.runtime import Runtime, Settings, _at_least

KEY = (STOREDFLOW_PLURAL, "ns", "etl")


def body(version: str, generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
            "metadata": {"name": "etl", "namespace": "ns", "resourceVersion": version, "generation": generation,
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"storageRef": {"name": "store"}, "flowName": "etl", "source": {"inline": "x" * 1000}},
            "status": {"observedGeneration": 1}}


def runtime() -> Runtime:
    return Runtime(client.ApiClient(), Settings(workers=1))


def test_the_body_is_copied_without_managed_fields_and_its_generation_counts_as_seen() -> None:
    rt = runtime()
    live = body("10", generation=3)
    copied = rt._fresh_copy(KEY, live)
    assert copied is not None and copied is not live
    assert "managedFields" not in copied["metadata"] and copied["spec"] == live["spec"]
    copied["spec"]["flowName"] = "changed"
    assert live["spec"]["flowName"] == "etl"  # a copy: kopf's body is not touched by the pass
    assert rt.seen[KEY] == 3
    # the pokes keep the references of the spec, not the source
    assert rt.specs[KEY[1]][KEY] == {"storageRef": {"name": "store"}, "flowName": "etl"}


def test_a_body_older_than_the_loops_own_write_is_not_used() -> None:
    rt = runtime()
    rt._written[KEY] = "20"
    assert rt._fresh_copy(KEY, body("19")) is None  # the pass GETs the object
    assert KEY in rt._written
    assert rt._fresh_copy(KEY, body("20")) is not None  # the watch caught up
    assert KEY not in rt._written
    rt._written[KEY] = "30"
    assert rt._fresh_copy(KEY, body("31")) is not None  # newer than the write (kopf batched events)


def test_resource_versions_compare_as_revisions_and_otherwise_only_equal() -> None:
    assert _at_least("12", "12") and _at_least("13", "12") and not _at_least("11", "12")
    assert _at_least("abc", "abc") and not _at_least("abd", "abc") and not _at_least(None, "12")


def test_flowstorages_come_from_the_watch_until_they_are_gone() -> None:
    rt = runtime()
    fs = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 2, "resourceVersion": "7",
                       "managedFields": [{}]},
          "spec": {"s3": {"bucket": "b"}}, "status": {"flows": {"etl": "x"}}}
    rt.ports.flowstorage_seen(fs)
    got = rt.ports.get_flowstorage("ns", "store")
    assert got == {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 2,
                                "resourceVersion": "7"}, "spec": {"s3": {"bucket": "b"}}}
    got["spec"]["s3"]["bucket"] = "other"
    assert rt.ports.get_flowstorage("ns", "store")["spec"]["s3"]["bucket"] == "b"  # type: ignore[index]
    rt.ports.flowstorage_seen(fs, gone=True)
    assert ("ns", "store") not in rt.ports._flowstorages


def test_an_entry_keeps_its_body_packed_and_a_pass_unpacks_a_copy() -> None:
    from flowstore.controller.runtime import _pack

    rt = runtime()
    live = body("10", generation=2)
    packed = _pack(live)
    assert isinstance(packed, bytes)
    copied = rt._fresh_copy(KEY, packed)
    assert copied is not None and copied["spec"] == live["spec"] and "managedFields" not in copied["metadata"]
    copied["spec"]["flowName"] = "changed"
    assert rt._fresh_copy(KEY, packed)["spec"]["flowName"] == "etl"  # type: ignore[index]  # each pass its own copy
    assert rt.seen[KEY] == 2
    rt._written[KEY] = "11"
    assert rt._fresh_copy(KEY, packed) is None  # older than the loop's own write: the pass GETs it
