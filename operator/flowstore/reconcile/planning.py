"""Step 3: the format and the inputs digest — the digest of everything that decides the
artifact's bytes and place. Equal digests mean nothing needs to be stored."""

from __future__ import annotations

import json
from typing import Any, Protocol

from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import sha256_of
from flowstore.reconcile.storages import storage_identity

#: bumped when the artifact format changes, so every artifact is rebuilt once
FORMAT_VERSION = "1"


class FamilyRules(Protocol):
    """What planning asks of the storage family's publisher (``publishers.base.Publisher``)."""

    @property
    def fixed_format(self) -> str | None:
        """The only format this family stores (None: the spec decides)."""

    def extra_inputs(self, ctx: FlowContext) -> dict[str, Any]:
        """What else decides this family's artifact, beyond the common inputs."""


def plan(ctx: FlowContext, family: FamilyRules) -> None:
    """Set ``ctx.fmt`` and ``ctx.inputs_digest``; `family` is the storage family's publisher."""
    as_script = ctx.spec.stored_as_script
    if as_script is None:
        as_script = ctx.storage_spec.stored_as_script
    ctx.fmt = family.fixed_format or ("script" if as_script else "pickle")
    if ctx.bundle and ctx.fmt == "script":
        ctx.fmt = "bundle"  # the files as they are, packed
    source = ctx.git.recorded_digest if ctx.git is not None and ctx.git.recorded_digest else sha256_of(ctx.source)
    inputs = {
        "formatVersion": FORMAT_VERSION,
        "source": source,
        "flowName": ctx.spec.flow_name,
        "objectName": ctx.spec.object_name,
        "format": ctx.fmt,
        "key": ctx.spec.key,
        "storage": storage_identity(ctx.storage_spec),
        # always null: a new signing key re-signs the status and stores nothing again (the member
        # stays so that the digests of artifacts stored before signing left the inputs are equal)
        "signingKey": None,
        **family.extra_inputs(ctx),
        # built in a runtime image: its Python and libraries decide the pickle (and the check)
        **({"buildImage": ctx.build.image} if ctx.build is not None else {}),
    }
    ctx.inputs_digest = sha256_of(json.dumps(inputs, sort_keys=True).encode())
