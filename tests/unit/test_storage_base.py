"""Unit tests (no network) for the pieces under every backend: default keys, the pickle
envelope, digest verification and the backend registry."""

from __future__ import annotations

import base64
import datetime as dt
import json
import warnings

import cloudpickle
import pytest

import flowstore.storage
from flowstore.artifacts import envelope
from flowstore.artifacts.keys import default_key, join_prefix, slugify
from flowstore.flow import Flow
from flowstore.storage import IntegrityError, InvalidConfig, MissingDependency, backend_class, from_serialized
from flowstore.storage.base import sha256_hex, verify_digest


# ---------------------------------------------------------------------- keys
@pytest.mark.parametrize(("text", "slug"), [
    ("ETL Daily", "etl-daily"),
    ("  weird__Name!!  v2 ", "weird-name-v2"),
    ("Café Crème", "cafe-creme"),
    ("a/b\\c", "a-b-c"),
    ("---", ""),
])
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_default_key_format_for_a_fixed_time() -> None:
    moment = dt.datetime(2026, 11, 26, 10, 0, 0, tzinfo=dt.UTC)
    assert default_key("ETL Daily", now=moment) == "etl-daily/2026-11-26t10-00-00-000000-00-00"


def test_default_key_converts_to_utc() -> None:
    moment = dt.datetime(2026, 11, 26, 12, 30, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2, minutes=30)))
    assert default_key("x", now=moment) == "x/2026-11-26t10-00-00-000005-00-00"


def test_default_key_defaults_to_now() -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    key = default_key("now")
    assert key.startswith("now/")
    assert key[len("now/"):len("now/") + 10] >= before.strftime("%Y-%m-%d")


@pytest.mark.parametrize(("prefix", "key", "joined"), [
    (None, "a/b", "a/b"),
    ("", "a/b", "a/b"),
    ("team", "a/b", "team/a/b"),
    ("team/", "/a/b", "team/a/b"),
])
def test_join_prefix(prefix: str | None, key: str, joined: str) -> None:
    assert join_prefix(prefix, key) == joined


# ---------------------------------------------------------------------- envelope
def test_envelope_shape_and_round_trip() -> None:
    flow = Flow("enveloped", lambda: 7)
    data = envelope.dumps(flow)
    doc = json.loads(data)
    assert set(doc) == {"flow", "versions"}
    assert set(doc["versions"]) == {"cloudpickle", "python", "flowstore"}
    assert doc["versions"]["cloudpickle"] == cloudpickle.__version__
    loaded = envelope.loads(data)
    assert loaded.name == "enveloped" and loaded.run() == 7


def test_bare_pickle_is_accepted() -> None:
    data = cloudpickle.dumps(Flow("bare", lambda: 1))
    pickled, versions = envelope.unwrap(data)
    assert (pickled, versions) == (data, {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert envelope.loads(data).run() == 1


def test_version_mismatch_warns() -> None:
    doc = {
        "flow": base64.b64encode(cloudpickle.dumps(Flow("old", lambda: 2))).decode(),
        "versions": {"cloudpickle": "0.0.1", "python": "3.0.0", "flowstore": "0.0.0"},
    }
    with pytest.warns(RuntimeWarning) as record:
        assert envelope.loads(json.dumps(doc).encode()).run() == 2
    messages = [str(w.message) for w in record]
    assert any("cloudpickle 0.0.1" in m for m in messages)
    assert any("python 3.0.0" in m for m in messages)


def test_garbage_is_not_an_envelope() -> None:
    for data in (b"not json at all \xff", b'{"versions": {}}', b"[1, 2]"):
        with pytest.raises(ValueError, match="not a flow envelope"):
            envelope.unwrap(data)


def test_flow_from_script_picks_by_name_or_object() -> None:
    source = b"from flowstore.flow import Flow\na = Flow('one', lambda: 1)\nb = Flow('two', lambda: 2)\n"
    assert envelope.flow_from_script(source, flow_name="two", object_name=None).run() == 2
    assert envelope.flow_from_script(source, flow_name=None, object_name="a").run() == 1
    with pytest.raises(envelope.FlowObjectError):
        envelope.flow_from_script(source, flow_name="three", object_name=None)
    dup = b"from flowstore.flow import Flow\na = Flow('x', int)\nb = Flow('x', int)\n"
    with pytest.raises(envelope.FlowObjectError) as info:
        envelope.flow_from_script(dup, flow_name="x", object_name=None)
    assert info.value.ambiguous


# ---------------------------------------------------------------------- digests
def test_verify_digest() -> None:
    data = b"artifact"
    verify_digest(data, None, what="x")
    verify_digest(data, sha256_hex(data), what="x")
    verify_digest(data, "sha256:" + sha256_hex(data), what="x")
    with pytest.raises(IntegrityError, match="s3://b/k") as info:
        verify_digest(data[:-1], sha256_hex(data), what="s3://b/k")
    assert info.value.reason == "IntegrityError"


# ---------------------------------------------------------------------- registry
def test_registry_resolves_backends() -> None:
    from flowstore.storage.local import Local
    from flowstore.storage.s3 import S3

    assert flowstore.storage.S3 is S3
    assert flowstore.storage.Local is Local
    assert backend_class("s3") is S3  # the CRD block key
    assert backend_class("local") is Local


def test_s3_module_imports_without_touching_boto3() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import flowstore.storage.s3\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_type_is_invalid_config() -> None:
    with pytest.raises(InvalidConfig, match="unknown storage type 'Nope'"):
        backend_class("Nope")
    with pytest.raises(InvalidConfig):
        from_serialized({"type": "Nope"})
    with pytest.raises(AttributeError):
        _ = flowstore.storage.Nope  # type: ignore[attr-defined]
    assert issubclass(MissingDependency, InvalidConfig)
