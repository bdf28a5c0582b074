"""The operator's side of cloud identity: ServiceAccount tokens from the API server, and the
policy on its own (ambient) identity.

A FlowStorage with ``spec.serviceAccountName`` acts as that ServiceAccount of its namespace:
:class:`ServiceAccountTokens` asks the API server for a short-lived token for it (TokenRequest,
``serviceaccounts/token`` create, the audience the cloud expects) and keeps it in memory only,
until 80% of its life has passed (as the kubelet does for projected tokens), so every exchange
the SDKs make presents a token with a fifth of its life or more left. Nothing is written down:
a restarted operator asks again. The account's annotations (read with ``serviceaccounts`` get)
fill in what the spec leaves out (the role ARN, the Azure client and tenant, …).

A FlowStorage with neither a credentials Secret nor a ServiceAccount would act as the operator
itself (the SDKs' default chain: its IRSA role, GKE or AKS identity); :class:`AmbientPolicy`
says where that is allowed (``--ambient-identity``, chart value ``identity.ambient``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from flowstore.api.constants import Reason
from flowstore.reconcile.failures import ClusterUnavailable, ReconcileError
from flowstore.storage.errors import IdentityUnavailable, Unavailable
from flowstore.storage.identity import WorkloadIdentity, identity_from_settings, settings_for

#: the lifetime asked for each token (the API server may shorten it; 10 minutes is its floor)
TOKEN_SECONDS = 3600
#: a token is renewed once this share of its lifetime has passed
REFRESH_AT = 0.8
#: ``--ambient-identity``: where a FlowStorage without Secret or ServiceAccount may act as the operator
AMBIENT_POLICIES = ("own-namespace", "any", "none")
#: where a Pod's ServiceAccount namespace is mounted (the operator's own namespace in a cluster)
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True)
class AmbientPolicy:
    """Where the operator lends its own identity. `mode`: ``own-namespace`` (default: only
    FlowStorages in `operator_namespace`), ``any`` (every namespace it watches: the behaviour
    before 0.x) or ``none``."""

    mode: str = "own-namespace"
    operator_namespace: str | None = None

    def refusal(self, namespace: str) -> str | None:
        """Why a FlowStorage in `namespace` may not act as the operator, or None if it may."""
        if self.mode == "any" or (self.mode == "own-namespace" and namespace == self.operator_namespace):
            return None
        if self.mode == "own-namespace" and self.operator_namespace:
            return f"this operator lends its own identity only in its own namespace {self.operator_namespace!r}"
        return "this operator lends its own identity to no FlowStorage"


def operator_namespace(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """The operator's own namespace: the flag, else POD_NAMESPACE (the chart sets it), else the
    mounted ServiceAccount's namespace, else None (a process outside any cluster)."""
    if explicit:
        return explicit
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return Path(NAMESPACE_FILE).read_text().strip() or None
    except OSError:
        return None


@dataclasses.dataclass
class _Token:
    value: str
    renew_at: dt.datetime


