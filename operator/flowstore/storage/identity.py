"""Workload identity: a Kubernetes ServiceAccount token exchanged for a cloud's credentials.

A storage given a :class:`WorkloadIdentity` acts as that ServiceAccount and nobody else: the
backend hands the SDK a credential that, whenever it needs fresh cloud credentials, asks the
identity's :class:`TokenSource` for a current ServiceAccount token (a JWT the cluster's issuer
signed) and exchanges it, the way each cloud documents for Kubernetes workloads:

* AWS (IRSA): STS ``AssumeRoleWithWebIdentity`` for ``role_arn`` (boto3's web-identity
  credential fetcher, inside botocore's refreshable credentials);
* Google Cloud (workload identity federation): an ``external_account`` credential, STS token
  exchange (RFC 8693) at the pool ``provider`` then, with ``service_account_email``,
  IAM Credentials ``generateAccessToken`` (google-auth's ``identity_pool`` with a token supplier);
* Azure (workload identity): the token as a client assertion for ``client_id`` in ``tenant_id``
  (azure-identity's ``ClientAssertionCredential``).

Where the token comes from is the caller's business: the operator asks the API server for one
(TokenRequest, ``flowstore.controller.tokens``); an agent Pod reads its projected token file
(:class:`FileTokenSource`, ``flowstore.workload``). Where it is sent is never a spec's: the
cloud endpoints are the SDKs' defaults, changed only by the process environment
(``AWS_ENDPOINT_URL_STS``, ``AZURE_AUTHORITY_HOST``, :data:`GCP_STS_URL_ENV`,
:data:`GCP_IAM_CREDENTIALS_URL_ENV`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from flowstore.storage.errors import IdentityNotConfigured, IdentityUnavailable, InvalidConfig

#: the token audiences each cloud expects by default (the audience the cluster-side webhooks of
#: EKS and AKS put in projected tokens); Google's depends on the pool provider (:func:`gcp_audience`)
AWS_AUDIENCE = "sts.amazonaws.com"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
#: ServiceAccount annotations read for the settings a spec leaves out (the webhooks' own, where
#: one exists; flowstore's for Google's pool provider, which GKE's webhook has no annotation for)
AWS_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
AWS_AUDIENCE_ANNOTATION = "eks.amazonaws.com/audience"
GCP_SERVICE_ACCOUNT_ANNOTATION = "iam.gke.io/gcp-service-account"
GCP_PROVIDER_ANNOTATION = "flowstore.dev/gcp-workload-identity-provider"
AZURE_CLIENT_ANNOTATION = "azure.workload.identity/client-id"
AZURE_TENANT_ANNOTATION = "azure.workload.identity/tenant-id"
#: where Google's endpoints are, unless the process environment says otherwise (tests, other universes)
GCP_STS_URL_ENV = "FLOWSTORE_GCP_STS_URL"
GCP_IAM_CREDENTIALS_URL_ENV = "FLOWSTORE_GCP_IAM_CREDENTIALS_URL"
GCP_STS_URL = "https://sts.googleapis.com/v1/token"
GCP_IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"

#: which cloud a storage block's identity is exchanged with
CLOUDS = ("aws", "gcp", "azure")
_ROLE_ARN = re.compile(r"arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_PROVIDER = re.compile(r"//iam\.googleapis\.com/projects/[^/]+/locations/global/workloadIdentityPools/[^/]+"
                       r"/providers/[^/]+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z.]+")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TENANT = re.compile(r"[0-9a-zA-Z.-]{1,253}")


class TokenSource(Protocol):
    """A current ServiceAccount token, on demand (the SDKs call it before each exchange)."""

    def token(self) -> str:
        """A token valid now, for the identity's audience; IdentityUnavailable if none can be had."""


@dataclasses.dataclass(frozen=True)
class FileTokenSource:
    """A projected ServiceAccount token file, read again on every call: the kubelet rotates it
    in place (as the EKS, GKE and AKS webhooks mount it)."""

    path: str

    def token(self) -> str:
        try:
            text = Path(self.path).read_text().strip()
        except OSError as exc:
            raise IdentityUnavailable(f"cannot read the ServiceAccount token file {self.path} ({exc.strerror}); "
                                      "mount a projected ServiceAccount token there") from None
        if not text:
            raise IdentityUnavailable(f"the ServiceAccount token file {self.path} is empty")
        return text


