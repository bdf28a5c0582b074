"""The one conformance suite every Storage backend passes (fsspec's ``tests/abstract`` idea).

A backend's test module subclasses :class:`StorageConformance` and provides a
``storage_factory`` fixture: a callable taking the backend's keyword arguments (plus the base
Storage options) and returning a storage bound to a fresh, empty container on a *real* server.
Everything here goes through the public interface only.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import flowstore.storage
from flowstore.artifacts import envelope
from flowstore.flow import Flow
from flowstore.storage import ContainerNotFound, IntegrityError, NotFound, Storage, from_serialized
from flowstore.storage._objectstore import POOL_CONNECTIONS
from flowstore.storage.base import SEED_VERSION_KEY, sha256_hex

#: the seed's default key: ``<slug(flow name)>/<slug(UTC timestamp, microseconds)>``
DEFAULT_KEY_TAIL = r"(^|/){slug}/\d{{4}}-\d{{2}}-\d{{2}}t\d{{2}}-\d{{2}}-\d{{2}}-\d{{6}}-00-00$"

SCRIPT_SOURCE = b'''\
from flowstore.flow import Flow


def answer():
    return 21 * 2


flow = Flow("script flow", answer)
'''

StorageFactory = Callable[..., Storage]


def factory_for(storage_class: Callable[..., Storage], container_key: str, container: str,
                **fixed: Any) -> StorageFactory:
    """A storage factory of an object store: `storage_class` with the `fixed` keywords, in
    `container` (under `container_key`: ``bucket``, ``container``) unless a test names another."""

    def make(**kwargs: Any) -> Storage:
        kwargs.setdefault(container_key, container)
        return storage_class(**fixed, **kwargs)

    return make


def assert_container_not_found(container: str, calls: Iterable[Callable[[], object]]) -> None:
    """Each call, on a storage whose bucket or container does not exist, raises ContainerNotFound
    naming it, and not as retryable (someone must create it)."""
    for call in calls:
        with pytest.raises(ContainerNotFound) as info:
            call()
        assert container in str(info.value)
        assert info.value.retryable is False


def make_flow(name: str, result: Any) -> Flow:
    """A flow whose run() returns `result`. The lambda is local, so cloudpickle stores it by
    value and a child process (get_env_runner) can load it without importing this module."""
    return Flow(name, lambda: result)


class StorageConformance:
    """Shared behaviour of every backend. Subclasses set :attr:`default_label_prefix` and
    provide the ``storage_factory`` fixture."""

    #: every label the backend adds by default starts with this
    default_label_prefix: str = ""

    @pytest.fixture
    def storage_factory(self) -> StorageFactory:  # pragma: no cover - overridden
        raise NotImplementedError("backend test classes provide a storage_factory fixture")

    @pytest.fixture(autouse=True)
    def _bind_factory(self, storage_factory: StorageFactory) -> None:
        self._factory = storage_factory

    def make_storage(self, **kwargs: Any) -> Storage:
        """A storage on the backend's fresh container, with `kwargs` passed through."""
        return self._factory(**kwargs)

    def raw_location(self, storage: Storage, key: str) -> str:
        return storage.location_for("conformance", key=key)

    # ------------------------------------------------------------------ primitives
    def test_put_get_stat_delete_round_trip(self) -> None:
        storage = self.make_storage()
        location = self.raw_location(storage, "conformance/objects/one.bin")
        data = b"hello flows\x00\xff"

        artifact = storage.put_bytes(location, data)
        assert artifact.location == location
        assert artifact.sha256 == sha256_hex(data)
        assert artifact.size == len(data)
        assert artifact.url == storage.url_for(location)
        assert storage.get_bytes(location) == data
        info = storage.stat(location)
        assert info is not None
        assert info.size == len(data)
        assert info.sha256 == sha256_hex(data)  # the digest recorded at upload

        storage.put_bytes(location, b"replaced")  # overwrites
        assert storage.get_bytes(location) == b"replaced"
        info = storage.stat(location)
        assert info is not None and info.sha256 == sha256_hex(b"replaced") and info.size == 8

        storage.delete(location)
        assert storage.stat(location) is None
        with pytest.raises(NotFound):
            storage.get_bytes(location)

    def test_delete_is_idempotent(self) -> None:
        storage = self.make_storage()
        location = self.raw_location(storage, "conformance/objects/twice.bin")
        storage.put_bytes(location, b"x")
        storage.delete(location)
        storage.delete(location)
        storage.delete(self.raw_location(storage, "conformance/never/existed.bin"))

    def test_get_missing_raises_not_found(self) -> None:
        storage = self.make_storage()
        location = self.raw_location(storage, "conformance/missing.bin")
        with pytest.raises(NotFound) as info:
            storage.get_bytes(location)
        assert info.value.retryable is False
        assert info.value.reason == "ArtifactMissing"
        assert "missing.bin" in str(info.value)

    def test_stat_missing_is_none(self) -> None:
        storage = self.make_storage()
        assert storage.stat(self.raw_location(storage, "conformance/missing.bin")) is None

    def test_large_object_round_trip(self) -> None:
        storage = self.make_storage()
        location = self.raw_location(storage, "conformance/large.bin")
        data = os.urandom(10 * 1024 * 1024)
        artifact = storage.put_bytes(location, data)
        assert artifact.size == len(data)
        info = storage.stat(location)
        assert info is not None
        assert (info.size, info.sha256) == (len(data), sha256_hex(data))
        assert storage.get_bytes(location) == data

    def test_a_bounded_read_stops_at_the_recorded_size(self) -> None:
        """What agents read (get_bytes_bounded): the object when it is at most the bound, an
        IntegrityError when it holds more (the status recorded another size), NotFound as ever."""
        storage = self.make_storage()
        location = self.raw_location(storage, "conformance/bounded.bin")
        data = os.urandom(3 * 1024 * 1024 + 17)
        storage.put_bytes(location, data)
        assert storage.get_bytes_bounded(location, len(data)) == data
        assert storage.get_bytes_bounded(location, len(data) + 1000) == data
        with pytest.raises(IntegrityError, match=f"more than the {len(data) - 1} bytes recorded"):
            storage.get_bytes_bounded(location, len(data) - 1)
        with pytest.raises(IntegrityError):
            storage.get_bytes_bounded(location, 10)
        empty = self.raw_location(storage, "conformance/empty.bin")
        storage.put_bytes(empty, b"")
        assert storage.get_bytes_bounded(empty, 0) == b""
        with pytest.raises(NotFound):
            storage.get_bytes_bounded(self.raw_location(storage, "conformance/missing.bin"), 10)

    # ------------------------------------------------------------------ seed semantics
    #: the location add_flow returns: the seed's default key (most backends), or the flow name
    #: (the seed's Webhook, which holds one flow)
    location_is_flow_name = False

    def test_add_flow_returns_its_location_and_uploads_only_at_build(self) -> None:
        storage = self.make_storage()
        flow = make_flow("ETL Daily", 1)
        location = storage.add_flow(flow)
        if self.location_is_flow_name:
            assert location == "ETL Daily"
        else:
            assert re.search(DEFAULT_KEY_TAIL.format(slug="etl-daily"), location), location
        assert storage.flows == {"ETL Daily": location}
        assert storage.stat(location) is None  # nothing is stored before build()
        assert storage.build() is storage
        info = storage.stat(location)
        assert info is not None and info.size > 0

    def test_duplicate_flow_name_is_rejected(self) -> None:
        storage = self.make_storage()
        storage.add_flow(make_flow("dup", 1))
        with pytest.raises(ValueError, match="dup"):
            storage.add_flow(make_flow("dup", 2))

    def test_contains_by_name_and_by_flow(self) -> None:
        storage = self.make_storage()
        flow = make_flow("present", 1)
        storage.add_flow(flow)
        assert "present" in storage
        assert flow in storage
        assert make_flow("present", 2) in storage  # by name, like the seed
        assert "absent" not in storage
        assert make_flow("absent", 1) not in storage
        assert 42 not in storage

    def test_build_then_get_flow(self) -> None:
        storage = self.make_storage()
        location = storage.add_flow(make_flow("round trip", {"answer": 42}))
        storage.add_flow(make_flow("other", 7))
        storage.build()
        loaded = storage.get_flow(location)
        assert loaded.name == "round trip"
        assert loaded.run() == {"answer": 42}
        info = storage.stat(location)
        assert info is not None
        assert storage.get_flow(location, sha256=info.sha256).run() == {"answer": 42}
        assert storage.get_flow(location, sha256=f"sha256:{info.sha256}").name == "round trip"

    def test_get_flow_not_in_storage_is_value_error(self) -> None:
        storage = self.make_storage()
        storage.add_flow(make_flow("only", 1))
        storage.build()
        with pytest.raises(ValueError):
            storage.get_flow(self.raw_location(storage, "conformance/elsewhere.bin"))

    def test_stored_bytes_are_the_envelope(self) -> None:
        storage = self.make_storage()
        location = storage.add_flow(make_flow("enveloped", 3))
        storage.build()
        doc = json.loads(storage.get_bytes(location))
        assert set(doc) == {"flow", "versions"}
        assert envelope.loads(storage.get_bytes(location)).run() == 3

    def test_stored_as_script(self) -> None:
        storage = self.make_storage(stored_as_script=True)
        flow = make_flow("script flow", None)
        with pytest.raises(ValueError):
            storage.add_flow(flow)  # script mode needs the source
        location = storage.add_flow(flow, source=SCRIPT_SOURCE)
        storage.build()
        assert storage.get_bytes(location) == SCRIPT_SOURCE
        loaded = storage.get_flow(location, flow_name="script flow")
        assert loaded.name == "script flow"
        assert loaded.run() == 42
        assert storage.get_flow(location, object_name="flow").run() == 42

    def test_integrity_wrong_digest_and_truncated_object(self) -> None:
        storage = self.make_storage()
        location = storage.add_flow(make_flow("guarded", 1))
        storage.build()
        good = storage.get_bytes(location)
        with pytest.raises(IntegrityError, match="does not match"):
            storage.get_flow(location, sha256="0" * 64)
        storage.put_bytes(location, good[: len(good) // 2])  # a truncated artifact
        with pytest.raises(IntegrityError) as info:
            storage.get_flow(location, sha256=sha256_hex(good))
        assert info.value.retryable is False

    def test_status_document_round_trip(self) -> None:
        storage = self.make_storage(labels=["prod"], secrets=["TOKEN_NAME"])
        location = storage.add_flow(make_flow("serialized", "ok"))
        storage.build()
        doc = storage.to_status()
        assert doc["type"] == storage.type_name
        assert doc["flows"] == {"serialized": location}
        assert doc["storedAsScript"] is False
        assert doc["labels"] == storage.labels
        assert doc["secrets"] == ["TOKEN_NAME"]
        assert SEED_VERSION_KEY not in doc  # the Kubernetes document is camelCase, not the seed's
        doc = json.loads(json.dumps(doc))  # what a status field holds
        rebuilt = from_serialized(doc)
        assert type(rebuilt) is type(storage)
        assert rebuilt.flows == storage.flows
        assert rebuilt.labels == storage.labels
        assert rebuilt.to_status() == storage.to_status()
        assert rebuilt.get_flow(location).run() == "ok"
        assert rebuilt.get_flow().run() == "ok"  # the only flow is the default

    def test_serialize_is_the_seed_schema_and_round_trips(self) -> None:
        """serialize() is the seed's document (snake_case, ``__version__``; Prefect 1.4.1 loads it:
        tests/backends/test_prefect1.py), and an agent loads the flows from it too."""
        storage = self.make_storage(stored_as_script=True, secrets=["TOKEN_NAME"])
        location = storage.add_flow("script flow", source=SCRIPT_SOURCE)
        storage.build()
        doc = storage.serialize()
        assert doc["type"] == storage.type_name and doc[SEED_VERSION_KEY] == "1.4.1"
        assert doc["flows"] == {"script flow": location}
        assert doc["secrets"] == ["TOKEN_NAME"]
        assert doc["stored_as_script"] is True
        assert all(re.fullmatch(r"[a-z_]+|__version__", key) for key in doc), sorted(doc)
        doc = json.loads(json.dumps(doc))
        rebuilt = from_serialized(doc)
        assert type(rebuilt) is type(storage)
        assert rebuilt.flows == storage.flows and rebuilt.stored_as_script
        assert rebuilt.serialize() == doc
        assert rebuilt.get_flow(location).run() == 42

    def test_registry_resolves_backend(self) -> None:
        storage = self.make_storage()
        assert getattr(flowstore.storage, storage.type_name) is type(storage)

    def test_labels(self) -> None:
        storage = self.make_storage(labels=["prod"])
        defaults = [label for label in storage.labels if label != "prod"]
        assert "prod" in storage.labels
        assert len(defaults) == 1 and defaults[0].startswith(self.default_label_prefix)
        assert self.make_storage(labels=["prod"], add_default_labels=False).labels == ["prod"]

    def test_run_basic_healthchecks(self) -> None:
        storage = self.make_storage()
        storage.add_flow(make_flow("healthy", 1))
        storage.run_basic_healthchecks()

        scripted = self.make_storage(stored_as_script=True)
        scripted.add_flow("broken", source=b"def broken(:\n")
        with pytest.raises(SyntaxError):
            scripted.run_basic_healthchecks()

    def test_env_runner(self, tmp_path: Path) -> None:
        storage = self.make_storage()
        marker = tmp_path / "ran.txt"
        ok = storage.add_flow(Flow("writes marker", lambda: marker.write_text(os.environ["FLOW_GREETING"])))
        failing = storage.add_flow(Flow("fails", lambda: 1 / 0))
        storage.build()

        assert storage.get_env_runner(ok).run({"FLOW_GREETING": "hello"}) == 0
        assert marker.read_text() == "hello"
        assert storage.get_env_runner(failing).run() == 1


class ObjectStoreConformance(StorageConformance):
    """What the object stores (S3, GCS, Azure) share beyond :class:`StorageConformance`: keys
    under ``key_prefix``, one fixed key for every flow, and the digest recorded as the object's
    metadata. Subclasses also provide the hooks below, which read the container with the
    backend's own client (bound in their ``storage_factory`` fixture)."""

    #: the keyword naming one fixed key for every flow (the seed's ``key``; Azure's ``blob_name``)
    fixed_key_kwarg: str = "key"

    def make_prefixed_storage(self, prefix: str) -> Storage:
        """A storage of the fresh container whose keys start with `prefix`."""
        raise NotImplementedError

    def make_slow_storage(self) -> Storage:
        """A storage of the fresh container whose server answers slowly enough for the workers'
        calls to overlap (a server that answers each call before the next starts never fills a
        pool of 10: GCS's emulator does)."""
        return self.make_storage()

    def raw_names(self) -> list[str]:
        """The names in the container, as the backend's own client lists them."""
        raise NotImplementedError

    def raw_metadata(self, key: str) -> tuple[Any, Any]:
        """The object's user metadata and content type, as the backend's own client reads them."""
        raise NotImplementedError

    def raw_url(self, key: str) -> str:
        """The object's URL as the backend's own tools name it."""
        raise NotImplementedError

    def test_the_workers_uploading_at_once_keep_their_connections(self, caplog: pytest.LogCaptureFixture) -> None:
        """The operator's workers (64 by default) upload through one FlowStorage's client at once:
        its pool keeps a connection for each, so none is dropped after its call (urllib3 warns
        "Connection pool is full") for the next call to open again."""
        storage = self.make_slow_storage()
        locations = [self.raw_location(storage, f"conformance/pool/{i}.bin") for i in range(POOL_CONNECTIONS)]
        start = threading.Barrier(len(locations))

        def upload(location: str) -> None:
            start.wait(30)
            storage.put_bytes(location, location.encode())

        with caplog.at_level(logging.WARNING, logger="urllib3"), \
                concurrent.futures.ThreadPoolExecutor(len(locations)) as pool:
            list(pool.map(upload, locations))
        dropped = [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
        assert not dropped, f"{len(dropped)} connections dropped, e.g. {dropped[0]}"
        assert all(storage.get_bytes(location) == location.encode() for location in locations)

    def test_key_prefix_is_applied(self) -> None:
        storage = self.make_prefixed_storage("team/a/")
        location = storage.add_flow(make_flow("ETL Daily", 1))
        assert location.startswith("team/a/etl-daily/")
        storage.build()
        assert self.raw_names() == [location]
        assert storage.url_for(location) == self.raw_url(location)

    def test_fixed_key(self) -> None:
        storage = self.make_storage(**{self.fixed_key_kwarg: "flows/fixed.flow"}, key_prefix="ignored")
        assert storage.add_flow(make_flow("one", 1)) == "flows/fixed.flow"
        storage.build()
        assert storage.get_flow("flows/fixed.flow").run() == 1

    def test_object_metadata_records_digest(self) -> None:
        storage = self.make_storage()
        artifact = storage.put_bytes("meta/object.bin", b"payload")
        metadata, content_type = self.raw_metadata("meta/object.bin")
        assert metadata == {"sha256": sha256_hex(b"payload")}
        assert content_type == "application/octet-stream"
        assert artifact.url == self.raw_url("meta/object.bin") == storage.url_for("meta/object.bin")
