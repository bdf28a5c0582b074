"""Azure storage against a real Azure Blob server (Azurite, LOCAL-CLOUD.md): the conformance
suite plus Azure's own rules: key prefix, blob metadata, large blobs, authentication and
error translation."""

from __future__ import annotations

import base64
import json
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from flowstore.storage import (
    AuthFailed,
    IntegrityError,
    InvalidConfig,
    NotFound,
    Unavailable,
    from_serialized,
)
from flowstore.storage.azure import MAX_SINGLE_PUT_SIZE, Azure
from flowstore.storage.base import sha256_hex
from tests.helpers.recording_proxy import RecordingProxy

from .conformance import ObjectStoreConformance, StorageFactory, assert_container_not_found, factory_for, make_flow

#: a valid base64 account key that is not the account's: Azurite rejects its signatures
CANARY_KEY = base64.b64encode(b"canary-azure-key-7f3a9c1e-do-not-leak-0123456789abcdef").decode()


class TestAzure(ObjectStoreConformance):
    default_label_prefix = "azure-flow-storage"
    fixed_key_kwarg = "blob_name"

    @pytest.fixture
    def storage_factory(self, azure_connection_string: str, azure_container: str, service: Any) -> StorageFactory:
        self.connection_string, self.container, self.service = azure_connection_string, azure_container, service
        return factory_for(Azure, "container", azure_container, connection_string=azure_connection_string)

    def make_prefixed_storage(self, prefix: str) -> Azure:
        return Azure(self.container, connection_string=self.connection_string, key_prefix=prefix)

    def raw_names(self) -> list[str]:
        return [b.name for b in self.service.get_container_client(self.container).list_blobs()]

    def raw_metadata(self, key: str) -> tuple[Any, Any]:
        props = self.service.get_blob_client(self.container, key).get_blob_properties()
        return props.metadata, props.content_settings.content_type

    def raw_url(self, key: str) -> str:
        endpoint = os.environ["FLOWSTORE_AZURE_BLOB_ENDPOINT"].rstrip("/")
        url = f"{endpoint}/{self.container}/{key}"
        assert url == self.service.get_blob_client(self.container, key).url  # the SDK's own URL
        return url


@pytest.fixture
def service(azure_connection_string: str) -> Any:
    return BlobServiceClient.from_connection_string(azure_connection_string)


@pytest.fixture
def azure_container(service: Any) -> Iterator[str]:
    """A new, empty container on the real Azure Blob server."""
    name = f"flows-{uuid.uuid4().hex[:12]}"
    service.create_container(name)
    yield name
    service.delete_container(name)


def _with_key(connection_string: str, key: str) -> str:
    fields = [p for p in connection_string.split(";") if p]
    return ";".join(f"AccountKey={key}" if p.startswith("AccountKey=") else p for p in fields)


def _account_key(connection_string: str) -> str:
    return next(p.partition("=")[2] for p in connection_string.split(";") if p.startswith("AccountKey="))


def _assert_not_in(exc: BaseException, *secrets: str) -> None:
    rendered = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in secrets:
        assert secret not in rendered


# ---------------------------------------------------------------------- layout and metadata
def test_script_blobs_are_python_text(azure_connection_string: str, azure_container: str, service: Any) -> None:
    scripted = Azure(azure_container, connection_string=azure_connection_string, stored_as_script=True)
    scripted.put_bytes("meta/flow.py", b"x = 1\n")
    props = service.get_blob_client(azure_container, "meta/flow.py").get_blob_properties()
    assert props.content_settings.content_type == "text/x-python"


