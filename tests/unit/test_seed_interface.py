"""The seed's interface where the classes used to demand more than the seed does (no server).

* ``Azure(container=...)``: no connection string is needed until a client is.
"""

from __future__ import annotations

import json

import pytest

from flowstore.storage import InvalidConfig, from_serialized
from flowstore.storage.azure import Azure

SCRIPT = b"from flowstore.flow import Flow\n\n\ndef main():\n    return 'ran in place'\n\n\nflow = Flow('etl', main)\n"
DEV_ACCOUNT = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
               "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")


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
