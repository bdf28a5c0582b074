"""Which StoredFlows carry the finalizer (controller/finalizers.py): those whose FlowStorage
deletes objects; an unknown FlowStorage changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from flowstore.controller.finalizers import missing, needs_finalizer


def flow(*finalizers: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "etl", "namespace": "ns", "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"storageRef": {"name": "store"}}}


def storage(policy: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "store"}, "spec": {"s3": {"bucket": "b"}, **({"deletionPolicy": policy} if policy
                                                                            else {})}}


@pytest.mark.parametrize(("policy", "wanted"), [(None, False), ("Retain", False), ("Delete", True)])
def test_the_finalizer_follows_the_deletion_policy(policy: str | None, wanted: bool) -> None:
    for held in ((), ("flowstore.dev/cleanup",), ("other.example/x",)):
        assert needs_finalizer(flow(*held), storage(policy)) is wanted
    assert missing(flow(), storage(policy)) is wanted
    assert not missing(flow("flowstore.dev/cleanup"), storage(policy))


def test_an_unseen_flowstorage_keeps_what_the_flow_has() -> None:
    assert needs_finalizer(flow("flowstore.dev/cleanup"), None)
    assert not needs_finalizer(flow(), None) and not missing(flow(), None)


def test_a_flow_being_deleted_gets_no_finalizer_added() -> None:
    assert not missing(flow(deleting=True), storage("Delete"))
