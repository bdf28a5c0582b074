"""The debounced one-image-per-storage builder (controller/images.py), on its own: a burst of
submissions builds once; a flow that fails the healthcheck is left out and the rest are
built; a broken storage fails every flow of the batch; the waiters are woken.

The storage here is a recording stand-in for the Docker storage's ``build_image`` (the real
one runs in tests/backends/test_docker.py and tests/e2e/test_docker.py): this checks the
batching logic, which does not depend on how an image is built."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from flowstore.controller.images import ImageBuilder
from flowstore.reconcile.ports import ImageJob
from flowstore.storage.docker import HealthcheckFailed, ImageFlow
from flowstore.storage.errors import AuthFailed


@dataclasses.dataclass
class Built:
    name: str
    tag: str
    digest: str
    pushed: bool = True


class RecordingStorage:
    def __init__(self, fail: dict[str, str] | None = None, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.error = error

    def build_image(self, flows: list[ImageFlow], tag: str | None = None) -> Built:
        names = [f.name for f in flows]
        self.calls.append(names)
        if self.error is not None:
            raise self.error
        bad = [n for n in self.fail if n in names]
        if bad:
            raise HealthcheckFailed("healthcheck failed:\n" + "\n".join(f"flow {n!r}: {self.fail[n]}" for n in bad),
                                    flows=bad)
        return Built("registry/flows", f"t{len(self.calls)}", f"sha256:{len(self.calls):064d}")


def submit(builder: ImageBuilder, storage: RecordingStorage, name: str,
           others: list[ImageFlow] | None = None) -> ImageJob:
    flow = ImageFlow(name=name, location=f"/opt/prefect/flows/{name}.prefect", data=name.encode())
    return builder.submit("ns/images", storage, flow, f"digest-{name}", waiter=name,
                          others=lambda names: [o for o in (others or []) if o.name not in names])


def test_a_burst_builds_once_and_wakes_every_waiter() -> None:
    woken: list[Any] = []
    builder = ImageBuilder(debounce=0.3, on_done=woken.extend)
    storage = RecordingStorage()
    old = ImageFlow(name="old", location="/opt/prefect/flows/old.prefect", data=b"old")
    jobs = []
    for name in ["a", "b", "c"]:
        jobs.append(submit(builder, storage, name, others=[old]))
        time.sleep(0.1)  # arrive one by one, within the debounce window
    for job in jobs:
        assert job.done.wait(10)
    assert storage.calls == [["a", "b", "c", "old"]]  # one build, with the unchanged flow read back
    assert {job.result.digest for job in jobs} == {"sha256:" + "1".zfill(64)}
    assert sorted(woken) == ["a", "b", "c"]
    assert builder.lookup("ns/images", "a", "digest-a") is jobs[0]
    assert builder.lookup("ns/images", "a", "digest-other") is None


def test_a_failing_flow_is_left_out_and_the_others_are_built() -> None:
    builder = ImageBuilder(debounce=0.1)
    storage = RecordingStorage(fail={"bad": "No module named 'yaml'"})
    good, bad = submit(builder, storage, "good"), submit(builder, storage, "bad")
    assert good.done.wait(10) and bad.done.wait(10)
    assert isinstance(bad.error, HealthcheckFailed) and "yaml" in bad.error.message
    assert good.error is None and good.result.digest.startswith("sha256:")
    assert storage.calls == [["bad", "good"], ["good"]]
    # The error is handed out once; the next lookup lets the flow be submitted again.
    assert builder.lookup("ns/images", "bad", "digest-bad") is bad
    bad.reported = True
    assert builder.lookup("ns/images", "bad", "digest-bad") is None


def test_a_broken_storage_fails_the_whole_batch() -> None:
    builder = ImageBuilder(debounce=0.1)
    storage = RecordingStorage(error=AuthFailed("registry refused the credentials"))
    jobs = [submit(builder, storage, n) for n in ("a", "b")]
    for job in jobs:
        assert job.done.wait(10)
        assert isinstance(job.error, AuthFailed)
    assert len(storage.calls) == 1


def test_builds_of_different_storages_never_overlap() -> None:
    builder = ImageBuilder(debounce=0.05)
    active, peak = [0], [0]
    lock = threading.Lock()

    class Slow(RecordingStorage):
        def build_image(self, flows: list[ImageFlow], tag: str | None = None) -> Built:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.2)
            with lock:
                active[0] -= 1
            return super().build_image(flows, tag)

    jobs = []
    for i in range(3):
        flow = ImageFlow(name="f", location="/f", data=b"x")
        jobs.append(builder.submit(f"ns/storage-{i}", Slow(), flow, "d", waiter=i, others=lambda names: []))
    for job in jobs:
        assert job.done.wait(10) and job.error is None
    assert peak[0] == 1
