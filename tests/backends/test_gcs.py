"""GCS storage against a real GCS server (fake-gcs-server, LOCAL-CLOUD.md): the conformance
suite plus GCS's own rules: key prefix, blob metadata, resumable uploads verified by digest,
service-account keys, and error translation.

fake-gcs-server does not check authentication at all (any or no token is accepted), so
rejected credentials (401/403 -> AuthFailed) cannot be exercised against it; what is tested
here is everything up to the wire: malformed keys, a missing Secret key, and no credentials.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs_sdk

from flowstore.storage import (
    AuthFailed,
    IntegrityError,
    InvalidConfig,
    NotFound,
    Unavailable,
    from_serialized,
)
from flowstore.storage.base import sha256_hex
from flowstore.storage.gcs import GCS
from tests.helpers.net import free_port
from tests.helpers.tcp_proxy import TcpProxy

from .conformance import (
    SCRIPT_SOURCE,
    ObjectStoreConformance,
    StorageFactory,
    assert_container_not_found,
    factory_for,
    make_flow,
)

CANARY_PRIVATE_KEY = "canary-PrivateKey-5b2e8d41-do-not-leak"
CANARY_KEY_ID = "canarykeyid5b2e8d4100000000000000000000"


def _raw_client(endpoint: str) -> Any:
    return gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                          client_options={"api_endpoint": endpoint})


@pytest.fixture
def raw_client(gcs_endpoint: str) -> Any:
    return _raw_client(gcs_endpoint)


class TestGCS(ObjectStoreConformance):
    default_label_prefix = "gcs-flow-storage"

    @pytest.fixture
    def storage_factory(self, gcs_endpoint: str, gcs_bucket: str, raw_client: Any) -> StorageFactory:
        self.endpoint, self.bucket, self.client = gcs_endpoint, gcs_bucket, raw_client
        return factory_for(GCS, "bucket", gcs_bucket, endpoint_url=gcs_endpoint)

    def make_prefixed_storage(self, prefix: str) -> GCS:
        return GCS.from_config({"bucket": self.bucket, "keyPrefix": prefix, "endpointURL": self.endpoint})

    @pytest.fixture(autouse=True)
    def _slow_links(self) -> Iterator[None]:
        self.slow_links: list[TcpProxy] = []
        yield
        for proxy in self.slow_links:
            proxy.stop()

    def make_slow_storage(self) -> GCS:
        """The emulator through a link of 20 KB/s: each answer takes some 30 ms."""
        proxy = TcpProxy.for_url(self.endpoint)
        proxy.rate = 20_000
        self.slow_links.append(proxy.start())
        return GCS(bucket=self.bucket, endpoint_url=proxy.url)

    def raw_names(self) -> list[str]:
        return [blob.name for blob in self.client.list_blobs(self.bucket)]

    def raw_metadata(self, key: str) -> tuple[Any, Any]:
        blob = self.client.bucket(self.bucket).get_blob(key)
        return blob.metadata, blob.content_type

    def raw_url(self, key: str) -> str:
        return f"gs://{self.bucket}/{key}"



def _service_account_info(**overrides: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": "flowstore-test",
        "private_key_id": CANARY_KEY_ID,
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{CANARY_PRIVATE_KEY}\n-----END PRIVATE KEY-----\n",
        "client_email": "flows@flowstore-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(overrides)
    return {k: v for k, v in info.items() if v is not None}


def _assert_no_canary(exc: BaseException) -> None:
    rendered = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    assert CANARY_PRIVATE_KEY not in rendered
    assert CANARY_KEY_ID not in rendered


# ---------------------------------------------------------------------- a recording proxy
@dataclass
class RecordingProxy:
    """A real HTTP reverse proxy in front of fake-gcs-server that records each request (method,
    path+query, Content-Range) and can flip one byte of an upload body in transit. It rewrites
    the `Location` of resumable sessions so every chunk goes through it too."""

    upstream: str
    corrupt_uploads: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def uploads(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[1].startswith("/upload/")]


@pytest.fixture
def proxy(gcs_endpoint: str) -> Iterator[RecordingProxy]:
    state = RecordingProxy(upstream=gcs_endpoint)
    upstream = urllib.parse.urlsplit(gcs_endpoint)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append((self.command, self.path, self.headers.get("Content-Range")))
            if state.corrupt_uploads and self.path.startswith("/upload/") and len(body) > 1024:
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() in ("content-length", "transfer-encoding", "connection"):
                        continue
                    if name.lower() == "location":
                        value = value.replace(gcs_endpoint, state.url)
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------- layout and metadata
def test_large_artifact_uses_resumable_chunked_upload_and_is_verified(
    gcs_bucket: str, raw_client: Any, proxy: RecordingProxy
) -> None:
    storage = GCS(bucket=gcs_bucket, endpoint_url=proxy.url)
    data = os.urandom(30 * 1024 * 1024)
    artifact = storage.put_bytes("big/object.bin", data)
    assert (artifact.size, artifact.sha256) == (len(data), sha256_hex(data))
    assert artifact.verified  # the server's size and checksum matched: the publisher reads nothing back

    uploads = proxy.uploads()
    # one resumable session started, then the data in 8 MiB chunks (30 MiB -> 4 PUTs)
    starts = [path for method, path, _ in uploads if method == "POST"]
    assert len(starts) == 1 and "uploadType=resumable" in starts[0], uploads
    chunks = [r for r in uploads if r[0] == "PUT"]
    assert len(chunks) == 4, chunks
    assert all(r[2] and r[2].startswith("bytes ") for r in chunks)
    assert chunks[-1][2] == f"bytes {3 * 8 * 1024 * 1024}-{len(data) - 1}/{len(data)}"

    blob = raw_client.bucket(gcs_bucket).get_blob("big/object.bin")
    assert blob.size == len(data)
    assert blob.metadata == {"sha256": sha256_hex(data)}
    assert blob.md5_hash == base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324
    info = storage.stat("big/object.bin")
    assert info is not None and (info.size, info.sha256) == (len(data), sha256_hex(data))
    assert storage.get_bytes("big/object.bin") == data


@pytest.mark.parametrize("size", [64 * 1024, 9 * 1024 * 1024], ids=["multipart", "resumable"])
def test_upload_corrupted_in_transit_is_integrity_error(
    gcs_bucket: str, raw_client: Any, proxy: RecordingProxy, size: int
) -> None:
    """The proxy flips one byte of each upload request; the server stores what it received
    and reports its checksum, which must not be accepted."""
    storage = GCS(bucket=gcs_bucket, endpoint_url=proxy.url)
    proxy.corrupt_uploads = True
    with pytest.raises(IntegrityError) as info:
        storage.put_bytes("corrupt/object.bin", os.urandom(size))
    assert info.value.retryable is False
    assert f"gs://{gcs_bucket}/corrupt/object.bin" in str(info.value)
    proxy.corrupt_uploads = False
    assert storage.stat("corrupt/object.bin") is None  # nothing corrupt is left for readers


def test_script_mode_reads_local_script_path(gcs_endpoint: str, gcs_bucket: str, tmp_path: Path,
                                             raw_client: Any) -> None:
    script = tmp_path / "flow.py"
    script.write_bytes(SCRIPT_SOURCE)
    storage = GCS(bucket=gcs_bucket, endpoint_url=gcs_endpoint, stored_as_script=True,
                  local_script_path=str(script))
    location = storage.add_flow(make_flow("script flow", None))
    storage.run_basic_healthchecks()
    storage.build()
    assert raw_client.bucket(gcs_bucket).get_blob(location).content_type == "text/x-python"
    assert storage.get_flow(location, flow_name="script flow").run() == 42


# ---------------------------------------------------------------------- configuration
def test_serialize_round_trip_never_contains_credentials(gcs_endpoint: str, gcs_bucket: str) -> None:
    secret = {"sa.json": json.dumps(_service_account_info())}
    storage = GCS.from_config(
        {"bucket": gcs_bucket, "endpointURL": gcs_endpoint, "project": "p1", "keyPrefix": "pre",
         "credentialsKey": "sa.json", "labels": ["prod"]},
        credentials=secret,
    )
    storage.add_flow(make_flow("serialized", 1))
    doc = storage.to_status()
    assert {k: doc[k] for k in ("type", "bucket", "keyPrefix", "project", "endpointURL")} == {
        "type": "GCS", "bucket": gcs_bucket, "keyPrefix": "pre", "project": "p1", "endpointURL": gcs_endpoint,
    }
    assert "key" not in doc and "credentialsKey" not in doc
    rendered = json.dumps(doc) + repr(storage)
    assert CANARY_PRIVATE_KEY not in rendered and CANARY_KEY_ID not in rendered
    rebuilt = from_serialized(json.loads(json.dumps(doc)))
    assert type(rebuilt) is GCS
    assert rebuilt.to_status() == doc


def test_from_config_validation() -> None:
    with pytest.raises(InvalidConfig, match="bucket"):
        GCS.from_config({})


def test_credentials_key_missing_from_secret() -> None:
    secret = {"other.json": json.dumps(_service_account_info()), "README": "hello"}
    with pytest.raises(InvalidConfig) as info:
        GCS.from_config({"bucket": "b", "credentialsKey": "sa.json"}, credentials=secret)
    message = str(info.value)
    assert "'sa.json'" in message and "other.json" in message and "README" in message
    assert "hello" not in message
    _assert_no_canary(info.value)
    with pytest.raises(InvalidConfig, match=r"service-account\.json"):  # the default key
        GCS.from_config({"bucket": "b"}, credentials=secret)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(f"not json at all {CANARY_PRIVATE_KEY}", id="not-json"),
        pytest.param(json.dumps(_service_account_info())[:-5], id="truncated-json"),
        pytest.param(json.dumps([CANARY_PRIVATE_KEY]), id="not-an-object"),
        pytest.param(json.dumps(_service_account_info(private_key=None)), id="missing-private_key"),
        pytest.param(json.dumps(_service_account_info(client_email=None, token_uri=None)), id="missing-fields"),
        pytest.param(json.dumps(_service_account_info(type="authorized_user")), id="not-a-service-account"),
    ],
)
def test_malformed_service_account_key_is_invalid_config(raw: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        GCS.from_config({"bucket": "b"}, credentials={"service-account.json": raw})
    _assert_no_canary(info.value)
    assert "service-account.json" in str(info.value)


def test_missing_private_key_names_the_field() -> None:
    raw = json.dumps(_service_account_info(private_key=None))
    with pytest.raises(InvalidConfig, match="lacks private_key"):
        GCS.from_config({"bucket": "b"}, credentials={"service-account.json": raw})


def test_unloadable_private_key_is_invalid_config_without_key_material(gcs_endpoint: str) -> None:
    # well-formed JSON with every field, but the private_key is not a PEM key: found when the
    # client is made (the first call), still without quoting the key
    storage = GCS(bucket="b", endpoint_url=gcs_endpoint, credentials_info=_service_account_info())
    with pytest.raises(InvalidConfig, match="private_key") as info:
        storage.check_container()
    _assert_no_canary(info.value)


def test_no_credentials_is_auth_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no endpoint (real GCS) and no key: Application Default Credentials, which find nothing
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    storage = GCS(bucket="flows")
    with pytest.raises(AuthFailed, match="no Google credentials found") as info:
        storage.check_container()
    assert "credentialsSecretRef" in str(info.value)
    assert info.value.retryable is False


# ---------------------------------------------------------------------- error translation
def test_missing_bucket_is_container_not_found(gcs_endpoint: str) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:10]}"
    storage = GCS(bucket=bucket, endpoint_url=gcs_endpoint)
    calls = (storage.check_container, lambda: storage.put_bytes("k", b"x"), lambda: storage.get_bytes("k"),
             lambda: storage.stat("k"), lambda: storage.delete("k"),
             lambda: storage.put_bytes("big", os.urandom(9 * 1024 * 1024)), storage.run_basic_healthchecks)
    assert_container_not_found(bucket, calls)


def test_missing_object_is_not_found(gcs_endpoint: str, gcs_bucket: str) -> None:
    storage = GCS(bucket=gcs_bucket, endpoint_url=gcs_endpoint)
    with pytest.raises(NotFound, match=f"gs://{gcs_bucket}/nope"):
        storage.get_bytes("nope")
    assert storage.stat("nope") is None
    storage.delete("nope")
    storage.check_container()  # the bucket itself is fine


def test_unreachable_endpoint_is_unavailable_quickly() -> None:
    port = free_port()  # nothing listens here
    storage = GCS.from_config({"bucket": "flows", "endpointURL": f"http://127.0.0.1:{port}"})
    for call in (storage.check_container, lambda: storage.get_bytes("k"), lambda: storage.stat("k"),
                 lambda: storage.put_bytes("k", b"x"), lambda: storage.delete("k")):
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            call()
        assert time.monotonic() - started < 10
        assert info.value.retryable is True
        assert f"127.0.0.1:{port}" in str(info.value)