class ServiceAccountTokens:
    """Short-lived ServiceAccount tokens from the API server (TokenRequest), cached per account
    (by uid: a recreated account gets new tokens) and audience, in memory only."""

    def __init__(self, core: client.CoreV1Api, *, seconds: int = TOKEN_SECONDS,
                 clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.core = core
        self.seconds = seconds
        self.clock = clock
        self._tokens: dict[tuple[str, str, str, str], _Token] = {}
        self._locks: dict[tuple[str, str, str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        #: TokenRequests made (metrics, tests)
        self.requests = 0

    def token(self, namespace: str, name: str, uid: str, audience: str) -> str:
        """A token for ``namespace/name`` with `audience`, with at least a fifth of its life left."""
        key = (namespace, name, uid, audience)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one TokenRequest per account and audience at a time
            cached = self._tokens.get(key)
            if cached is not None and self.clock() < cached.renew_at:
                return cached.value
            fresh = self._request(namespace, name, uid, audience)
            with self._lock:
                if len(self._tokens) > 1024:
                    self._tokens.clear()
                self._tokens[key] = fresh
            return fresh.value

    def _request(self, namespace: str, name: str, uid: str, audience: str) -> _Token:
        # Bound to nothing but the account itself (its uid): deleting the account revokes it.
        body = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[audience], expiration_seconds=self.seconds))
        issued = self.clock()
        try:
            answer = self.core.create_namespaced_service_account_token(name, namespace, body)
        except ApiException as exc:
            raise _token_error(exc, namespace, name) from None
        except Exception as exc:  # connection refused, timeouts
            raise Unavailable(f"cannot request a token for ServiceAccount {namespace}/{name}: Kubernetes API "
                              f"unavailable ({type(exc).__name__})") from None
        self.requests += 1
        status = answer.status
        expires = status.expiration_timestamp if status is not None else None
        if status is None or not status.token or expires is None:
            raise IdentityUnavailable(f"the API server answered the TokenRequest for ServiceAccount "
                                      f"{namespace}/{name} without a token")
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
        lifetime = max((expires - issued).total_seconds(), 0.0)
        return _Token(value=str(status.token), renew_at=issued + dt.timedelta(seconds=lifetime * REFRESH_AT))


def _token_error(exc: ApiException, namespace: str, name: str) -> Exception:
    what = f"ServiceAccount {namespace}/{name}"
    if exc.status == 404:
        return IdentityUnavailable(f"{what} no longer exists; create it again or change spec.serviceAccountName")
    if exc.status == 403:
        return IdentityUnavailable(
            f"the operator may not request tokens for {what} (RBAC: create serviceaccounts/token in namespace "
            f"{namespace}); it is granted only in the namespaces the operator watches (chart value watchNamespaces)")
    if exc.status in (400, 422):
        return IdentityUnavailable(f"the API server refused a token for {what} (HTTP {exc.status}): "
                                   f"{str(exc.reason)[:200]}")
    return Unavailable(f"cannot request a token for {what}: HTTP {exc.status} {exc.reason}")


@dataclasses.dataclass(frozen=True)
class KubeTokenSource:
    """The :class:`~flowstore.storage.identity.TokenSource` of one account and audience."""

    tokens: ServiceAccountTokens
    namespace: str
    name: str
    uid: str
    audience: str

    def token(self) -> str:
        return self.tokens.token(self.namespace, self.name, self.uid, self.audience)


def workload_identity(core: client.CoreV1Api, tokens: ServiceAccountTokens, namespace: str, account: str,
                      cloud: str, settings: Mapping[str, Any], *, where: str,
                      session_name: str) -> WorkloadIdentity:
    """The identity of ServiceAccount ``namespace/account`` for `cloud`: the spec's `settings`
    over the account's annotations. ReconcileError when the account does not exist (or cannot be
    read); IdentityNotConfigured when a setting is missing."""
    try:
        sa = core.read_namespaced_service_account(account, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ReconcileError(
                Reason.SERVICE_ACCOUNT_NOT_FOUND,
                f"ServiceAccount {account!r} (spec.serviceAccountName) was not found in namespace {namespace!r}; "
                "create it (with the annotations of the team's cloud identity, docs/identity.md) or fix the name.",
                stalled=True) from None
        if exc.status == 403:
            raise ReconcileError(
                Reason.TOKEN_REQUEST_FAILED,
                f"the operator may not read ServiceAccount {account!r} in namespace {namespace!r} (RBAC: get "
                "serviceaccounts); it is granted only in the namespaces the operator watches.", stalled=True) from None
        raise ClusterUnavailable(f"reading ServiceAccount {namespace}/{account}: HTTP {exc.status} {exc.reason}") \
            from None
    except Exception as exc:
        raise ClusterUnavailable(f"reading ServiceAccount {namespace}/{account}: {type(exc).__name__}") from None
    meta = sa.metadata or client.V1ObjectMeta()
    subject = f"ServiceAccount {namespace}/{account}"
    resolved = settings_for(cloud, settings, dict(meta.annotations or {}), where=where, account=subject)
    source = KubeTokenSource(tokens, namespace, account, str(meta.uid or ""), resolved["audience"])
    return identity_from_settings(cloud, resolved, source, subject=subject,
                                  token_subject=f"system:serviceaccount:{namespace}:{account}",
                                  session_name=session_name, version=str(meta.uid or ""), clock=tokens.clock)
