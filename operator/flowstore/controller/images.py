"""One image per Docker FlowStorage, rebuilt once per burst of changes (debounced).

A Docker FlowStorage holds all of its StoredFlows in one image, as in the seed. StoredFlows are
reconciled one by one, so their changes arrive one by one: each reconcile *submits* its flow's
payload here and returns at once (Reconciling, "building image"). Submissions for the same
storage are collected until none has arrived for ``debounce`` seconds (at most ``max_wait``),
then one image is built with every flow of the storage — the submitted payloads plus, for the
flows that did not change, their payloads read back (digest-verified) from the image they are
in — and every submitter's next reconcile finds the result. ``on_done`` wakes them.

A flow that fails the image's healthcheck is left out and the image is built again without it:
one broken flow never keeps the others from being stored. Builds run one at a time (the
Engine API and the registry are shared).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from flowstore.reconcile.ports import ImageJob

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Batch:
    storage: Any  # flowstore.storage.docker.Docker
    others: Callable[[set[str]], list[Any]]  # names in the batch -> ImageFlows of the other flows
    flows: dict[str, Any] = dataclasses.field(default_factory=dict)  # flow name -> ImageFlow
    jobs: dict[str, ImageJob] = dataclasses.field(default_factory=dict)
    first: float = dataclasses.field(default_factory=time.monotonic)
    last: float = dataclasses.field(default_factory=time.monotonic)


class ImageBuilder:
    """The image builder the reconcile core uses (:class:`~flowstore.reconcile.ports.ImageBuilds`)."""

    def __init__(self, *, debounce: float = 1.0, max_wait: float = 10.0,
                 on_done: Callable[[list[Hashable]], None] | None = None) -> None:
        self.debounce = debounce
        self.max_wait = max_wait
        self.on_done = on_done
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._open: dict[Hashable, _Batch] = {}
        self._jobs: dict[tuple[Hashable, str], ImageJob] = {}

    def lookup(self, batch_key: Hashable, flow_name: str, inputs_digest: str) -> ImageJob | None:
        """The job for exactly these inputs, if one was submitted (pending or done)."""
        with self._lock:
            job = self._jobs.get((batch_key, flow_name))
        if job is None or job.inputs_digest != inputs_digest:
            return None
        if job.done.is_set() and job.error is not None and job.reported:
            return None  # reported once: a later pass retries
        return job

    def submit(self, batch_key: Hashable, storage: Any, flow: Any, inputs_digest: str, waiter: Hashable,
               others: Callable[[set[str]], list[Any]]) -> ImageJob:
        """Put `flow` (an ImageFlow) into the next image of the storage identified by `batch_key`."""
        with self._lock:
            job = ImageJob(flow.name, inputs_digest, waiter, payload=flow)
            self._jobs[(batch_key, flow.name)] = job
            batch = self._open.get(batch_key)
            if batch is None:
                batch = self._open[batch_key] = _Batch(storage, others)
                threading.Thread(target=self._run, args=(batch_key, batch), name="image-build", daemon=True).start()
            batch.storage, batch.others = storage, others  # the newest configuration wins
            batch.flows[flow.name] = flow
            batch.jobs[flow.name] = job
            batch.last = time.monotonic()
        return job

    # ------------------------------------------------------------------ the build thread
    def _run(self, batch_key: Hashable, batch: _Batch) -> None:
        while True:  # debounce: wait for a quiet period, bounded by max_wait
            with self._lock:
                now = time.monotonic()
                quiet = now - batch.last >= self.debounce
                if quiet or now - batch.first >= self.max_wait:
                    self._open.pop(batch_key, None)  # later submissions open the next batch
                    break
                wait = min(self.debounce - (now - batch.last), self.max_wait - (now - batch.first))
            time.sleep(max(0.05, wait))
        with self._build_lock:
            self._build(batch)
        if self.on_done is not None:
            try:
                self.on_done([job.waiter for job in batch.jobs.values()])
            except Exception:  # waking is best effort: the loops also poll
                log.exception("waking StoredFlows after an image build failed")

    def _build(self, batch: _Batch) -> None:
        from flowstore.storage.docker import HealthcheckFailed

        pending = dict(batch.flows)
        while pending:
            try:
                others = batch.others(set(pending))
                flows = sorted([*others, *pending.values()], key=lambda f: f.location)
                built = batch.storage.build_image(flows)
            except HealthcheckFailed as exc:
                named = set(getattr(exc, "flows", None) or ())  # the flows the healthcheck named
                culprits = [name for name in pending if name in named]
                if not culprits or len(culprits) == len(pending):
                    self._finish(batch, pending, error=exc)
                    return
                for name in culprits:  # fail these, build the others without them
                    self._finish(batch, {name: pending.pop(name)}, error=exc)
                continue
            except Exception as exc:  # the storage is broken for every flow of this batch
                self._finish(batch, pending, error=exc)
                return
            self._finish(batch, pending, result=built)
            return

    @staticmethod
    def _finish(batch: _Batch, flows: dict[str, Any], *, result: Any = None,
                error: BaseException | None = None) -> None:
        for name in flows:
            job = batch.jobs[name]
            job.result, job.error = result, error
            job.done.set()
