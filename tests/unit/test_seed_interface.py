"""The seed's interface where the classes used to demand more than the seed does (no server).

* ``Local(stored_as_script=True, path=...)``: the flow is the author's own script, wherever it
  is; ``add_flow`` returns ``path`` without the source; ``get_flow(path)`` runs that file (or
  imports a module path). Storages made from a FlowStorage spec stay confined to their directory.
* ``Azure(container=...)``: no connection string is needed until a client is.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from flowstore.storage import IntegrityError, InvalidConfig, NotFound, from_serialized
from flowstore.storage.azure import Azure
from flowstore.storage.local import Local

SCRIPT = b"from flowstore.flow import Flow\n\n\ndef main():\n    return 'ran in place'\n\n\nflow = Flow('etl', main)\n"
DEV_ACCOUNT = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
               "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "anywhere" / "etl_flow.py"
    path.parent.mkdir()
    path.write_bytes(SCRIPT)
    return path


def test_local_script_mode_uses_the_authors_file_where_it_is(tmp_path: Path, script: Path) -> None:
    storage = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path=str(script))
    assert storage.add_flow("etl") == str(script)  # no source needed: the seed's add_flow
    assert storage.flows == {"etl": str(script)}
    with pytest.raises(ValueError, match="Name conflict"):
        storage.add_flow("etl")
    assert storage.build() is storage
    assert list((tmp_path / "flows").iterdir()) == []  # nothing copied or written
    assert storage.get_flow(str(script)).run() == "ran in place"
    assert storage.get_flow().run() == "ran in place"  # the seed's default: `path`
    assert storage.get_flow(str(script), sha256=hashlib.sha256(SCRIPT).hexdigest()).name == "etl"
    with pytest.raises(IntegrityError):
        storage.get_flow(str(script), sha256="0" * 64)
    storage.delete(str(script))  # never the author's file
    assert script.read_bytes() == SCRIPT


def test_local_relative_script_path_is_the_working_directorys(tmp_path: Path, script: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(script.parent.parent)
    storage = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path="anywhere/etl_flow.py")
    assert storage.add_flow("etl") == "anywhere/etl_flow.py"
    assert storage.get_flow("anywhere/etl_flow.py").run() == "ran in place"


def test_local_script_path_may_be_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "seedpkg_flows"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "etl.py").write_bytes(SCRIPT + b"\n\ndef make():\n    return Flow('made', lambda: 'factory')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        by_name = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path="seedpkg_flows.etl")
        by_name.add_flow("etl")
        assert by_name.get_flow().run() == "ran in place"
        by_attribute = Local(directory=str(tmp_path / "flows"), stored_as_script=True,
                             path="seedpkg_flows.etl:make")
        by_attribute.add_flow("made")
        assert by_attribute.get_flow("seedpkg_flows.etl:make").run() == "factory"
        with pytest.raises(InvalidConfig, match="module path"):
            by_name.get_flow(sha256="0" * 64)
        missing = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path="seedpkg_flows.nope")
        missing.add_flow("etl")
        with pytest.raises(NotFound, match="neither a file nor an importable module"):
            missing.get_flow()
    finally:
        for name in [m for m in sys.modules if m.startswith("seedpkg_flows")]:
            del sys.modules[name]


def test_local_seed_script_survives_both_documents(tmp_path: Path, script: Path) -> None:
    storage = Local(directory=str(tmp_path / "flows"), stored_as_script=True, path=str(script))
    storage.add_flow("etl")
    for doc in (storage.serialize(), storage.to_status()):
        agent = from_serialized(json.loads(json.dumps(doc)))
        assert agent.get_flow(str(script)).run() == "ran in place"


def test_local_from_a_flowstorage_spec_is_confined(tmp_path: Path, script: Path) -> None:
    """A FlowStorage spec (no ``type``) must not make the operator read or write elsewhere."""
    spec = {"directory": str(tmp_path / "flows"), "path": str(script), "storedAsScript": True}
    storage = Local.from_config(spec)
    storage.add_flow("etl")
    with pytest.raises(InvalidConfig, match="outside the storage directory"):
        storage.get_flow(str(script))
    with pytest.raises(InvalidConfig, match="outside the storage directory"):
        storage.stat(str(script))
    with pytest.raises(InvalidConfig, match="outside the storage directory"):
        Local.from_config({"directory": str(tmp_path / "flows")}).put_bytes(str(tmp_path / "x.bin"), b"x")
    assert not (tmp_path / "x.bin").exists()


def test_azure_constructs_and_serializes_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    storage = Azure(container="c")
    storage.add_flow("etl", source=SCRIPT)
    assert storage.serialize() == {"type": "Azure", "__version__": "1.4.1", "container": "c",
                                   "stored_as_script": False, "flows": {"etl": storage.flows["etl"]},
                                   "secrets": []}
    assert storage.to_status()["container"] == "c" and "accountURL" not in storage.to_status()
    assert isinstance(from_serialized(storage.serialize()), Azure)  # an agent without credentials yet
    with pytest.raises(InvalidConfig, match="AZURE_STORAGE_CONNECTION_STRING") as info:
        storage.build()  # credentials are needed to upload
    assert "container c" in info.value.message
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", DEV_ACCOUNT)
    assert storage._client().account_name == "devstoreaccount1"  # read when the client is made
    assert storage.to_status()["accountURL"] == "http://127.0.0.1:9/devstoreaccount1"
    assert "a2V5" not in json.dumps(storage.to_status()) + json.dumps(storage.serialize())


def test_azure_operator_never_takes_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", DEV_ACCOUNT)
    storage = Azure.from_config({"container": "c"})  # a FlowStorage spec without a Secret
    with pytest.raises(InvalidConfig, match="credentialsSecretRef"):
        storage.check_container()
