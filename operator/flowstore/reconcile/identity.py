"""Who a FlowStorage's storage acts as: a ServiceAccount of its namespace (spec.serviceAccountName),
the credentials of a Secret, or — only where the operator's policy allows — the operator itself.

A storage opened with neither a Secret nor a ServiceAccount uses its SDK's default chain, which
in the operator means the operator's own cloud identity (IRSA, GKE or AKS workload identity,
environment keys): a role that can reach every team's bucket. So that is a policy
(``--ambient-identity``), and a FlowStorage it refuses is Stalled with a message saying how to
give it an identity of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstore.api.constants import Reason
from flowstore.api.models import SpecError, StorageSpec
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.ports import Ports
from flowstore.storage import backend_class
from flowstore.storage.identity import WorkloadIdentity, session_name


def resolve_identity(ports: Ports, namespace: str, fs: Mapping[str, Any], spec: StorageSpec) -> WorkloadIdentity | None:
    """The workload identity the storage acts as, or None (a Secret's credentials, anonymous, or
    the operator's own identity where the policy allows it; ReconcileError where it does not)."""
    cls = backend_class(spec.backend)
    name = str((fs.get("metadata") or {}).get("name") or "")
    if spec.service_account_name:
        if cls.identity_cloud is None:
            raise SpecError(f"spec.serviceAccountName is for S3, CodeCommit, GCS and Azure storage, not "
                            f"{cls.type_name}; remove it")
        settings = spec.config.get("identity") or {}
        return ports.workload_identity(namespace, spec.service_account_name, cls.identity_cloud, settings,
                                       where=f"spec.{spec.backend}.identity",
                                       session_name=session_name(namespace, name))
    if spec.secret_name is None and cls.uses_ambient_identity(spec.config):
        refusal = ports.ambient_identity_refusal(namespace)
        if refusal is not None:
            raise ReconcileError(
                Reason.AMBIENT_IDENTITY_NOT_ALLOWED,
                f"FlowStorage {namespace}/{name} names neither a credentials Secret "
                f"(spec.{spec.backend}.credentialsSecretRef) nor a ServiceAccount (spec.serviceAccountName), so it "
                f"would act as the operator itself, and {refusal}. Set spec.serviceAccountName to a ServiceAccount "
                "of this namespace that carries the team's cloud identity (docs/identity.md), or reference a "
                "Secret; a cluster admin may allow it with --ambient-identity=any (chart value identity.ambient).",
                stalled=True)
    return None
