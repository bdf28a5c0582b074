"""Shards without a cluster: the label selector grammar and matching (the API server's), the
kopf adapter that puts the selector on the watches, and the condition of a StoredFlow whose
FlowStorage another shard serves."""

from __future__ import annotations

import argparse
from pathlib import Path

import kopf
import pytest
from kopf._cogs.structs import references

from flowstore.api import selectors
from flowstore.api.selectors import SHARD_LABEL
from flowstore.cli import build_parser
from flowstore.controller import handlers, shards
from flowstore.reconcile import reconcile_stored_flow
from tests.fakes.ports import FakeCluster
from tests.unit.test_reconcile import flow_obj, ready, settle, storage_obj


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("flowstore.dev/shard=shard1", {SHARD_LABEL: "shard1"}, True),
    ("flowstore.dev/shard=shard1", {SHARD_LABEL: "shard2"}, False),
    ("flowstore.dev/shard=shard1", {}, False),
    ("flowstore.dev/shard==shard1", {SHARD_LABEL: "shard1"}, True),
    ("!flowstore.dev/shard", {}, True),
    ("!flowstore.dev/shard", {SHARD_LABEL: ""}, False),  # present, even empty
    ("!flowstore.dev/shard", {"other": "x"}, True),
    ("flowstore.dev/shard", {SHARD_LABEL: ""}, True),
    ("flowstore.dev/shard!=shard1", {}, True),
    ("flowstore.dev/shard!=shard1", {SHARD_LABEL: "shard1"}, False),
    ("flowstore.dev/shard in (shard1, shard2)", {SHARD_LABEL: "shard2"}, True),
    ("flowstore.dev/shard in (shard1,shard2)", {SHARD_LABEL: "shard3"}, False),
    ("flowstore.dev/shard notin (shard1,shard2)", {}, True),
    ("flowstore.dev/shard notin (shard1,shard2)", {SHARD_LABEL: "shard1"}, False),
    ("team=a,flowstore.dev/shard in (s1,s2)", {"team": "a", SHARD_LABEL: "s1"}, True),
    ("team=a,flowstore.dev/shard in (s1,s2)", {"team": "b", SHARD_LABEL: "s1"}, False),
    ("", {"anything": "x"}, True),
])
def test_a_selector_matches_as_the_api_server_does(text: str, labels: dict[str, str], expected: bool) -> None:
    assert selectors.parse(text).matches(labels) is expected


def test_the_canonical_text_parses_back_to_the_same_selector() -> None:
    parsed = selectors.parse(" team = a , flowstore.dev/shard in ( s2 ,s1 ), !gone, there ")
    assert str(parsed) == "team=a,flowstore.dev/shard in (s1,s2),!gone,there"
    assert selectors.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["flowstore.dev/shard=a b", "=x", "a in (b", "a in b)", "a,,b", "a > 3",
                                  "Bad_Prefix/x=1", "a=" + "v" * 64, "a in ()", "-a=1", "a=b=c"])
def test_a_bad_selector_is_refused_and_named(text: str) -> None:
    with pytest.raises(selectors.SelectorError):
        selectors.parse(text)


def test_the_shard_name_is_read_only_from_the_usual_selector() -> None:
    assert selectors.parse("flowstore.dev/shard=shard1").shard() == "shard1"
    assert selectors.parse("!flowstore.dev/shard").shard() is None
    assert selectors.parse("flowstore.dev/shard in (a,b)").shard() is None


