"""Status names an uploaded object only once the backend is known to hold exactly its bytes: by
the service's answer to the upload (``StoredArtifact.verified``: S3's single-part ETag, GCS's
checksum) or else by reading the object's size and sha256 back. Offline: the reconcile core with a
real Local storage whose answers a test can change."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from flowstore.reconcile import reconcile_stored_flow
from flowstore.storage import Storage
from flowstore.storage.base import ObjectInfo
from tests.fakes.ports import FakeCluster
from tests.unit.test_crash_consistency import flow


class Answering(FakeCluster):
    """A Local FlowStorage "store" whose uploads answer `verified`, and whose stat answers
    `read_back(real answer)`; every stat is counted."""

    def __init__(self, directory: Path, *, verified: bool, read_back: Any = None) -> None:
        super().__init__()
        self.verified, self.read_back, self.stats = verified, read_back, 0
        self.storages["store"] = {"metadata": {"name": "store", "namespace": "ns", "uid": "u1", "generation": 1},
                                  "spec": {"local": {"directory": str(directory)}, "interval": "10m"}}

    def storage_for(self, spec: Any, credentials: Any, cache_key: str, identity: Any = None, *,
                    namespace: str = "") -> Storage:
        storage = super().storage_for(spec, credentials, cache_key, identity, namespace=namespace)
        put, stat = storage.put_bytes, storage.stat

        def answering_put(location: str, data: bytes, **kwargs: Any) -> Any:
            return dataclasses.replace(put(location, data, **kwargs), verified=self.verified)

        def counted_stat(location: str) -> ObjectInfo | None:
            self.stats += 1
            info = stat(location)
            return self.read_back(info) if self.read_back else info

        storage.put_bytes = answering_put  # type: ignore[method-assign]
        storage.stat = counted_stat  # type: ignore[method-assign]
        return storage


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


@pytest.mark.parametrize("verified", [True, False], ids=["verified-by-the-answer", "read-back"])
def test_a_stored_flow_is_ready_with_one_read_back_only_when_the_upload_answer_proved_nothing(
        tmp_path: Path, verified: bool) -> None:
    cluster = Answering(tmp_path, verified=verified)
    status = reconcile_stored_flow(flow(), cluster).status
    assert ready(status)["status"] == "True", status
    assert cluster.stats == (0 if verified else 1)
    assert status["location"] and status["artifact"]["digest"]


@pytest.mark.parametrize("read_back", [lambda info: None,
                                       lambda info: dataclasses.replace(info, size=info.size - 1),
                                       lambda info: dataclasses.replace(info, sha256="0" * 64)],
                         ids=["missing", "short", "other-bytes"])
def test_an_unverified_upload_that_does_not_read_back_as_written_is_not_recorded(
        tmp_path: Path, read_back: Any) -> None:
    cluster = Answering(tmp_path, verified=False, read_back=read_back)
    status = reconcile_stored_flow(flow(), cluster).status
    condition = ready(status)
    assert condition["status"] == "False", status
    assert "did not read back as written; will store again" in condition["message"]
    assert "location" not in status and "artifact" not in status
