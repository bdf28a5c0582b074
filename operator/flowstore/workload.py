"""An agent's own cloud identity: the worker Pod's projected ServiceAccount token, exchanged the
way the operator exchanges a FlowStorage's (``spec.serviceAccountName``; flowstore.storage.identity).

    load_flow("etl", "data", identity={"roleARN": "arn:aws:iam::123456789012:role/team-a-flows"})
    # pull step: flowstore.prefect.pull_flow: {name: etl, identity: {}}

``identity`` is a mapping with the fields of the FlowStorage's identity block (``roleARN``,
``workloadIdentityProvider``, ``serviceAccountEmail``, ``clientID``, ``tenantID``, ``audience``)
and ``tokenFile``; what it leaves out comes from the environment the EKS, AKS (and GKE-style)
webhooks give a Pod: ``AWS_ROLE_ARN`` / ``AWS_WEB_IDENTITY_TOKEN_FILE``, ``AZURE_CLIENT_ID`` /
``AZURE_TENANT_ID`` / ``AZURE_FEDERATED_TOKEN_FILE``, or ``FLOWSTORE_TOKEN_FILE``. The token file
is read again for every exchange (the kubelet rotates it). Without ``identity`` an agent uses
its SDK's default chain, as before. Nothing here comes from a StoredFlow's status: a status names
where a flow is, never whom to be or where to send a token.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

from flowstore.storage import backend_class
from flowstore.storage.errors import InvalidConfig
from flowstore.storage.identity import (
    AWS_AUDIENCE_ANNOTATION,
    AWS_ROLE_ANNOTATION,
    AZURE_CLIENT_ANNOTATION,
    AZURE_TENANT_ANNOTATION,
    GCP_PROVIDER_ANNOTATION,
    GCP_SERVICE_ACCOUNT_ANNOTATION,
    FileTokenSource,
    WorkloadIdentity,
    identity_from_settings,
    settings_for,
)

TOKEN_FILE_ENV = "FLOWSTORE_TOKEN_FILE"  # noqa: S105 - a variable name
#: the token file each cloud's webhook mounts and names
_TOKEN_FILE_ENVS = {"aws": "AWS_WEB_IDENTITY_TOKEN_FILE", "azure": "AZURE_FEDERATED_TOKEN_FILE"}
#: environment variables that stand for the ServiceAccount annotations the operator reads
_ENV_AS_ANNOTATIONS = {
    "AWS_ROLE_ARN": AWS_ROLE_ANNOTATION,
    "FLOWSTORE_AWS_AUDIENCE": AWS_AUDIENCE_ANNOTATION,
    "AZURE_CLIENT_ID": AZURE_CLIENT_ANNOTATION,
    "AZURE_TENANT_ID": AZURE_TENANT_ANNOTATION,
    "FLOWSTORE_GCP_WORKLOAD_IDENTITY_PROVIDER": GCP_PROVIDER_ANNOTATION,
    "FLOWSTORE_GCP_SERVICE_ACCOUNT": GCP_SERVICE_ACCOUNT_ANNOTATION,
}


def agent_identity(storage_type: str, options: Mapping[str, Any] | None,
                   environ: Mapping[str, str] | None = None) -> WorkloadIdentity | None:
    """The identity an agent acts as for a storage of `storage_type` (``S3``, ``GCS``, ...), or
    None (no `options`, or a backend without workload identity: the SDK's default chain)."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise InvalidConfig("identity must be a mapping such as {roleARN: arn:aws:iam::…:role/NAME}")
    cloud = backend_class(storage_type).identity_cloud
    if cloud is None:
        return None
    env = os.environ if environ is None else environ
    path = options.get("tokenFile") or env.get(TOKEN_FILE_ENV) or env.get(_TOKEN_FILE_ENVS.get(cloud, ""), "")
    if not path:
        raise InvalidConfig(f"identity needs a ServiceAccount token file: give tokenFile, or set {TOKEN_FILE_ENV} "
                            "(a projected ServiceAccount token volume)")
    tokens = FileTokenSource(str(path))
    subject = _subject(tokens)
    annotations = {annotation: env[name] for name, annotation in _ENV_AS_ANNOTATIONS.items() if env.get(name)}
    settings = {k: v for k, v in options.items() if k != "tokenFile"}
    resolved = settings_for(cloud, settings, annotations, where="identity", account=f"this Pod ({subject})")
    return identity_from_settings(cloud, resolved, tokens, subject=f"this Pod's ServiceAccount ({subject})",
                                  token_subject=subject, session_name="flowstore-agent")


def _subject(tokens: FileTokenSource) -> str:
    """The token's ``sub`` (who it names), for messages; not verified (the cloud verifies it)."""
    try:
        payload = tokens.token().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("sub") or "unknown subject")
    except (IndexError, ValueError):
        raise InvalidConfig(f"{tokens.path} does not hold a ServiceAccount token (a JWT)") from None
