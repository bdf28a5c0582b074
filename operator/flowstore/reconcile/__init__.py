"""The pure reconcile core for StoredFlow and FlowStorage: no kopf, no Kubernetes client,
nothing of ``flowstore.controller`` (import-linter contracts in pyproject.toml forbid them).

The cluster and the builders are reached through :class:`Ports`, so this package runs the
same under the operator, offline from the CLI, and in unit tests.

- ``storedflow``  the StoredFlow steps (resolve storage, source, plan, up to date, conflict,
                  publish), each with its contract;
- ``publishers``  one publisher per backend family: object stores (upload), Docker (a layer
                  of the storage's image), git-hosted (pin a commit);
- ``revisions``   what a pass stored becomes a revision: the pin or the newest made current,
                  the history bounded, what leaves it retired (pure; docs/revisions.md);
- ``retention``   deleting retired objects once ``retention.minAge`` passed, each family its way;
- ``flowstorage`` the FlowStorage check and ``status.flows``;
- ``cleanup``     a StoredFlow's deletion (``deletionPolicy``: every object it still holds);
- ``failures``    the one translation point from errors to a condition reason, a message
                  and a retry (``classify``, ``ReconcileError``);
- ``context``, ``sources``, ``planning``, ``building``, ``storages``, ``outcomes``, ``ports``:
                  what the steps share.
"""

from __future__ import annotations

from flowstore.reconcile.cleanup import Cleanup, delete_stored_flow
from flowstore.reconcile.flowstorage import reconcile_flow_storage
from flowstore.reconcile.outcomes import requested_at, status_changed
from flowstore.reconcile.planning import FORMAT_VERSION
from flowstore.reconcile.ports import Event, Outcome, Ports
from flowstore.reconcile.storages import open_storage
from flowstore.reconcile.storedflow import reconcile_stored_flow

__all__ = [
    "FORMAT_VERSION",
    "Cleanup",
    "Event",
    "Outcome",
    "Ports",
    "delete_stored_flow",
    "open_storage",
    "reconcile_flow_storage",
    "reconcile_stored_flow",
    "requested_at",
    "status_changed",
]
