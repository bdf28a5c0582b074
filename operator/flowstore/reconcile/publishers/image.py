"""Docker storages: every flow of a FlowStorage is a layer of its one image.

The first pass builds the flow's payload and submits it to the debounced image builder
(``Ports.images``; the operator's is ``controller/images.py``); later passes find the built
image and record it. Until then the StoredFlow is Reconciling ("building the image").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from flowstore.api import conditions as cond
from flowstore.api.constants import EventReason
from flowstore.api.history import History, Retired, Revision
from flowstore.api.models import storage_ref
from flowstore.api.status import Artifact, GitPin, ImageRef, recorded_flow_name, recorded_location
from flowstore.artifacts.keys import slugify
from flowstore.artifacts.signing import Signer
from flowstore.reconcile import revisions
from flowstore.reconcile.building import build
from flowstore.reconcile.context import FlowContext, ready
from flowstore.reconcile.ports import Event, Outcome, Pending, Ports, sha256_of
from flowstore.reconcile.publishers.base import CHANGED, MISSING, Publisher, RetireScope, forged
from flowstore.reconcile.revisions import Stored
from flowstore.storage import NotFound, StorageError
from flowstore.storage.docker import Docker, ImageFlow

log = logging.getLogger(__name__)


class ImagePublisher(Publisher[Docker]):
    family = "image"
    storage_type = Docker

    def verify(self, ctx: FlowContext, entry: Revision) -> str | None:
        """The flow file is read from the revision's image in the registry (no daemon)."""
        digest = entry.image_digest or str((entry.artifact.storage_state or {}).get("imageDigest") or "")
        if not digest:
            return MISSING
        try:
            held = self.storage(ctx).read_flow(digest, entry.location)
        except NotFound:
            return MISSING
        return None if sha256_of(held) == entry.digest else CHANGED

    def delete_revision(self, storage: Docker, record: Retired, scope: RetireScope) -> str | None:
        """Delete the image manifest of a revision — unless a StoredFlow of the same storage
        still names that image (every flow of a storage is in its images: an image stays while
        any of them has it as current, in its history or waiting in status.retired). The
        registry must allow deletes (distribution: storage.delete.enabled); its blobs go at the
        registry's garbage collection."""
        state = record.storage_state or {}
        digest = str(state.get("imageDigest") or "")
        if not digest:
            return None
        if (unsealed := forged(record, scope)) is not None:
            return unsealed  # a forged imageName could name another repository of the registry
        for other in scope.ports.list_storedflows(scope.namespace):
            meta = other.get("metadata") or {}
            if meta.get("name") == scope.name or storage_ref(other.get("spec")) != scope.storage_name:
                continue
            if digest in images_named(other.get("status")):
                return None  # still someone's: the last one to let it go deletes it
        try:
            storage.restore_state(state)
            storage.delete_image(digest)
        finally:
            storage.restore_state(scope.current_state)
        return None

    def settle(self, ctx: FlowContext) -> list[Event]:
        """The current image signed by the current key (:func:`settle_signature`)."""
        return settle_signature(ctx, self.storage(ctx))

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        ctx.progress(f"Storing flow {ctx.spec.flow_name!r}")
        docker = self.storage(ctx)
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

            job = ports.images.submit(batch_key, docker, flow, ctx.inputs_digest,
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
            location=flow.location, url=f"{built.name}@{built.digest}", digest=digest, size=len(flow.data),
            source_digest=sha256_of(ctx.source) if ctx.source else digest,
            storage_state={"imageName": built.name, "imageTag": built.tag, "imageDigest": built.digest})
        previous = ImageRef.read(ctx.status)
        ctx.status.pop("driftDetected", None)
        GitPin.clear(ctx.status)
        # the new image's cosign signature, recorded before ready() (which keeps it with the image)
        image = sign_image(ctx, docker, ImageRef(name=built.name, tag=built.tag, digest=built.digest,
                                                 path=flow.location))
        image.write(ctx.status)
        verb = "Moved" if previous and previous.digest != built.digest else "Stored"
        events = [Event("Normal", EventReason.STORED, f"{verb} flow {ctx.spec.flow_name!r} in image "
                        f"{built.name}:{built.tag} ({built.digest[:19]}…) at {flow.location}")]
        stored = Stored(flow.location, artifact, image_name=built.name, image_digest=built.digest)
        outcome = ready(ctx, stored, events, uploaded=True)
        outcome.built = ctx.fmt == "pickle"
        return outcome


