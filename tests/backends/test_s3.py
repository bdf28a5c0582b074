"""S3 storage against a real S3 server (moto server, LOCAL-CLOUD.md): the conformance suite
plus S3's own rules: key prefix, object metadata, multipart, and error translation."""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from flowstore.storage import (
    AuthFailed,
    InvalidConfig,
    NotFound,
    Unavailable,
    from_serialized,
)
from flowstore.storage.base import sha256_hex
from flowstore.storage.s3 import S3
from tests.helpers.moto import auth_enforcing_moto
from tests.helpers.net import free_port
from tests.helpers.recording_proxy import RecordingProxy

from .conformance import (
    SCRIPT_SOURCE,
    ObjectStoreConformance,
    StorageFactory,
    assert_container_not_found,
    factory_for,
    make_flow,
)

CANARY_SECRET = "canary-Secret-7f3a9c1e-do-not-leak"
CANARY_KEY_ID = "AKIACANARY7F3A9C1E00"


class TestS3(ObjectStoreConformance):
    default_label_prefix = "s3-flow-storage"

    @pytest.fixture
    def storage_factory(self, s3_endpoint: str, s3_bucket: str, raw_client: Any) -> StorageFactory:
        self.endpoint, self.bucket, self.client = s3_endpoint, s3_bucket, raw_client
        return factory_for(S3, "bucket", s3_bucket, endpoint_url=s3_endpoint, region="us-east-1")

    def make_prefixed_storage(self, prefix: str) -> S3:
        return S3.from_config({"bucket": self.bucket, "keyPrefix": prefix, "endpointURL": self.endpoint,
                               "region": "us-east-1"})

    def raw_names(self) -> list[str]:
        return [o["Key"] for o in self.client.list_objects_v2(Bucket=self.bucket)["Contents"]]

    def raw_metadata(self, key: str) -> tuple[Any, Any]:
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return head["Metadata"], head["ContentType"]

    def raw_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