@dataclasses.dataclass(frozen=True)
class WorkloadIdentity:
    """Who a storage acts as, and how its token is exchanged. Never holds a token itself.

    subject: who the token names, for messages (``ServiceAccount data/flows``).
    token_subject: the token's ``sub`` claim (``system:serviceaccount:data:flows``), which trust
        policies and federated credentials match.
    cloud: ``aws``, ``gcp`` or ``azure``.
    audience: the audience of the ServiceAccount tokens :attr:`tokens` returns.
    role_arn: AWS, the role to assume.
    provider: Google, the workload identity pool provider
        (``//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R``).
    service_account_email: Google, the service account to impersonate (None: the federated
        identity is granted access to the bucket directly).
    client_id, tenant_id: Azure, the application (or user-assigned managed identity) and its tenant.
    session_name: AWS, the role session name (shows in CloudTrail).
    version: what changes when the account is recreated (its uid): a new account, new credentials.
    clock: what time it is, for deciding when credentials need refreshing (tests move it).
    """

    subject: str
    token_subject: str
    cloud: str
    tokens: TokenSource = dataclasses.field(compare=False)
    audience: str
    role_arn: str | None = None
    provider: str | None = None
    service_account_email: str | None = None
    client_id: str | None = None
    tenant_id: str | None = None
    session_name: str = "flowstore"
    version: str = ""
    clock: Callable[[], dt.datetime] | None = dataclasses.field(default=None, compare=False)

    def describe(self) -> str:
        """Who this is, for a person: the account and what it is exchanged for."""
        target = {"aws": f"role {self.role_arn}",
                  "gcp": (f"service account {self.service_account_email}" if self.service_account_email
                          else f"workload identity provider {self.provider}"),
                  "azure": f"client {self.client_id} in tenant {self.tenant_id}"}[self.cloud]
        return f"{self.subject} ({target})"

    def cache_key(self) -> str:
        """What decides the credentials: equal keys may share a client."""
        return "|".join(str(v) for v in (self.subject, self.version, self.cloud, self.audience, self.role_arn,
                                         self.provider,
                                         self.service_account_email, self.client_id, self.tenant_id))

    def now(self) -> dt.datetime:
        return self.clock() if self.clock is not None else dt.datetime.now(dt.UTC)


#: the settings of an identity block (spec.<backend>.identity, or an agent's ``identity=``)
SETTINGS_FIELDS: Mapping[str, tuple[str, ...]] = {
    "aws": ("roleARN", "audience"),
    "gcp": ("workloadIdentityProvider", "serviceAccountEmail", "audience"),
    "azure": ("clientID", "tenantID", "audience"),
}


