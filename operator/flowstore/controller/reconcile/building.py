"""Step 6: the bytes a flow is stored as.

Script mode stores the source after a syntax check, never executing it (a bundle: every Python
file of it). Pickle mode has the flow built by the ports' builder (user code runs only there: a
constrained child process, or a builder Job) and wraps the pickled flow in the seed's envelope,
with the versions of the Python and cloudpickle that pickled it.
"""

from __future__ import annotations

from flowstore.artifacts import bundle, envelope
from flowstore.controller.reconcile.context import FlowContext
from flowstore.controller.reconcile.ports import Ports


def build(ctx: FlowContext, ports: Ports) -> bytes:
    """The artifact's bytes for `ctx.fmt`. Raises the builder's BuildError."""
    if ctx.fmt == "script":
        ports.check_script(ctx.source)
        return ctx.source
    if ctx.fmt == "bundle":
        check_bundle(ctx.source, ports)
        return ctx.source
    built = ports.build_pickle(ctx.source, flow_name=ctx.spec.flow_name, object_name=ctx.spec.object_name,
                               bundle=ctx.bundle)
    return envelope.wrap(built.pickle, built.versions)


def check_bundle(data: bytes, ports: Ports) -> None:
    """Every Python file of a bundle compiles (never executed, as for scripts)."""
    for path, content in sorted(bundle.unpack(data).files.items()):
        if path.endswith(".py"):
            ports.check_script(content, filename=path)
