"""flowstore.client against hostile statuses, without a cluster (a fake API answering ``get``, a
real Local storage): what an agent refuses, in which order, and that it only ever raises its own
errors — which ``flowstore get|run|locate`` turn into one line and exit 1."""

from __future__ import annotations

import base64
import json
import pickle
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from flowstore import cli, client
from flowstore.agent.errors import StatusError, TrustUnavailable, UntrustedLocation
from flowstore.artifacts.cache import Cache, Settings
from flowstore.artifacts.signing import SignatureError
from flowstore.storage.errors import IntegrityError
from flowstore.storage.local import Local
from tests.fakes.agent_api import FakeApi, digest_of, local_flow, sign_status

SCRIPT = b"from flowstore.flow import Flow\nflow = Flow('etl daily', lambda: 42)\n"
KEY = "a-signing-key-of-some-length-0123"


class Detonator:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).write_text, ("unpickled",))


def envelope_of(obj: Any) -> bytes:
    return json.dumps({"flow": base64.b64encode(pickle.dumps(obj)).decode(), "versions": {}}).encode()


@pytest.fixture(autouse=True)
def _agent_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FLOWSTORE_SIGNING_KEY", "FLOWSTORE_VERIFY_KEY", "FLOWSTORE_TRUSTED_STORAGES",
                 "FLOWSTORE_MAX_ARTIFACT_BYTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "cache"))


def test_a_legitimate_flow_loads_and_the_next_load_comes_from_the_cache(tmp_path: Path) -> None:
    api = FakeApi(*local_flow(tmp_path / "store", SCRIPT))
    assert client.load_flow("etl", "data", api=api).run() == 42
    artifact = client.load_artifact("etl", "data", api=api)
    assert (artifact.data, artifact.downloaded) == (SCRIPT, False)
    assert api.asked == ["storedflows", "flowstorages"] * 2


# --------------------------------------------------------------------------- item 8: agents
def test_an_artifact_without_a_digest_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    storedflow, flowstorage = local_flow(tmp_path / "store", envelope_of(Detonator(str(marker))), "pickle")
    storedflow["status"]["artifact"]["digest"] = None
    with pytest.raises(StatusError, match=r"status.artifact.digest is NoneType None, not a sha256 digest"):
        client.load_flow("etl", "data", api=FakeApi(storedflow, flowstorage))
    assert not marker.exists()


def test_a_download_stops_at_the_recorded_size(tmp_path: Path) -> None:
    """A Local location the bucket writer made a link to /dev/zero: read up to the recorded size
    plus one byte, then refused; memory stays flat."""
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    location = Path(storedflow["status"]["location"])
    location.unlink()
    location.symlink_to("/dev/zero")
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=f"more than the {len(SCRIPT)} bytes recorded"):
            client.load_flow("etl", "data", api=FakeApi(storedflow, flowstorage))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_a_recorded_size_beyond_what_the_agent_downloads_is_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    storedflow["status"]["artifact"]["size"] = 10 * 2**40
    with pytest.raises(StatusError, match="more than this agent downloads"):
        client.load_flow("etl", "data", api=FakeApi(storedflow, flowstorage))
    monkeypatch.setenv("FLOWSTORE_MAX_ARTIFACT_BYTES", "16")
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    with pytest.raises(StatusError, match="FLOWSTORE_MAX_ARTIFACT_BYTES"):
        client.load_flow("etl", "data", api=FakeApi(storedflow, flowstorage))


WRONG_TYPES = [
    ("artifact", "size", "12"), ("artifact", "size", -1), ("artifact", "size", True), ("artifact", "size", 1.5),
    ("artifact", "format", ["script"]), ("artifact", "format", "wheel"), ("artifact", "digest", 7),
    ("artifact", "digest", "md5:abc"), ("artifact", "signature", 3), ("artifact", "fileName", {"a": 1}),
    ("artifact", "url", 0), ("status", "flowName", ["etl"]), ("status", "location", 42),
    ("status", "artifact", "sha256:..."), ("status", "storage", ["S3"]), ("status", "git", "main"),
    ("storage", "type", None), ("storage", "type", 3), ("storage", "directory", 5), ("storage", "volumeName", ["pvc"]),
    ("spec", "storageRef", "store"), ("spec", "key", 9),
]