def settings_for(cloud: str, settings: Mapping[str, Any], annotations: Mapping[str, str], *,
                 where: str, account: str) -> dict[str, str]:
    """The identity settings for `cloud`: the spec's (`settings`) first, else the ServiceAccount's
    annotations, the audience defaulting per cloud. InvalidConfig (IdentityNotConfigured) names
    what is missing and both places it may be set. `where` names the spec block for messages
    (``spec.s3.identity``), `account` the ServiceAccount (``ServiceAccount data/flows``)."""
    def pick(field: str, annotation: str | None) -> str | None:
        value = settings.get(field)
        if value is None and annotation is not None:
            value = annotations.get(annotation)
        return str(value).strip() if value else None

    def missing(field: str, annotation: str, what: str) -> IdentityNotConfigured:
        return IdentityNotConfigured(
            f"{account} names no {what}: annotate it with {annotation} or set {where}.{field}")

    if cloud == "aws":
        role = pick("roleARN", AWS_ROLE_ANNOTATION)
        if not role:
            raise missing("roleARN", AWS_ROLE_ANNOTATION, "IAM role")
        if not _ROLE_ARN.fullmatch(role):
            raise IdentityNotConfigured(f"{role[:200]!r} ({where}.roleARN or the {AWS_ROLE_ANNOTATION} annotation "
                                        f"of {account}) is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")
        return {"roleARN": role, "audience": pick("audience", AWS_AUDIENCE_ANNOTATION) or AWS_AUDIENCE}
    if cloud == "gcp":
        provider = pick("workloadIdentityProvider", GCP_PROVIDER_ANNOTATION)
        if not provider:
            raise missing("workloadIdentityProvider", GCP_PROVIDER_ANNOTATION, "workload identity pool provider")
        if not _PROVIDER.fullmatch(provider):
            raise IdentityNotConfigured(
                f"{provider[:200]!r} ({where}.workloadIdentityProvider) is not a workload identity pool provider "
                "(//iam.googleapis.com/projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER)")
        email = pick("serviceAccountEmail", GCP_SERVICE_ACCOUNT_ANNOTATION)
        if email and not _EMAIL.fullmatch(email):
            raise IdentityNotConfigured(f"{email[:200]!r} ({where}.serviceAccountEmail) is not a service account email")
        result = {"workloadIdentityProvider": provider, "audience": pick("audience", None) or gcp_audience(provider)}
        if email:
            result["serviceAccountEmail"] = email
        return result
    if cloud == "azure":
        client_id = pick("clientID", AZURE_CLIENT_ANNOTATION)
        tenant_id = pick("tenantID", AZURE_TENANT_ANNOTATION)
        if not client_id:
            raise missing("clientID", AZURE_CLIENT_ANNOTATION, "Azure client ID")
        if not tenant_id:
            raise missing("tenantID", AZURE_TENANT_ANNOTATION, "Azure tenant ID")
        if not _GUID.fullmatch(client_id):
            raise IdentityNotConfigured(f"{client_id[:200]!r} ({where}.clientID) is not a client ID (a GUID)")
        if not _TENANT.fullmatch(tenant_id):
            raise IdentityNotConfigured(f"{tenant_id[:200]!r} ({where}.tenantID) is not a tenant ID")
        return {"clientID": client_id, "tenantID": tenant_id, "audience": pick("audience", None) or AZURE_AUDIENCE}
    raise InvalidConfig(f"no workload identity for {cloud!r} storage")


def identity_from_settings(cloud: str, settings: Mapping[str, str], tokens: TokenSource, *, subject: str,
                           token_subject: str, session_name: str = "flowstore", version: str = "",
                           clock: Callable[[], dt.datetime] | None = None) -> WorkloadIdentity:
    """A WorkloadIdentity from complete settings (:func:`settings_for`'s result)."""
    return WorkloadIdentity(
        subject=subject, token_subject=token_subject, cloud=cloud, tokens=tokens, audience=settings["audience"],
        role_arn=settings.get("roleARN"), provider=settings.get("workloadIdentityProvider"),
        service_account_email=settings.get("serviceAccountEmail"), client_id=settings.get("clientID"),
        tenant_id=settings.get("tenantID"), session_name=session_name, version=version, clock=clock)


def gcp_audience(provider: str) -> str:
    """The default allowed audience of a workload identity pool provider: its resource name
    behind ``https:`` (Google: "Configure workload identity federation with Kubernetes")."""
    return "https:" + provider if provider.startswith("//") else provider


def gcp_endpoints() -> tuple[str, str]:
    """(STS token URL, IAM Credentials base URL) for this process."""
    return (os.environ.get(GCP_STS_URL_ENV) or GCP_STS_URL,
            (os.environ.get(GCP_IAM_CREDENTIALS_URL_ENV) or GCP_IAM_CREDENTIALS_URL).rstrip("/"))


def session_name(namespace: str, name: str) -> str:
    """An AWS role session name for a FlowStorage: ``flowstore.<namespace>.<name>``, within the
    64 characters of [\\w+=,.@-] STS accepts."""
    text = re.sub(r"[^\w+=,.@-]", "-", f"flowstore.{namespace}.{name}")
    return text[:64]