@pytest.fixture
def raw_client(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")



@pytest.fixture(scope="module")
def auth_enforcing_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second, real moto server that enforces IAM authentication from the first request, since
    the shared one accepts any credentials."""
    with auth_enforcing_moto(tmp_path_factory.mktemp("moto-auth")) as endpoint:
        yield endpoint


def _assert_no_canary(exc: BaseException) -> None:
    rendered = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    assert CANARY_SECRET not in rendered


# ---------------------------------------------------------------------- layout and metadata
def test_large_objects_use_multipart_and_keep_metadata(
    s3_endpoint: str, s3_bucket: str, raw_client: Any
) -> None:
    storage = S3(bucket=s3_bucket, endpoint_url=s3_endpoint)
    data = os.urandom(10 * 1024 * 1024)
    storage.put_bytes("big/object.bin", data)
    head = raw_client.head_object(Bucket=s3_bucket, Key="big/object.bin")
    assert "-" in head["ETag"]  # a multipart ETag: <md5 of part md5s>-<parts>
    assert head["Metadata"]["sha256"] == sha256_hex(data)
    assert head["ContentLength"] == len(data)


def test_a_put_is_verified_by_its_etag_only_when_s3_stored_exactly_the_bytes_sent(
        s3_endpoint: str, s3_bucket: str, raw_client: Any) -> None:
    """The ETag of a single-part PUT is the MD5 of what S3 stored: equal to ours, the upload needs
    no read-back. A body changed on the way (same length) leaves another ETag: not verified, so the
    publisher reads the object back; a multipart upload is never verified by its answer."""
    data = b"def flow():\n    return 42\n" * 8
    stored = S3(bucket=s3_bucket, endpoint_url=s3_endpoint).put_bytes("verified/flow.py", data)
    assert stored.verified
    assert raw_client.get_object(Bucket=s3_bucket, Key="verified/flow.py")["Body"].read() == data

    def flip_a_byte(method: str, path: str, body: bytes | None) -> bytes | None:
        return body[:-1] + b"!" if method == "PUT" and body else None

    with RecordingProxy(s3_endpoint, rewrite=flip_a_byte) as proxy:
        changed = S3(bucket=s3_bucket, endpoint_url=proxy.url).put_bytes("verified/changed.py", data)
    assert not changed.verified
    stored_md5 = raw_client.head_object(Bucket=s3_bucket, Key="verified/changed.py")["ETag"].strip('"')
    assert stored_md5 == hashlib.md5(data[:-1] + b"!", usedforsecurity=False).hexdigest()  # S3 holds other bytes
    big = S3(bucket=s3_bucket, endpoint_url=s3_endpoint).put_bytes("verified/big.bin", os.urandom(9 * 1024 * 1024))
    assert not big.verified


def test_script_mode_reads_local_script_path(s3_endpoint: str, s3_bucket: str, tmp_path: Path,
                                             raw_client: Any) -> None:
    script = tmp_path / "flow.py"
    script.write_bytes(SCRIPT_SOURCE)
    storage = S3(bucket=s3_bucket, endpoint_url=s3_endpoint, stored_as_script=True,
                 local_script_path=str(script))
    location = storage.add_flow(make_flow("script flow", None))
    storage.run_basic_healthchecks()
    storage.build()
    head = raw_client.head_object(Bucket=s3_bucket, Key=location)
    assert head["ContentType"] == "text/x-python"
    assert storage.get_flow(location, flow_name="script flow").run() == 42


def test_serialize_never_contains_credentials(s3_endpoint: str, s3_bucket: str) -> None:
    storage = S3.from_config(
        {"bucket": s3_bucket, "endpointURL": s3_endpoint, "region": "us-east-1", "keyPrefix": "p",
         "clientOptions": {"config": {"connect_timeout": 2}}},
        credentials={"AWS_ACCESS_KEY_ID": CANARY_KEY_ID, "AWS_SECRET_ACCESS_KEY": CANARY_SECRET},
    )
    doc = storage.to_status()
    assert {k: doc[k] for k in ("type", "bucket", "keyPrefix", "region", "endpointURL")} == {
        "type": "S3", "bucket": s3_bucket, "keyPrefix": "p", "region": "us-east-1",
        "endpointURL": s3_endpoint,
    }
    assert "key" not in doc
    rendered = json.dumps(doc) + repr(storage)
    assert CANARY_SECRET not in rendered and CANARY_KEY_ID not in rendered
    assert from_serialized(doc).to_status() == doc


def test_from_config_validation() -> None:
    with pytest.raises(InvalidConfig, match="bucket"):
        S3.from_config({})
    with pytest.raises(InvalidConfig, match="clientOptions"):
        S3.from_config({"bucket": "b", "clientOptions": ["nope"]})
    with pytest.raises(InvalidConfig, match="AWS_SECRET_ACCESS_KEY") as info:
        S3.from_config({"bucket": "b"}, credentials={"AWS_ACCESS_KEY_ID": CANARY_KEY_ID})
    assert CANARY_KEY_ID not in str(info.value)


# ---------------------------------------------------------------------- error translation
def test_missing_bucket_is_container_not_found(s3_endpoint: str) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:10]}"
    storage = S3(bucket=bucket, endpoint_url=s3_endpoint)
    calls = (storage.check_container, lambda: storage.put_bytes("k", b"x"), lambda: storage.get_bytes("k"),
             storage.run_basic_healthchecks)
    assert_container_not_found(bucket, calls)


def test_missing_object_is_not_found(s3_endpoint: str, s3_bucket: str) -> None:
    storage = S3(bucket=s3_bucket, endpoint_url=s3_endpoint)
    with pytest.raises(NotFound, match=f"s3://{s3_bucket}/nope"):
        storage.get_bytes("nope")
    storage.check_container()  # the bucket itself is fine


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    port = free_port()  # nothing listens here
    storage = S3.from_config({
        "bucket": "flows", "endpointURL": f"http://127.0.0.1:{port}", "region": "us-east-1",
        "clientOptions": {
            "config": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
        },
    })
    started = time.monotonic()
    for call in (storage.check_container, lambda: storage.get_bytes("k"), lambda: storage.stat("k"),
                 lambda: storage.put_bytes("k", b"x"), lambda: storage.delete("k")):
        with pytest.raises(Unavailable) as info:
            call()
        assert info.value.retryable is True
        assert f"127.0.0.1:{port}" in str(info.value)
    assert time.monotonic() - started < 10


def test_wrong_credentials_are_auth_failed_and_not_leaked(auth_enforcing_endpoint: str) -> None:
    storage = S3(bucket="flows", endpoint_url=auth_enforcing_endpoint, region="us-east-1",
                 credentials={"AWS_ACCESS_KEY_ID": CANARY_KEY_ID, "AWS_SECRET_ACCESS_KEY": CANARY_SECRET})
    calls = (storage.check_container, lambda: storage.put_bytes("k", b"x"), lambda: storage.get_bytes("k"))
    for call in calls:
        with pytest.raises(AuthFailed) as info:
            call()
        assert info.value.retryable is False
        assert "Secret" in str(info.value)
        _assert_no_canary(info.value)


def test_no_credentials_is_auth_failed(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = S3(bucket="flows", endpoint_url=s3_endpoint, region="us-east-1")
    with pytest.raises(AuthFailed, match="no usable AWS credentials"):
        storage.check_container()
