"""OCI storages: each revision of a flow is its own image, pushed by digest (docs/oci-volumes.md).

The image is a pure function of the revision (its file, the StoredFlow's name and the flow's
digest), so a retry after a crash anywhere pushes the same digest again and sends nothing the
registry has: no location needs claiming first, unlike the object stores. Status names the
image only after it read back from the registry by digest with the recorded flow digest.
"""

from __future__ import annotations

import posixpath

from flowstore.api.constants import EventReason
from flowstore.api.history import Retired, Revision
from flowstore.api.status import GitPin, ImageRef
from flowstore.reconcile.building import build
from flowstore.reconcile.context import FlowContext, ready
from flowstore.reconcile.ports import Event, Outcome, Pending, Ports
from flowstore.reconcile.publishers.base import CHANGED, MISSING, Publisher, RetireScope
from flowstore.reconcile.publishers.image import settle_signature, sign_image
from flowstore.reconcile.revisions import Stored
from flowstore.storage import IntegrityError, NotFound, StorageError
from flowstore.storage.oci.image import FlowImageError, check_path
from flowstore.storage.oci.storage import BUNDLE_LOCATION, OCI

#: the file an image keeps a pickled flow in
PICKLE_LOCATION = "flow.prefect"


def image_location(ctx: FlowContext) -> str:
    """Where the revision's file sits in its image: spec.key, else by format (a script under its
    own file name when that is a plain ``*.py`` name)."""
    if ctx.spec.key:
        return ctx.spec.key
    if ctx.fmt == "bundle":
        return BUNDLE_LOCATION
    if ctx.fmt == "script":
        name = posixpath.basename(ctx.file_name or "")
        try:
            return check_path(name) if name.endswith(".py") and name.isascii() else "flow.py"
        except FlowImageError:
            return "flow.py"
    return PICKLE_LOCATION


class OCIPublisher(Publisher[OCI]):
    family = "oci"
    storage_type = OCI

    def publish(self, ctx: FlowContext, ports: Ports) -> Outcome:
        data = build(ctx, ports)
        if isinstance(data, Pending):
            return ctx.pending(data)
        storage = self.storage(ctx)
        location = image_location(ctx)
        ctx.progress(f"Pushing the image of flow {ctx.spec.flow_name!r} to {storage.repository}")
        stored = storage.push_revision(location, data, stored_flow=f"{ctx.namespace}/{ctx.name}")
        image_digest = str(stored.storage_state["imageDigest"])
        digest = "sha256:" + stored.sha256
        held = storage.read_image(image_digest)  # by digest: the registry holds exactly this revision
        if held.flow_digest != digest or held.files.get(location) != digest:
            raise StorageError(f"{storage.reference(image_digest)} did not read back as pushed; will push again")
        artifact = ctx.artifact(location=location, url=storage.reference(image_digest), digest=digest, size=stored.size,
                                storage_state={"imageDigest": image_digest})
        # with an ed25519 key, the image's cosign signature, kept with it by ready()
        ctx.image_signature = sign_image(ctx, storage, ImageRef(name=storage.repository, tag="", digest=image_digest,
                                                                path=location))
        previous = ImageRef.read(ctx.status)
        ctx.status.pop("driftDetected", None)
        GitPin.clear(ctx.status)
        verb = "Moved" if previous and previous.digest != image_digest else "Stored"
        events = [Event("Normal", EventReason.STORED, f"{verb} flow {ctx.spec.flow_name!r} as image "
                        f"{storage.reference(image_digest)} ({stored.size} bytes at {location})")]
        outcome = ready(ctx, Stored(location, artifact, image_name=storage.repository, image_digest=image_digest),
                        events, uploaded=True)
        outcome.built = ctx.fmt == "pickle"
        return outcome

    def settle(self, ctx: FlowContext) -> list[Event]:
        """The current image signed by the current key, as for Docker storages (a new key, a
        revert or a pin: only the signature is pushed)."""
        return settle_signature(ctx, self.storage(ctx))

    def verify(self, ctx: FlowContext, entry: Revision) -> str | None:
        """The revision's image, read by digest, still holds the recorded flow digest at its
        location (the registry verifies every blob by digest)."""
        storage = self.storage(ctx)
        digest = entry.image_digest or str((entry.artifact.storage_state or {}).get("imageDigest") or "")
        if not digest:
            return MISSING
        storage.restore_state({"imageDigest": digest})
        try:
            held = storage.read_image(digest)
        except NotFound:
            return MISSING
        except IntegrityError:
            return CHANGED
        return None if held.flow_digest == entry.digest and held.files.get(entry.location) == entry.digest \
            else CHANGED

    def delete_revision(self, storage: OCI, record: Retired, scope: RetireScope) -> str | None:
        """Delete the image manifest of a revision if its label names this StoredFlow (status is
        hostile input: an image of another flow is left). The registry must allow deletes; its
        blobs go at the registry's garbage collection."""
        digest = str((record.storage_state or {}).get("imageDigest") or "")
        if not digest:
            return None
        try:
            held = storage.read_image(digest)
        except NotFound:
            return None
        if held.stored_flow != f"{scope.namespace}/{scope.name}":
            return (f"image {storage.reference(digest)} is labelled {held.stored_flow!r}, not this StoredFlow; "
                    "delete it by hand if it must go")
        storage.delete_image(digest)
        return None
