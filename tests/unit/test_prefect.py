"""flowstore.prefect without Prefect and without a cluster: what a pull prepares from a StoredFlow's
status (a fake API answering ``get``, a Local storage in a temporary directory), the digest-keyed
artifact cache (verified on every use, one download among several processes), the RunnerStorage's
protocol members and the pull step's shape. Prefect itself runs these in tests/e2e/test_prefect3.py."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from flowstore import client
from flowstore import prefect as fp
from flowstore.agent.status import StoredFlowView, parse
from flowstore.artifacts import bundle, signing, statement
from flowstore.artifacts.bundle import Entrypoint
from flowstore.artifacts.cache import Cache, CacheError, Settings
from flowstore.artifacts.signing import SignatureError
from flowstore.storage.errors import IntegrityError
from flowstore.storage.local import Local

SCRIPT = b"from prefect import flow\n\n@flow\ndef flow_():\n    return 42\n"
KEY = "a-signing-key-of-some-length-0123"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeApi:
    """What an agent asks of the Kubernetes API: one StoredFlow (spec.storageRef: store) with
    this status, and its FlowStorage ``store`` (a Local storage at the status's directory)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict[str, Any]:
        if plural == "flowstorages":
            return {"metadata": {"name": name, "namespace": namespace},
                    "spec": {"local": {"directory": self.status["storage"]["directory"]}}}
        return {"metadata": {"name": name, "namespace": namespace, "uid": "uid-1"},
                "spec": {"storageRef": {"name": "store"}}, "status": self.status}


def stored(tmp_path: Path, data: bytes, fmt: str = "script", **artifact: Any) -> dict[str, Any]:
    """A StoredFlow status whose artifact `data` lives in a Local storage under `tmp_path`, as the
    operator writes it (``Storage.to_status``)."""
    directory = tmp_path / "store"
    directory.mkdir(exist_ok=True)
    location = directory / f"flow-{hashlib.sha256(data).hexdigest()[:8]}"
    location.write_bytes(data)
    return {"location": str(location), "flowName": "etl daily",
            "storage": Local(directory=str(directory)).to_status(),
            "artifact": {"url": f"file://{location}", "digest": digest_of(data), "size": len(data), "format": fmt,
                         **artifact}}


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download ``flowstore.client`` makes, by location."""
    made: list[str] = []
    real = client.download

    def counting(located: client.Located, **kwargs: Any) -> bytes:
        made.append(located.view.location)
        return real(located, **kwargs)

    monkeypatch.setattr(client, "download", counting)
    return made


def prepare(tmp_path: Path, status: dict[str, Any], **kwargs: Any) -> fp.PreparedFlow:
    kwargs.setdefault("cache", tmp_path / "cache")
    return fp.prepare("etl-daily", "data", tmp_path / "work" / "data_etl-daily", api=FakeApi(status), **kwargs)


# --------------------------------------------------------------------------- scripts and bundles
def test_a_script_is_written_under_its_own_file_name_and_downloaded_once(tmp_path: Path,
                                                                         downloads: list[str]) -> None:
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    first = prepare(tmp_path, status)
    assert first.directory == tmp_path / "work" / "data_etl-daily"
    assert sorted(p.name for p in first.directory.iterdir()) == ["etl_daily.py"]
    assert (first.directory / "etl_daily.py").read_bytes() == SCRIPT
    assert (first.entrypoint, first.digest, first.downloaded) == ("etl_daily.py", digest_of(SCRIPT), True)
    assert first.outputs()["directory"] == str(first.directory)

    # the next pull of the same digest reads the cache: the storage is not asked again
    (first.directory / "output.csv").write_text("a run wrote this")
    second = prepare(tmp_path, status)
    assert (second.downloaded, len(downloads)) == (False, 1)
    assert sorted(p.name for p in second.directory.iterdir()) == ["etl_daily.py"], "a fresh working copy"
    assert "from the cache" in second.summary() and digest_of(SCRIPT) in second.summary()


def test_an_inline_script_is_flow_py(tmp_path: Path) -> None:
    prepared = prepare(tmp_path, stored(tmp_path, SCRIPT))
    assert [p.name for p in prepared.directory.iterdir()] == ["flow.py"]


def test_a_bundle_is_extracted_with_its_entrypoint_and_git_commit(tmp_path: Path) -> None:
    files = {"etl/main.py": b"from etl import helpers\n", "etl/helpers.py": b"X = 1\n", "etl/__init__.py": b"",
             "etl/sql/daily.sql": b"select 1\n"}
    data = bundle.pack(files, Entrypoint.parse("etl/main.py:flow"))
    status = stored(tmp_path, data, "bundle", entrypoint="etl/main.py:flow", fileCount=4)
    status["git"] = {"repo": "team/flows", "path": "etl", "ref": "main", "commit": "3f2c" * 10}
    prepared = prepare(tmp_path, status)
    written = sorted(str(p.relative_to(prepared.directory)) for p in prepared.directory.rglob("*") if p.is_file())
    assert written == sorted(files)
    assert prepared.entrypoint == "etl/main.py:flow"
    assert prepared.labels() == {"flowstore.storedflow": "data/etl-daily", "flowstore.digest": digest_of(data),
                                 "flowstore.format": "bundle", "flowstore.git.commit": "3f2c" * 10}
    assert "git commit " + "3f2c" * 10 in prepared.summary()


def test_a_pickle_is_refused_with_what_to_do_before_anything_is_downloaded(tmp_path: Path,
                                                                            downloads: list[str]) -> None:
    with pytest.raises(fp.NotForPrefect, match=r"storedAsScript: true"):
        prepare(tmp_path, stored(tmp_path, b'{"flow": ""}', "pickle"))
    assert downloads == []
    assert not (tmp_path / "work").exists()


# --------------------------------------------------------------------------- verification
def test_a_tampered_artifact_is_refused_and_neither_cached_nor_written(tmp_path: Path) -> None:
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    Path(status["location"]).write_bytes(b"import os; os.system('echo pwned')\n")
    with pytest.raises(IntegrityError, match="does not match the recorded"):
        prepare(tmp_path, status)
    assert not (tmp_path / "work" / "data_etl-daily").exists()
    assert [p.name for p in (tmp_path / "cache" / "artifacts").iterdir() if not p.name.startswith(".")] == []


def test_a_cache_entry_altered_on_disk_is_dropped_and_downloaded_again(tmp_path: Path, downloads: list[str]) -> None:
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    prepare(tmp_path, status)
    entry = tmp_path / "cache" / "artifacts" / hashlib.sha256(SCRIPT).hexdigest()
    entry.chmod(0o644)
    entry.write_bytes(b"print('not what was verified')\n")
    prepared = prepare(tmp_path, status)
    assert (prepared.directory / "etl_daily.py").read_bytes() == SCRIPT
    assert (prepared.downloaded, len(downloads)) == (True, 2)
    assert entry.read_bytes() == SCRIPT


def signed(status: dict[str, Any], key: str | bytes = KEY) -> dict[str, Any]:
    """`status` as the operator signs it (revision 1, designation 1)."""
    status["artifact"].update(revision=1, designation=1, lastUpdateTime="2026-11-26T10:00:00Z")
    signer = signing.signer_from_secret(key.encode() if isinstance(key, str) else key, None, where="test")
    made = statement.sign(statement.from_status(status, namespace="data", name="etl-daily", uid="uid-1"), signer)
    status["artifact"].update(signature=made.signature, keyId=made.key_id)
    return status


@pytest.fixture(autouse=True)
def _own_agent_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's memory of verified designations under this test's own cache."""
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "agent"))
    monkeypatch.delenv("FLOWSTORE_VERIFY_KEY", raising=False)