def test_the_command_line_refuses_a_bad_selector_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--watch-label-selector", "flowstore.dev/shard in (a"])
    assert "unbalanced" in capsys.readouterr().err
    args = build_parser().parse_args(["operator", "--watch-label-selector", "!flowstore.dev/shard"])
    assert str(args.watch_label_selector) == "!flowstore.dev/shard"
    old = build_parser().parse_args(["operator", "--selector", "shard=a"])  # the earlier name still works
    assert str(old.selector) == "shard=a"


def _resource(plural: str, group: str = "flowstore.dev") -> references.Resource:
    return references.Resource(group, "v1alpha1" if group else "v1", plural, namespaced=True)


def test_kopf_sends_the_selector_on_flowstore_resources_only() -> None:
    """The adapter's contract with kopf (>= 1.45): ``settings.watching.label_selectors`` is what
    kopf's LIST and WATCH requests send as ``labelSelector``. If kopf renames or drops it, this fails
    (and tests/e2e/test_shards.py sees the requests themselves)."""
    selector = selectors.parse("flowstore.dev/shard=shard1")
    settings = handlers.kopf_settings(selector)
    for plural in ("storedflows", "flowstorages"):
        assert settings.watching.label_selectors.collect(_resource(plural)) == ["flowstore.dev/shard=shard1"]
    assert settings.watching.label_selectors.collect(_resource("configmaps", "")) == []
    unsharded = handlers.kopf_settings(None)
    assert unsharded.watching.label_selectors.collect(_resource("storedflows")) == []


def test_the_watch_request_carries_the_label_selector() -> None:
    """kopf's own URL building (kopf._cogs.clients.watching) with our settings: the request that
    reaches the API server. Pinned to kopf's internals on purpose: a change there must be seen."""
    import inspect

    from kopf._cogs.clients import fetching, watching

    for module in (watching, fetching):
        source = inspect.getsource(module)
        assert "settings.watching.label_selectors.collect(resource)" in source
        assert "params['labelSelector'] = label_selector" in source


def test_an_old_kopf_without_server_side_selectors_is_refused() -> None:
    class OldWatching:
        pass

    settings = kopf.OperatorSettings()
    settings.watching = OldWatching()  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match=r"kopf >= 1\.45"):
        shards.filter_watches(settings, selectors.parse("a=b"))


# ---------------------------------------------------------------------- the condition
@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    c = FakeCluster()
    c.storages["store"] = storage_obj(tmp_path / "flows")
    return c


def _label(obj: dict[str, object], value: str | None) -> None:
    meta = obj["metadata"]
    assert isinstance(meta, dict)
    meta["labels"] = {SHARD_LABEL: value} if value is not None else {}


@pytest.mark.parametrize("storage_shard", ["shard2", None])
def test_a_flow_whose_storage_is_on_another_shard_says_so_and_keeps_its_location(
        cluster: FakeCluster, storage_shard: str | None) -> None:
    obj = settle(flow_obj(), cluster)
    good = obj["status"]["location"]
    uploads = cluster.uploads
    cluster.selector = selectors.parse("flowstore.dev/shard=shard1")
    _label(obj, "shard1")
    _label(cluster.storages["store"], storage_shard)
    outcome = reconcile_stored_flow(obj, cluster)
    obj["status"] = outcome.status
    condition = ready(obj)
    assert condition["status"] == "False" and condition["reason"] == "StorageOnOtherShard"
    assert "'store'" in condition["message"] and "same flowstore.dev/shard label" in condition["message"]
    assert ("flowstore.dev/shard=shard2" if storage_shard else "no flowstore.dev/shard label") in condition["message"]
    assert outcome.failure is not None and outcome.failure.stalled  # a person must relabel
    assert obj["status"]["location"] == good and cluster.uploads == uploads


def test_a_flow_and_storage_on_the_same_shard_store(cluster: FakeCluster) -> None:
    cluster.selector = selectors.parse("!flowstore.dev/shard")
    obj = settle(flow_obj(), cluster)
    assert ready(obj)["status"] == "True"
    cluster.selector = selectors.parse("flowstore.dev/shard=shard1")
    _label(cluster.storages["store"], "shard1")
    assert ready(settle(obj, cluster))["status"] == "True"


def test_a_missing_storage_is_still_missing_not_on_another_shard(cluster: FakeCluster) -> None:
    cluster.selector = selectors.parse("flowstore.dev/shard=shard1")
    obj = flow_obj()
    obj["spec"]["storageRef"]["name"] = "absent"
    outcome = reconcile_stored_flow(obj, cluster)
    assert outcome.failure is not None and outcome.failure.reason == "StorageNotFound"


def test_argparse_type_is_the_parser() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        from flowstore.cli import _parse_selector

        _parse_selector("a in (")
