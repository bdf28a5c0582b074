"""Step 6: the bytes a flow is stored as.

Script mode stores the source after a syntax check, never executing it (a bundle: every Python
file of it). Pickle mode has the flow built by the ports' builder (user code runs only there: a
constrained child process, or a builder Job) and wraps the pickled flow in the seed's envelope,
with the versions of the Python and cloudpickle that pickled it.
"""

from __future__ import annotations

from flowstore.artifacts import bundle, envelope
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.ports import BuildRequest, Pending, Ports


def build(ctx: FlowContext, ports: Ports) -> bytes | Pending:
    """The artifact's bytes for `ctx.fmt`, or Pending while a builder Job runs. Raises the
    builder's BuildError."""
    if ctx.fmt == "script":
        ports.check_script(ctx.source)
        return ctx.source
    if ctx.fmt == "bundle":
        check_bundle(ctx.source, ports)
        return ctx.source
    built = ports.build(build_request(ctx))
    if isinstance(built, Pending):
        return built
    ctx.versions = dict(built.versions)
    return envelope.wrap(built.pickle, built.versions)


def build_request(ctx: FlowContext) -> BuildRequest:
    """This StoredFlow's build: its source, where it runs (spec.build), and a digest of both."""
    return BuildRequest(
        source=ctx.source, bundle=ctx.bundle, flow_name=ctx.spec.flow_name, object_name=ctx.spec.object_name,
        spec=ctx.build, namespace=ctx.namespace, owner_name=ctx.name, owner_uid=ctx.uid, digest=ctx.inputs_digest)


def check_bundle(data: bytes, ports: Ports) -> None:
    """Every Python file of a bundle compiles (never executed, as for scripts)."""
    for path, content in sorted(bundle.unpack(data).files.items()):
        if path.endswith(".py"):
            ports.check_script(content, filename=path)