class ImageSigner(Protocol):
    """A storage that signs its images as cosign does: Docker, and OCI (one image per revision)."""

    def sign_image(self, image_digest: str, signer: Signer, *, image_name: str | None = None,
                   annotations: Mapping[str, str] | None = None) -> str: ...


def sign_image(ctx: FlowContext, storage: ImageSigner, image: ImageRef) -> ImageRef:
    """With an ed25519 signing key, push the image's cosign signature (docs/signing.md): `image`
    with its signature's tag and key; otherwise `image` with none."""
    if ctx.signer is None or ctx.signer.provider != "ed25519":
        return dataclasses.replace(image, signature_tag=None, signature_key_id=None)
    flowstorage = f"{ctx.namespace}/{ctx.spec.storage_name}"
    tag = storage.sign_image(image.digest, ctx.signer, image_name=image.name,
                             annotations={"flowstore.dev/flowstorage": flowstorage})
    return dataclasses.replace(image, signature_tag=tag, signature_key_id=ctx.signer.key_id)


def settle_signature(ctx: FlowContext, storage: ImageSigner) -> list[Event]:
    """The image of the revision this pass makes (or keeps) current is signed by the storage's
    current key: a new key signs it too, and so does a revert or a pin to an older image (its
    signature recorded before ``ready``, which keeps it with that image). Nothing is built or
    pushed again but the signature."""
    recorded = ImageRef.read(ctx.status)
    pin = ctx.spec.pin
    target = revisions.pinned(ctx.history, pin) if pin is not None else ctx.history.with_inputs(ctx.inputs_digest)
    image = recorded
    if target is not None and target.image_digest and (recorded is None or recorded.digest != target.image_digest):
        state = target.artifact.storage_state or {}
        image = ImageRef(name=target.image_name or str(state.get("imageName") or ""),
                         tag=str(state.get("imageTag") or ""), digest=target.image_digest, path=target.location)
    if ctx.signer is None or ctx.signer.provider != "ed25519" or image is None \
            or image.signature_key_id == ctx.signer.key_id:
        return []
    signed = sign_image(ctx, storage, image)
    if image is recorded:
        signed.write(ctx.status)
    else:  # not current yet: status names it only once ready() makes it current
        ctx.image_signature = signed
    return [Event("Normal", EventReason.SIGNED, f"Signed image {image.name}@{image.digest} with key "
                  f"{ctx.signer.key_id} ({signed.signature_tag}; nothing built again)")]


def image_siblings(ports: Ports, storage: Docker, namespace: str, storage_name: str, *,
                   exclude: set[str]) -> list[ImageFlow]:
    """The other flows of a Docker storage, for its next image: each read back from the image
    its status records (so nothing is rebuilt) and checked against its recorded digest."""
    flows = []
    for other in ports.list_storedflows(namespace):
        spec, status = other.get("spec") or {}, other.get("status")
        name = recorded_flow_name(status) or spec.get("flowName")
        image, location, artifact = ImageRef.read(status), recorded_location(status), Artifact.read(status)
        if storage_ref(spec) != storage_name or other["metadata"].get("deletionTimestamp"):
            continue
        if not isinstance(name, str) or name in exclude or image is None or location is None or artifact is None:
            continue
        if image.name != storage.image_repository:
            continue  # in another repository (the storage changed): it is being rebuilt anyway
        try:
            data = storage.read_flow(image.digest, location)
        except StorageError as exc:
            log.warning("flow %r left out of the next image: %s", name, exc.message)
            continue
        if sha256_of(data) != artifact.digest:
            log.warning("flow %r left out of the next image: digest mismatch", name)
            continue
        flows.append(ImageFlow(name=name, location=location, data=data))
    return flows


def images_named(status: Any) -> set[str]:
    """The image digests a StoredFlow's status names: current, in its history, or retired."""
    named = {image.digest} if (image := ImageRef.read(status)) is not None else set()
    history = History.read(status)
    named |= {e.image_digest or str((e.artifact.storage_state or {}).get("imageDigest") or "")
              for e in history.entries}
    named |= {str((r.storage_state or {}).get("imageDigest") or "") for r in history.retired}
    return named - {""}
