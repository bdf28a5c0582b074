"""Docker storages: every flow of a FlowStorage is a layer of its one image.

The first pass builds the flow's payload and submits it to the debounced image builder
(``Ports.images``; the operator's is ``controller/images.py``); later passes find the built
image and record it. Until then the StoredFlow is Reconciling ("building the image").
"""

from __future__ import annotations

import logging
from typing import Any

from flowstore.api import conditions as cond
from flowstore.api.constants import EventReason
from flowstore.api.models import storage_ref
from flowstore.artifacts.keys import slugify
from flowstore.reconcile.building import build
from flowstore.reconcile.context import FlowContext, ready
from flowstore.reconcile.ports import Event, Outcome, Pending, Ports, sha256_of
from flowstore.reconcile.publishers.base import CHANGED, MISSING, Publisher
from flowstore.reconcile.storages import open_storage
from flowstore.storage import NotFound, Storage, StorageError
from flowstore.storage.docker import Docker, ImageFlow

log = logging.getLogger(__name__)


class ImagePublisher(Publisher):
    family = "image"

    def verify(self, ctx: FlowContext, ports: Ports, location: str) -> tuple[str | None, Storage | None]:
        """The flow file is read from the recorded image in the registry (no daemon)."""
        storage = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        image = ctx.status.get("image") or {}
        artifact = ctx.recorded
        if not image.get("digest") or artifact is None:
            return MISSING, storage
        try:
            held = _docker(storage).read_flow(str(image["digest"]), location)
        except NotFound:
            return MISSING, storage
        return (None if sha256_of(held) == artifact.digest else CHANGED), storage

    def settle(self, ctx: FlowContext, ports: Ports) -> list[Event]:
        """The recorded image is signed by the storage's current key (a new key signs it too:
        nothing is built again)."""
        image = ctx.status.get("image") or {}
        if ctx.signer is None or ctx.signer.provider != "ed25519" or not image.get("digest") \
                or image.get("signatureKeyId") == ctx.signer.key_id:
            return []
        sign_image(ctx, _docker(open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)))
        return [Event("Normal", EventReason.SIGNED, f"Signed image {image.get('name')}@{image['digest']} with key "
                      f"{ctx.signer.key_id} ({ctx.status['image']['signatureTag']}; nothing built again)")]

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        ctx.progress(f"Storing flow {ctx.spec.flow_name!r}")
        storage = open_storage(ports, ctx.namespace, ctx.fs, ctx.storage_spec)
        docker = _docker(storage)
        batch_key = (ctx.namespace, ctx.spec.storage_name, ctx.fs["metadata"].get("uid"))
        job = ports.images.lookup(batch_key, ctx.spec.flow_name, ctx.inputs_digest)
        if job is None:
            data = build(ctx, ports)
            if isinstance(data, Pending):
                return ctx.pending(data)
            # the file's extension tells the image's healthcheck and agents the format (.py: script)
            ext = {"script": "py", "bundle": "tar.gz"}.get(ctx.fmt, "prefect")
            location = docker.location_for(ctx.spec.flow_name, key=ctx.spec.key) if ctx.spec.key \
                else f"{docker.flow_directory}/flows/{slugify(ctx.spec.flow_name)}.{ext}"
            flow = ImageFlow(name=ctx.spec.flow_name, location=location, data=data)
            namespace, storage_name = ctx.namespace, ctx.spec.storage_name

            def others(names: set[str]) -> list[Any]:
                return image_siblings(ports, docker, namespace, storage_name, exclude=names)

            job = ports.images.submit(batch_key, storage, flow, ctx.inputs_digest,
                                      waiter=("storedflows", ctx.namespace, ctx.name), others=others)
        if not job.done.is_set():
            status = dict(ctx.status)
            status["conditions"] = cond.mark_reconciling(
                ctx.status.get("conditions"), f"Building the image of FlowStorage {ctx.spec.storage_name!r} with "
                f"flow {ctx.spec.flow_name!r}", ctx.generation)
            return Outcome(status=status, requeue_after=2.0)
        if job.error is not None:
            job.reported = True
            raise job.error
        built, flow = job.result, job.payload
        digest = sha256_of(flow.data)
        artifact = ctx.artifact(
            url=f"{built.name}@{built.digest}", digest=digest, size=len(flow.data),
            source_digest=sha256_of(ctx.source) if ctx.source else digest,
            storage_state={"imageName": built.name, "imageTag": built.tag, "imageDigest": built.digest})
        previous = (ctx.status.get("image") or {}).get("digest")
        ctx.status.pop("driftDetected", None)
        ctx.status.pop("git", None)
        ctx.status["image"] = {"name": built.name, "tag": built.tag, "digest": built.digest, "path": flow.location}
        sign_image(ctx, docker)
        verb = "Moved" if previous and previous != built.digest else "Stored"
        events = [Event("Normal", EventReason.STORED, f"{verb} flow {ctx.spec.flow_name!r} in image "
                        f"{built.name}:{built.tag} ({built.digest[:19]}…) at {flow.location}")]
        outcome = ready(ctx, ports, flow.location, artifact, events, uploaded=True, opened=storage)
        outcome.built = ctx.fmt == "pickle"
        return outcome


def sign_image(ctx: FlowContext, docker: Docker) -> None:
    """With an ed25519 signing key, push the image's cosign signature (docs/signing.md) and record
    its tag and key in ``status.image``; otherwise record none."""
    image = ctx.status["image"]
    image.pop("signatureTag", None)
    image.pop("signatureKeyId", None)
    if ctx.signer is None or ctx.signer.provider != "ed25519":
        return
    storage = f"{ctx.namespace}/{ctx.spec.storage_name}"
    image["signatureTag"] = docker.sign_image(str(image["digest"]), ctx.signer, image_name=str(image["name"]),
                                              annotations={"flowstore.dev/flowstorage": storage})
    image["signatureKeyId"] = ctx.signer.key_id


def _docker(storage: Storage) -> Docker:
    """The Docker storage behind `storage` (the operator's ports hand out a counting proxy)."""
    return storage  # type: ignore[return-value]


def image_siblings(ports: Ports, storage: Docker, namespace: str, storage_name: str, *,
                   exclude: set[str]) -> list[ImageFlow]:
    """The other flows of a Docker storage, for its next image: each read back from the image
    its status records (so nothing is rebuilt) and checked against its recorded digest."""
    flows = []
    for other in ports.list_storedflows(namespace):
        spec, status = other.get("spec") or {}, other.get("status") or {}
        name = status.get("flowName") or spec.get("flowName")
        image = status.get("image") or {}
        if storage_ref(spec) != storage_name or other["metadata"].get("deletionTimestamp"):
            continue
        if name in exclude or not image.get("digest") or not status.get("location"):
            continue
        if image.get("name") != storage.image_repository:
            continue  # in another repository (the storage changed): it is being rebuilt anyway
        try:
            data = storage.read_flow(str(image["digest"]), str(status["location"]))
        except StorageError as exc:
            log.warning("flow %r left out of the next image: %s", name, exc.message)
            continue
        if sha256_of(data) != (status.get("artifact") or {}).get("digest"):
            log.warning("flow %r left out of the next image: digest mismatch", name)
            continue
        flows.append(ImageFlow(name=str(name), location=str(status["location"]), data=data))
    return flows