def test_signatures_are_checked_before_the_cache_or_the_storage(tmp_path: Path, downloads: list[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY", raising=False)
    status = signed(stored(tmp_path, SCRIPT, fileName="etl_daily.py"))
    assert prepare(tmp_path, status, signing_key=KEY).signature_verified
    with pytest.raises(SignatureError, match="which this agent does not hold"):
        prepare(tmp_path, status, signing_key="another-key-0123456789")
    monkeypatch.setenv("FLOWSTORE_SIGNING_KEY", "another-key-0123456789")
    with pytest.raises(SignatureError, match="FLOWSTORE_SIGNING_KEY"):
        prepare(tmp_path, status)
    unsigned = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    with pytest.raises(SignatureError, match="not signed"):
        prepare(tmp_path, unsigned, signing_key=KEY)
    assert len(downloads) == 1, "refused records are never downloaded"


def test_an_ed25519_public_key_verifies_and_may_be_written_into_the_pull_step(tmp_path: Path,
                                                                              downloads: list[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    status = signed(stored(tmp_path, SCRIPT, fileName="etl_daily.py"), private)
    assert prepare(tmp_path, status, verify_key=public).signature_verified
    tampered = copy.deepcopy(status)
    tampered["flowName"] = "another flow"
    with pytest.raises(SignatureError, match="does not match"):
        prepare(tmp_path, tampered, verify_key=public)
    assert len(downloads) == 1
    step = fp.FlowstoreStorage("etl-daily", "data", verify_key=public).to_pull_step()
    assert step == {fp.PULL_STEP: {"name": "etl-daily", "namespace": "data", "verify_key": public}}


def _fetch_once_in_a_child(root: str, log: str, data: bytes, barrier: Any) -> None:
    def fetch() -> bytes:
        with open(log, "a") as fh:
            fh.write("fetch\n")
        return data

    barrier.wait()
    got, _ = Cache(Settings(root=Path(root))).artifact(digest_of(data), fetch)
    assert got == data


def test_several_processes_pulling_one_digest_download_it_once(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    children = [context.Process(target=_fetch_once_in_a_child,
                                args=(str(tmp_path / "cache"), str(tmp_path / "log"), data, barrier))
                for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0, 0]
    assert (tmp_path / "log").read_text() == "fetch\n"
    assert sorted(p.name for p in (tmp_path / "cache" / "artifacts").iterdir() if not p.name.startswith(".")) == [
        hashlib.sha256(data).hexdigest()]


def test_the_cache_keeps_only_bytes_that_match_their_digest(tmp_path: Path) -> None:
    cache = Cache(Settings(root=tmp_path))
    with pytest.raises(CacheError, match="do not hash to"):
        cache.artifact(digest_of(SCRIPT), lambda: b"other bytes")
    assert [p for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith(".")] == []
    with pytest.raises(CacheError, match="not a sha256 digest"):
        cache.artifact("md5:abc", lambda: SCRIPT)


# --------------------------------------------------------------------------- the RunnerStorage
def test_the_runner_storage_follows_prefects_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    monkeypatch.setattr(client, "_custom_api", lambda: FakeApi(status))
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY", raising=False)
    storage = fp.FlowstoreStorage("etl-daily", "data")
    assert storage.pull_interval == 60
    storage.set_base_path(tmp_path / "base")
    assert storage.destination == tmp_path / "base" / "data_etl-daily"
    copied = copy.deepcopy(storage)  # what Prefect's Runner does before set_base_path
    assert copied == storage and storage != fp.FlowstoreStorage("etl-daily", "other")
    asyncio.run(storage.pull_code())
    assert (storage.destination / "etl_daily.py").read_bytes() == SCRIPT
    assert storage.prepared is not None and storage.prepared.digest == digest_of(SCRIPT)
    assert storage.to_pull_step() == {"flowstore.prefect.pull_flow": {"name": "etl-daily", "namespace": "data"}}

    # an unchanged digest leaves a runner's working copy alone; a new one replaces it
    (storage.destination / "state.txt").write_text("a running flow's file")
    asyncio.run(storage.pull_code())
    assert (storage.destination / "state.txt").exists()
    newer = stored(tmp_path, SCRIPT + b"# v2\n", fileName="etl_daily.py")
    status.clear()
    status.update(newer)
    asyncio.run(storage.pull_code())
    assert not (storage.destination / "state.txt").exists()
    assert (storage.destination / "etl_daily.py").read_bytes().endswith(b"# v2\n")


class SavedSecret:
    """Duck type of a saved ``prefect.blocks.system.Secret``."""

    def get(self) -> str:
        return KEY

    def get_block_placeholder(self) -> str:
        return "prefect.blocks.secret.flowstore-signing-key"


def test_a_pull_step_never_carries_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY", raising=False)
    raw = fp.FlowstoreStorage("etl-daily", "data", signing_key=KEY).to_pull_step()
    assert raw == {"flowstore.prefect.pull_flow": {"name": "etl-daily", "namespace": "data",
                                                   "require_signature": True}}
    block = fp.FlowstoreStorage("etl-daily", "data", signing_key=SavedSecret()).to_pull_step()
    assert block["flowstore.prefect.pull_flow"]["signing_key"] == "{{ prefect.blocks.secret.flowstore-signing-key }}"
    monkeypatch.setenv("FLOWSTORE_SIGNING_KEY", KEY)
    assert fp.FlowstoreStorage("etl-daily", "data").to_pull_step()["flowstore.prefect.pull_flow"][
        "require_signature"] is True


# --------------------------------------------------------------------------- the pull step
def test_pull_flow_prepares_the_working_directory_and_returns_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py")
    monkeypatch.setattr(client, "_custom_api", lambda: FakeApi(status))
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    out = fp.pull_flow(name="etl-daily", namespace="data")
    assert out == {"directory": str(run_dir / "data_etl-daily"), "digest": digest_of(SCRIPT), "commit": None,
                   "storedflow": "data/etl-daily", "entrypoint": "etl_daily.py", "format": "script"}
    assert (Path(out["directory"]) / "etl_daily.py").read_bytes() == SCRIPT
    with pytest.raises(SignatureError, match="has no key"):
        fp.pull_flow(name="etl-daily", namespace="data", require_signature=True)


def view_of(status: dict[str, Any], name: str = "etl-daily", object_name: str | None = None) -> StoredFlowView:
    spec: dict[str, Any] = {"storageRef": {"name": "store"}}
    if object_name:
        spec["objectName"] = object_name
    return parse({"spec": spec, "status": status}, namespace="data", name=name)


def test_the_printed_pull_step_is_the_yaml_prefect_reads() -> None:
    storage = {"type": "Git", "url": "https://git.example.com/flows.git"}
    status = {"location": "etl_daily.py", "storage": storage,
              "artifact": {"format": "script", "fileName": "etl_daily.py", "digest": digest_of(SCRIPT), "size": 1},
              "git": {"commit": "ab" * 20}}
    text = fp.pull_step_yaml(view_of(status))
    assert yaml.safe_load(text) == [{"flowstore.prefect.pull_flow": {"name": "etl-daily", "namespace": "data"}}]
    assert digest_of(SCRIPT) in text and "ab" * 20 in text
    # the script's variable is the StoredFlow's spec.objectName; without one the reader names it
    assert "# deployment entrypoint: etl_daily.py:FLOW  (FLOW: the variable holding your @flow; set the " \
           "StoredFlow's spec.objectName to have it printed here)" in text
    named = fp.pull_step_yaml(view_of(status, object_name="etl_daily"))
    assert "# deployment entrypoint: etl_daily.py:etl_daily\n" in named
    bundle = {**status, "artifact": {"format": "bundle", "entrypoint": "sales/main.py:report",
                                     "digest": digest_of(SCRIPT), "size": 1}}
    assert "# deployment entrypoint: sales/main.py:report\n" in fp.pull_step_yaml(view_of(bundle, "sales", "ignored"))
    signed = {"artifact": {**status["artifact"], "signature": "hmac-sha256:00"}}
    assert yaml.safe_load(fp.pull_step_yaml(view_of({**status, **signed})))[0][fp.PULL_STEP]["require_signature"]
    with pytest.raises(fp.NotForPrefect, match="storedAsScript"):
        fp.pull_step_yaml(view_of({**status, "artifact": {**status["artifact"], "format": "pickle"}}))


# --------------------------------------------------------------------------- revisions
def test_a_pull_by_revision_or_digest_writes_that_revision_checked_like_the_current(tmp_path: Path) -> None:
    """pull_flow's revision=/digest= (docs/revisions.md): the entry of status.history, trusted
    and verified as the current artifact is; a revision not in the history is refused, naming
    those there are."""
    old_script = SCRIPT.replace(b"42", b"41")
    old = stored(tmp_path, old_script, fileName="etl_daily.py")
    status = stored(tmp_path, SCRIPT, fileName="etl_daily.py", revision=2)
    status["history"] = [
        {"revision": 2, "location": status["location"], "storedAt": "2026-11-26T10:00:00Z",
         **{k: status["artifact"][k] for k in ("url", "digest", "size", "format", "fileName")},
         "sourceDigest": status["artifact"]["digest"], "inputsDigest": "sha256:" + "2" * 64},
        {"revision": 1, "location": old["location"], "storedAt": "2026-11-25T10:00:00Z",
         "supersededAt": "2026-11-26T10:00:00Z",
         **{k: old["artifact"][k] for k in ("url", "digest", "size", "format", "fileName")},
         "sourceDigest": old["artifact"]["digest"], "inputsDigest": "sha256:" + "1" * 64}]
    by_number = prepare(tmp_path, status, revision=1)
    assert by_number.digest == digest_of(old_script)
    assert (by_number.directory / "etl_daily.py").read_bytes() == old_script
    by_digest = prepare(tmp_path, status, digest=digest_of(old_script))
    assert (by_digest.directory / "etl_daily.py").read_bytes() == old_script
    assert prepare(tmp_path, status).digest == digest_of(SCRIPT)

    with pytest.raises(client.FlowNotAvailable, match=r"revision 7 is not in the StoredFlow's history"):
        prepare(tmp_path, status, revision=7)
    Path(old["location"]).write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        prepare(tmp_path, status, revision=1, cache=tmp_path / "another-cache")
