"""What the operator lends the storages it opens for FlowStorages (its serving policy).

A library user constructs storages with their own authority: their directories, their
environment, their network. The operator opens a storage for whoever wrote a FlowStorage, so
it must not lend them more than they have: :class:`ServePolicy` carries the operator's rules
(flags and chart values, docs/security.md) to :meth:`Storage.for_operator`, and the backends
that reach places the spec names (Local's directory, the Webhook's URLs and environment)
apply them.
"""

from __future__ import annotations

import dataclasses

from flowstore.storage.endpoints import EndpointPolicy


@dataclasses.dataclass(frozen=True)
class ServePolicy:
    """The operator's rules for one FlowStorage's storage.

    namespace: the FlowStorage's namespace (Local storage lives under ``<local_root>/<namespace>``).
    local_root: ``--local-root``; None: the operator serves no Local storage.
    endpoints: where Webhook requests may go (``--allow-private-endpoints``).
    webhook_env: the operator's environment variables a FlowStorage's ``allowedEnv`` may name
        (``--webhook-allowed-env``); the default lends none.
    """

    namespace: str = ""
    local_root: str | None = None
    endpoints: EndpointPolicy = dataclasses.field(default_factory=lambda: EndpointPolicy(allow_private=False))
    webhook_env: frozenset[str] = frozenset()
