"""Property tests (hypothesis) over hostile statuses and hostile bundles: whatever a status writer,
a bucket writer or a cache writer puts there, an agent only ever raises the project's own errors
(``flowstore.client.AGENT_ERRORS``), never runs or unpickles anything but the flow that was
signed, and never holds more than its bounds in memory.

The stored flow is benign and returns 42; next to it in the same Local directory lie a pickle and
a script that write a marker file when loaded, a link to /dev/zero and a large sparse file. The
agent has a signing key, and the benign flow's statement is signed (as are statements naming the
other files, which a status writer may paste in: genuine signatures over other artifacts): a
status may name any of them (hypothesis draws locations, digests, sizes and signatures from them
as well as from noise).
Derandomized for CI; ``FLOWSTORE_PROPERTY_EXAMPLES=2000`` explores further."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pickle
import shutil
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowstore import client
from flowstore.artifacts import bundle, loading
from flowstore.artifacts.cache import Cache, Settings
from flowstore.storage.local import Local
from tests.fakes.agent_api import UID, FakeApi, digest_of, sign_status

EXAMPLES = int(os.environ.get("FLOWSTORE_PROPERTY_EXAMPLES", "300"))
KEY = b"a-signing-key-of-some-length-0123"
SCRIPT = b"from flowstore.flow import Flow\nflow = Flow('etl daily', lambda: 42)\n"
#: what an agent may hold at once while refusing hostile input (bounds: artifacts 1 MiB here)
MEMORY_BOUND = 48 * 2**20
ROOT = Path(os.environ.get("TMPDIR", "/tmp")) / f"flowstore-agent-properties-{os.getpid()}"


class Detonator:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).write_text, ("unpickled",))


def _world() -> dict[str, Any]:
    """The Local directory every example points into (made once: hypothesis reuses it)."""
    store = ROOT / "store"
    if not store.exists():
        store.mkdir(parents=True)
        marker = ROOT / "marker"
        (store / "good").write_bytes(SCRIPT)
        (store / "evil.py").write_bytes(f"open({str(marker)!r}, 'w').write('ran')\n".encode())
        evil_pickle = json.dumps({"flow": base64.b64encode(pickle.dumps(Detonator(str(marker)))).decode()}).encode()
        (store / "evil.pickle").write_bytes(evil_pickle)
        (store / "zero").symlink_to("/dev/zero")
        with open(store / "sparse", "wb") as fh:
            fh.truncate(2**31)
        evil_bundle = bundle.pack({"main.py": (store / "evil.py").read_bytes()}, bundle.Entrypoint("main.py"))
        (store / "evil.bundle").write_bytes(evil_bundle)
    names = ["good", "evil.py", "evil.pickle", "zero", "sparse", "evil.bundle"]
    readable = [n for n in names if n not in ("zero", "sparse")]
    digests = [digest_of((store / n).read_bytes()) for n in readable]
    return {"store": store, "marker": ROOT / "marker", "locations": [str(store / n) for n in names],
            "digests": digests, "files": {n: (store / n).read_bytes() for n in readable}}


WORLD = _world()
GOOD_STATUS = sign_status({
    "location": str(WORLD["store"] / "good"), "flowName": "etl daily",
    "storage": {**Local(directory=str(WORLD["store"])).to_status(), "flows": {}},
    "artifact": {"url": "file:///x", "digest": digest_of(SCRIPT), "size": len(SCRIPT), "format": "script",
                 "revision": 1, "designation": 1, "lastUpdateTime": "2026-11-26T10:00:00Z"},
}, KEY)
_FORMATS = {"good": "script", "evil.py": "script", "evil.pickle": "pickle", "evil.bundle": "bundle"}


def _signed_elsewhere(name: str, data: bytes) -> str:
    """A genuine signature over the statement naming another file of the world (as the operator
    would have signed it had that file been stored): a status writer may paste it in."""
    status = json.loads(json.dumps(GOOD_STATUS))
    status["location"] = str(WORLD["store"] / name)
    status["artifact"].update(digest=digest_of(data), size=len(data), format=_FORMATS[name])
    return str(sign_status(status, KEY)["artifact"]["signature"])


OTHER_SIGNATURES = [_signed_elsewhere(n, data) for n, data in WORLD["files"].items()]
FLOWSTORAGE = {"spec": {"local": {"directory": str(WORLD["store"])}}}

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=False),
                      st.text(max_size=30))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                        max_leaves=8)
locations = st.one_of(st.sampled_from(WORLD["locations"]), st.sampled_from(["/dev/zero", "/etc/passwd", "../x", ""]),
                      st.text(max_size=40), json_any)
digests = st.one_of(st.sampled_from(WORLD["digests"]), st.just(None), st.text(max_size=70), json_any)
sizes = st.one_of(st.integers(-5, 2**40), st.sampled_from([len(SCRIPT), 0, 2**31]), json_any)
formats = st.one_of(st.sampled_from(["script", "pickle", "bundle", "wheel", ""]), json_any)
storages = st.one_of(
    st.just(GOOD_STATUS["storage"]),
    st.fixed_dictionaries({"type": st.sampled_from(["Local", "S3", "Git", "Webhook", "Nope", 3])},
                          optional={"directory": st.one_of(st.just(str(WORLD["store"])), st.just("/"), json_any),
                                    "path": json_any, "volumeName": json_any, "bucket": json_any,
                                    "url": st.just("http://127.0.0.1:9/x.git"), "endpointURL": json_any,
                                    "__version__": st.just("1.4.1")}),
    json_any)


#: (where, field, values): what a status writer may change, one field at a time
MUTATIONS: list[tuple[str, str, st.SearchStrategy[Any]]] = [
    ("status", "location", locations), ("status", "storage", storages), ("status", "flowName", json_any),
    ("artifact", "digest", digests), ("artifact", "size", sizes), ("artifact", "format", formats),
    ("artifact", "signature", st.one_of(st.sampled_from(OTHER_SIGNATURES), json_any)),
    ("artifact", "fileName", json_any), ("artifact", "entrypoint", json_any), ("artifact", "url", json_any),
    ("status", "artifact", json_any), ("status", "git", json_any),
    ("storage", "directory", st.one_of(st.just("/"), st.just(str(WORLD["store"].parent)), json_any)),
    ("storage", "type", st.one_of(st.sampled_from(["S3", "Git", "Webhook", "Docker", "Nope"]), json_any)),
    ("storage", "url", st.just("http://127.0.0.1:9/x.git")), ("storage", "path", json_any),
]


@st.composite
def hostile_statuses(draw: st.DrawFn) -> dict[str, Any]:
    """The status the operator wrote, with one to four fields changed by a status writer."""
    status: dict[str, Any] = json.loads(json.dumps(GOOD_STATUS))
    for _ in range(draw(st.integers(0, 4))):
        where, field, values = draw(st.sampled_from(MUTATIONS))
        target = status if where == "status" else status.get(where)
        if isinstance(target, dict):
            target[field] = draw(values)
    return status


specs = st.one_of(st.just({"storageRef": {"name": "store"}}), st.just({"storageRef": {"name": "store"}, "key": "x"}),
                  json_any)


@pytest.fixture(autouse=True, scope="module")
def _agent_env() -> Any:
    saved = {k: os.environ.get(k) for k in ("FLOWSTORE_SIGNING_KEY", "FLOWSTORE_MAX_ARTIFACT_BYTES",
                                            "FLOWSTORE_CACHE_DIR", "FLOWSTORE_TRUSTED_STORAGES",
                                            "FLOWSTORE_VERIFY_KEY")}
    os.environ.update(FLOWSTORE_SIGNING_KEY=KEY.decode(), FLOWSTORE_MAX_ARTIFACT_BYTES="1Mi",
                      FLOWSTORE_CACHE_DIR=str(ROOT / "cache"))
    os.environ.pop("FLOWSTORE_TRUSTED_STORAGES", None)
    os.environ.pop("FLOWSTORE_VERIFY_KEY", None)
    yield
    for directory, dirnames, _ in os.walk(ROOT):
        for name in dirnames:
            os.chmod(os.path.join(directory, name), 0o700)
    shutil.rmtree(ROOT, ignore_errors=True)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(status=hostile_statuses(), spec=st.integers(0, 9).flatmap(lambda n: specs if n == 0 else
                                                                   st.just({"storageRef": {"name": "store"}})))
def test_a_hostile_status_only_ever_gives_the_signed_flow_or_an_agent_error(status: dict[str, Any], spec: Any) -> None:
    api = FakeApi({"metadata": {"name": "etl", "uid": UID}, "spec": spec, "status": status}, FLOWSTORAGE)
    tracemalloc.start()
    try:
        flow = client.load_flow("etl", "data", api=api)
    except client.AGENT_ERRORS:
        flow = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert not WORLD["marker"].exists(), "an unsigned artifact was executed or unpickled"
    assert peak < MEMORY_BOUND, f"the agent held {peak} bytes"
    if flow is not None:
        assert flow.run() == 42


# --------------------------------------------------------------------------- hostile bundles
GOOD_BUNDLE = bundle.pack({"etl/__init__.py": b"", "etl/main.py": SCRIPT, "etl/data.sql": b"select 1\n"},
                          bundle.Entrypoint.parse("etl/main.py:flow"))
RAW = gzip.decompress(GOOD_BUNDLE)


@st.composite
def hostile_bundles(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:  # flipped bytes of the compressed stream
        data = bytearray(GOOD_BUNDLE)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == 1:  # flipped bytes of the tar, recompressed (headers, manifest, contents)
        raw = bytearray(RAW)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        return gzip.compress(bytes(raw))
    if kind == 2:  # truncated, or with junk after
        cut = draw(st.integers(0, len(GOOD_BUNDLE)))
        return GOOD_BUNDLE[:cut] + draw(st.binary(max_size=64))
    if kind == 3:  # a tar of hostile members
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            manifest = draw(st.one_of(st.binary(max_size=200), st.just(json.dumps(
                {"format": bundle.FORMAT, "entrypoint": draw(json_any), "files": draw(json_any)}).encode())))
            info = tarfile.TarInfo(bundle.MANIFEST)
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
            for _ in range(draw(st.integers(0, 4))):
                member = tarfile.TarInfo(draw(st.text(min_size=1, max_size=60)))
                member.type = draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                                    tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]))
                content = draw(st.binary(max_size=100)) if member.type == tarfile.REGTYPE else b""
                member.size = len(content)
                member.linkname = draw(st.sampled_from(["/etc/passwd", "../x", "main.py"]))
                tar.addfile(member, io.BytesIO(content) if content else None)
        return gzip.compress(buffer.getvalue())
    return draw(st.binary(max_size=300))


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=hostile_bundles())
def test_a_hostile_bundle_is_a_bundle_error_or_exactly_its_manifest(data: bytes) -> None:
    assert bundle.is_bundle(data) in (True, False)
    try:
        unpacked = bundle.unpack(data)
    except bundle.BundleError:
        return
    assert unpacked.entrypoint.path in unpacked.files
    assert set(unpacked.manifest) == set(unpacked.files)
    cache = Cache(Settings(root=ROOT / "bundle-cache"))
    try:
        loading.load(data, "bundle", flow_name="etl daily", cache=cache)
    except client.AGENT_ERRORS:
        pass
    except Exception as exc:  # the flow's own code may fail (it was corrupted but self-consistent)
        assert unpacked.files != bundle.unpack(GOOD_BUNDLE).files, f"the intact bundle failed: {exc!r}"
    assert not WORLD["marker"].exists()