@pytest.mark.parametrize("where,field,value", WRONG_TYPES)
def test_wrong_typed_status_fields_are_status_errors_and_flowstore_run_says_so_in_one_line(
        tmp_path: Path, where: str, field: str, value: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    target = {"artifact": storedflow["status"]["artifact"], "status": storedflow["status"],
              "storage": storedflow["status"]["storage"], "spec": storedflow["spec"]}[where]
    target[field] = value
    api = FakeApi(storedflow, flowstorage)
    with pytest.raises(client.AGENT_ERRORS):
        client.load_flow("etl", "data", api=api)
    monkeypatch.setattr(client, "_custom_api", lambda: api)
    for command in ("run", "get", "locate"):
        assert cli.main([command, "etl", "-n", "data"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("flowstore: ") and err.count("\n") == 1, err


def test_an_empty_signing_key_is_an_error_not_verification_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    sign_status(storedflow["status"], KEY)
    api = FakeApi(storedflow, flowstorage)
    monkeypatch.setenv("FLOWSTORE_SIGNING_KEY", "")
    with pytest.raises(SignatureError, match="FLOWSTORE_SIGNING_KEY is set but empty"):
        client.load_flow("etl", "data", api=api)
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY")
    with pytest.raises(SignatureError, match="set but empty"):
        client.load_flow("etl", "data", api=api, signing_key="")
    assert client.load_flow("etl", "data", api=api, signing_key=KEY).run() == 42
    assert client.load_flow("etl", "data", api=api).run() == 42  # unset: digest only


# --------------------------------------------------------------------------- item 2: trust
def test_a_status_pointing_elsewhere_is_refused_before_the_storage_is_asked(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "etl").write_bytes(SCRIPT)
    storedflow["status"]["storage"]["directory"] = str(elsewhere)
    storedflow["status"]["location"] = str(elsewhere / "etl")
    reads: list[str] = []
    monkeypatch.setattr(Local, "get_bytes_bounded", lambda self, location, size: reads.append(location) or b"")
    with pytest.raises(UntrustedLocation) as refused:
        client.load_flow("etl", "data", api=FakeApi(storedflow, flowstorage))
    assert str(elsewhere) in str(refused.value) and str(tmp_path / "store") in str(refused.value)
    assert reads == []


def test_an_agent_that_may_not_read_flowstorages_is_told_what_to_grant_or_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    api = FakeApi(storedflow, flowstorage, forbidden=("flowstorages",))
    with pytest.raises(TrustUnavailable, match=r"get on flowstorages in namespace data.*FLOWSTORE_TRUSTED_STORAGES"):
        client.load_flow("etl", "data", api=api)
    monkeypatch.setenv("FLOWSTORE_TRUSTED_STORAGES", json.dumps([{"local": {"directory": str(tmp_path / "store")}}]))
    before = len(api.asked)
    assert client.load_flow("etl", "data", api=api).run() == 42
    assert api.asked[before:] == ["storedflows"], "with its own list, the agent never reads FlowStorages"
    monkeypatch.setenv("FLOWSTORE_TRUSTED_STORAGES", json.dumps([{"local": {"directory": "/somewhere/else"}}]))
    with pytest.raises(UntrustedLocation, match="entry 1 of FLOWSTORE_TRUSTED_STORAGES"):
        client.load_flow("etl", "data", api=api)


def test_a_missing_flowstorage_or_storedflow_says_so(tmp_path: Path) -> None:
    storedflow, _ = local_flow(tmp_path / "store", SCRIPT)
    with pytest.raises(TrustUnavailable, match="does not exist"):
        client.load_flow("etl", "data", api=FakeApi(storedflow, None))
    with pytest.raises(client.FlowNotAvailable, match="not found"):
        client.load_flow("etl", "data", api=FakeApi(None, None))  # type: ignore[arg-type]


def test_locate_prints_the_checked_status_and_the_seed_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    storedflow, flowstorage = local_flow(tmp_path / "store", SCRIPT)
    storedflow["status"]["storage"]["allowedEnv"] = ["AWS_SECRET_ACCESS_KEY"]  # never reaches the seed document
    monkeypatch.setattr(client, "_custom_api", lambda: FakeApi(storedflow, flowstorage))
    assert cli.main(["locate", "etl", "-n", "data"]) == 0
    assert json.loads(capsys.readouterr().out)["artifact"]["digest"] == digest_of(SCRIPT)
    assert cli.main(["locate", "etl", "-n", "data", "-o", "prefect"]) == 0
    seed = json.loads(capsys.readouterr().out)
    assert seed["type"] == "Local" and "allowedEnv" not in json.dumps(seed)


def test_a_bundle_loads_from_the_agent_cache_checked_against_its_manifest(tmp_path: Path) -> None:
    from flowstore.artifacts import bundle

    data = bundle.pack({"etl/__init__.py": b"", "etl/main.py": SCRIPT}, bundle.Entrypoint.parse("etl/main.py:flow"))
    api = FakeApi(*local_flow(tmp_path / "store", data, "bundle", entrypoint="etl/main.py:flow"))
    cache = Cache(Settings(root=tmp_path / "cache"))
    assert client.load_flow("etl", "data", api=api, cache=cache).run() == 42
    assert [e.kinds for e in cache.entries()] == [("artifact", "bundle")]