def test_a_put_blob_is_verified_by_its_md5_only_when_the_service_stored_exactly_the_bytes_sent(
        azure_connection_string: str, azure_container: str, service: Any) -> None:
    """Put Blob's answer carries the MD5 the service computed over what it stored: equal to ours,
    no read-back is needed; another (a body changed on the way, same length, so the signature
    still holds) is an IntegrityError and the blob is removed. A block upload is not verified by
    its answer (the block list's MD5): the publisher reads it back."""
    data = b"def flow():\n    return 42\n" * 8
    assert Azure(azure_container, connection_string=azure_connection_string).put_bytes("v/flow.py", data).verified

    def flip_a_byte(method: str, path: str, body: bytes | None) -> bytes | None:
        return body[:-1] + b"!" if method == "PUT" and body else None

    endpoint = next(p.split("=", 1)[1] for p in azure_connection_string.split(";") if p.startswith("BlobEndpoint="))
    with RecordingProxy(endpoint.split("/devstoreaccount1")[0], rewrite=flip_a_byte) as proxy:
        proxied = azure_connection_string.replace(endpoint, endpoint.replace(
            endpoint.split("/devstoreaccount1")[0], proxy.url))
        with pytest.raises(IntegrityError) as info:
            Azure(azure_container, connection_string=proxied).put_bytes("v/changed.py", data)
    assert "corrupted in transit" in str(info.value) and "v/changed.py" in str(info.value)
    assert not service.get_blob_client(azure_container, "v/changed.py").exists()  # nothing corrupt left
    big = Azure(azure_container, connection_string=azure_connection_string).put_bytes(
        "v/big.bin", os.urandom(MAX_SINGLE_PUT_SIZE + 1))
    assert not big.verified


def test_20_mib_round_trip(azure_connection_string: str, azure_container: str, service: Any) -> None:
    storage = Azure(azure_container, connection_string=azure_connection_string)
    data = os.urandom(20 * 1024 * 1024)
    artifact = storage.put_bytes("big/object.bin", data)
    assert (artifact.size, artifact.sha256) == (len(data), sha256_hex(data))
    props = service.get_blob_client(azure_container, "big/object.bin").get_blob_properties()
    assert props.size == len(data) and props.metadata["sha256"] == sha256_hex(data)
    info = storage.stat("big/object.bin")
    assert info is not None and (info.size, info.sha256) == (len(data), sha256_hex(data))
    assert storage.get_bytes("big/object.bin") == data


# ---------------------------------------------------------------------- configuration
def test_from_config_reads_the_secret_key(azure_connection_string: str, azure_container: str) -> None:
    storage = Azure.from_config(
        {"container": azure_container, "keyPrefix": "p", "credentialsKey": "conn"},
        credentials={"conn": azure_connection_string},
    )
    storage.check_container()
    location = storage.add_flow(make_flow("from config", 5))
    assert location.startswith("p/from-config/")
    storage.build()
    assert storage.get_flow(location).run() == 5


