"""Step 6: the bytes a flow is stored as.

Script mode stores the source after a syntax check, never executing it. Pickle mode has the
flow built by the ports' builder (user code runs only there: a constrained child process) and
wraps the pickled flow in the seed's envelope.
"""

from __future__ import annotations

from flowstore.artifacts import envelope
from flowstore.controller.reconcile.context import FlowContext
from flowstore.controller.reconcile.ports import Ports


def build(ctx: FlowContext, ports: Ports) -> bytes:
    """The artifact's bytes for `ctx.fmt`. Raises the builder's BuildError."""
    if ctx.fmt == "script":
        ports.check_script(ctx.source)
        return ctx.source
    pickled = ports.build_pickle(ctx.source, flow_name=ctx.spec.flow_name, object_name=ctx.spec.object_name)
    return envelope.wrap(pickled)