def test_from_config_missing_credentials_key_names_it(azure_connection_string: str) -> None:
    with pytest.raises(InvalidConfig, match="AZURE_STORAGE_CONNECTION_STRING") as info:
        Azure.from_config({"container": "c"}, credentials={"other": azure_connection_string, "more": "x"})
    assert "other, more" in str(info.value) or "more, other" in str(info.value)
    _assert_not_in(info.value, azure_connection_string, _account_key(azure_connection_string))
    with pytest.raises(InvalidConfig, match="custom-key"):
        Azure.from_config({"container": "c", "credentialsKey": "custom-key"}, credentials={})
    with pytest.raises(InvalidConfig, match="container"):
        Azure.from_config({}, credentials={"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string})


def test_operator_never_uses_its_own_environment(azure_connection_string: str, azure_container: str) -> None:
    # a FlowStorage spec (no `type`) with no Secret and no accountURL: no credentials, even
    # though AZURE_STORAGE_CONNECTION_STRING is set in this process
    assert os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    storage = Azure.from_config({"container": azure_container})
    assert "accountURL" not in storage.to_status()
    with pytest.raises(InvalidConfig, match="credentialsSecretRef"):
        storage.check_container()


def test_class_falls_back_to_the_environment(
    azure_connection_string: str, azure_container: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Azure(azure_container)  # the seed: AZURE_STORAGE_CONNECTION_STRING
    storage.check_container()
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    lazy = Azure(azure_container)  # the seed reads credentials when it needs them, not before
    assert lazy.serialize()["container"] == azure_container
    with pytest.raises(InvalidConfig, match="AZURE_STORAGE_CONNECTION_STRING"):
        lazy.check_container()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_connection_string)
    lazy.check_container()  # in reach now: found when the client is made
    assert lazy.to_status()["accountURL"] == storage.to_status()["accountURL"]


def test_connection_string_and_account_url_together_are_invalid(azure_connection_string: str) -> None:
    with pytest.raises(InvalidConfig, match="not both"):
        Azure("c", connection_string=azure_connection_string, account_url="https://other.blob.core.windows.net")
    with pytest.raises(InvalidConfig, match="not both"):
        Azure.from_config({"container": "c", "accountURL": "https://other.blob.core.windows.net"},
                          credentials={"AZURE_STORAGE_CONNECTION_STRING": azure_connection_string})


@pytest.mark.parametrize("malformed", ["not a connection string", "AccountName=;AccountKey=eA==", "garbage;;x"])
def test_malformed_connection_string_is_invalid_config(malformed: str) -> None:
    with pytest.raises(InvalidConfig, match="connection string") as info:
        Azure("c", connection_string=malformed).check_container()
    assert malformed not in str(info.value)


def test_serialize_never_contains_the_key_and_round_trips(
    azure_connection_string: str, azure_container: str
) -> None:
    sas_like = _with_key(azure_connection_string, CANARY_KEY)
    storage = Azure.from_config(
        {"container": azure_container, "keyPrefix": "p", "blobName": None},
        credentials={"AZURE_STORAGE_CONNECTION_STRING": sas_like},
    )
    doc = storage.to_status()
    endpoint = os.environ["FLOWSTORE_AZURE_BLOB_ENDPOINT"].rstrip("/")
    assert {k: doc[k] for k in ("type", "container", "keyPrefix", "accountURL")} == {
        "type": "Azure", "container": azure_container, "keyPrefix": "p", "accountURL": endpoint,
    }
    assert "blobName" not in doc
    rendered = json.dumps(doc) + repr(storage)
    assert CANARY_KEY not in rendered and "AccountKey" not in rendered

    # an agent rebuilds it with its own connection string for the recorded account
    writer = Azure(azure_container, connection_string=azure_connection_string, key_prefix="p")
    location = writer.add_flow(make_flow("agent side", "loaded"))
    writer.build()
    doc = json.loads(json.dumps(writer.to_status()))
    rebuilt = from_serialized(doc, connection_string=azure_connection_string)
    assert rebuilt.to_status() == doc
    assert rebuilt.get_flow(location).run() == "loaded"


# ---------------------------------------------------------------------- error translation
def test_missing_container_is_container_not_found(azure_connection_string: str) -> None:
    container = f"absent-{uuid.uuid4().hex[:10]}"
    storage = Azure(container, connection_string=azure_connection_string)
    calls = (storage.check_container, lambda: storage.put_bytes("k", b"x"), lambda: storage.get_bytes("k"),
             lambda: storage.stat("k"), storage.run_basic_healthchecks)
    assert_container_not_found(container, calls)


def test_missing_blob_is_not_found(azure_connection_string: str, azure_container: str) -> None:
    storage = Azure(azure_container, connection_string=azure_connection_string)
    with pytest.raises(NotFound, match=f"{azure_container}/nope"):
        storage.get_bytes("nope")
    storage.check_container()  # the container itself is fine


def test_wrong_account_key_is_auth_failed_and_not_leaked(azure_connection_string: str, azure_container: str) -> None:
    wrong = _with_key(azure_connection_string, CANARY_KEY)
    storage = Azure.from_config({"container": azure_container},
                                credentials={"AZURE_STORAGE_CONNECTION_STRING": wrong})
    calls = (storage.check_container, lambda: storage.put_bytes("k", b"x"), lambda: storage.get_bytes("k"),
             lambda: storage.stat("k"), lambda: storage.delete("k"))
    for call in calls:
        with pytest.raises(AuthFailed) as info:
            call()
        assert info.value.retryable is False
        assert "Secret" in str(info.value)
        _assert_not_in(info.value, CANARY_KEY, wrong)
    assert CANARY_KEY not in repr(storage)


def test_unreachable_endpoint_is_unavailable_quickly(azure_connection_string: str) -> None:
    unreachable = ";".join(
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1" if p.startswith("BlobEndpoint=") else p
        for p in azure_connection_string.split(";") if p
    )
    storage = Azure("flows", connection_string=unreachable)
    for call in (storage.check_container, lambda: storage.get_bytes("k"), lambda: storage.stat("k"),
                 lambda: storage.put_bytes("k", b"x"), lambda: storage.delete("k")):
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            call()
        assert time.monotonic() - started < 10
        assert info.value.retryable is True
        assert "127.0.0.1:9" in str(info.value)


def test_account_url_needs_https_for_token_authentication() -> None:
    storage = Azure("flows", account_url="http://127.0.0.1:9/devstoreaccount1", use_environment=False)
    assert storage.to_status()["accountURL"] == "http://127.0.0.1:9/devstoreaccount1"
    with pytest.raises(InvalidConfig, match=r"(?i)https"):
        storage.check_container()
