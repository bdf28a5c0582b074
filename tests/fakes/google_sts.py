"""A contract fake of Google's two token endpoints that workload identity federation uses, and a
front for fake-gcs-server that accepts only the access tokens they issued.

1. Security Token Service ``POST /v1/token`` (RFC 8693 OAuth 2.0 Token Exchange), form-encoded:
   ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``, ``audience`` (the pool
   provider, ``//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R``),
   ``scope``, ``requested_token_type=urn:ietf:params:oauth:token-type:access_token``,
   ``subject_token`` and ``subject_token_type`` (``…:token-type:jwt`` for a Kubernetes token).
   The provider checks the token against its issuer's keys and allowed audiences (default: the
   provider's own name behind ``https:``). Answers ``{"access_token", "issued_token_type",
   "token_type": "Bearer", "expires_in"}``; errors HTTP 400 ``{"error": "invalid_grant" |
   "invalid_request" | "invalid_target", "error_description"}``.
   https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token ,
   https://cloud.google.com/iam/docs/workload-identity-federation-with-kubernetes ,
   https://www.rfc-editor.org/rfc/rfc8693#section-2.1
2. IAM Service Account Credentials ``POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken``
   with ``Authorization: Bearer <federated token>`` and JSON ``{"scope": [...], "lifetime": "3600s"}``:
   allowed when the federated principal
   (``principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/<sub>``)
   holds roles/iam.workloadIdentityUser on the service account. Answers ``{"accessToken",
   "expireTime"}`` (RFC 3339); errors ``{"error": {"code", "message", "status"}}``, 401
   UNAUTHENTICATED / 403 PERMISSION_DENIED / 404 NOT_FOUND.
   https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken

Tokens live `token_seconds` (short in tests, so google-auth's refresh before expiry shows).
:class:`GcsFront` passes a request to fake-gcs-server (which checks no credentials) only with a
current access token whose principal has a role on the bucket, answering 401 / 403 as GCS's JSON
API does (https://cloud.google.com/storage/docs/json_api/v1/status-codes) otherwise.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
import threading
import time
import urllib.parse

import requests

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.oidc import ClusterIssuer, TokenRefused

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
_PROVIDER = re.compile(r"//iam\.googleapis\.com/(projects/[^/]+/locations/global/workloadIdentityPools/[^/]+)"
                       r"/providers/[^/]+")
_GENERATE = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")


@dataclasses.dataclass(frozen=True)
class Issued:
    principal: str  # the federated principal, or the service account's email
    expires: float  # time.time() of expiry
    kind: str  # "federated" | "service-account"


class GoogleTokenService(FakeServer):
    """STS and IAM Credentials. `providers`: provider resource name -> allowed audiences (empty:
    the default one); `impersonation`: service account email -> principals allowed to use it."""

    def __init__(self, issuer: ClusterIssuer, *, token_seconds: int = 3600) -> None:
        super().__init__()
        self.issuer = issuer
        self.token_seconds = token_seconds
        self.providers: dict[str, list[str]] = {}
        self.impersonation: dict[str, set[str]] = {}
        self.issued: dict[str, Issued] = {}
        #: ("sts" | "iam", the principal or None, the error or None), in order
        self.exchanges: list[tuple[str, str | None, str | None]] = []
        self._lock = threading.Lock()

    def add_provider(self, provider: str, audiences: list[str] | None = None) -> None:
        self.providers[provider] = list(audiences or [])

    def allow(self, email: str, principal: str) -> None:
        """Grant `principal` roles/iam.workloadIdentityUser on service account `email`."""
        self.impersonation.setdefault(email, set()).add(principal)

    @staticmethod
    def principal(provider: str, subject: str) -> str:
        match = _PROVIDER.fullmatch(provider)
        assert match, provider
        return f"principal://iam.googleapis.com/{match.group(1)}/subject/{subject}"

    def authorize(self, token: str) -> Issued | None:
        """The current access token's record, or None (unknown or expired)."""
        with self._lock:
            issued = self.issued.get(token)
        return issued if issued is not None and issued.expires > time.time() else None

    def handle(self, request: Request) -> Response:
        if request.method == "POST" and request.path == "/v1/token":
            return self._exchange(request)
        match = _GENERATE.fullmatch(request.path)
        if request.method == "POST" and match:
            return self._generate(request, urllib.parse.unquote(match.group(1)))
        return _google_error(404, "NOT_FOUND", f"no such method {request.method} {request.path}")

    # ------------------------------------------------------------------ STS
    def _exchange(self, request: Request) -> Response:
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode(), keep_blank_values=True).items()}

        def refuse(error: str, description: str) -> Response:
            self._record("sts", None, error)
            return Response.json({"error": error, "error_description": description}, status=400)

        if form.get("grant_type") != GRANT_TYPE:
            return refuse("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return refuse("invalid_request", f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        if form.get("subject_token_type") != JWT_TOKEN_TYPE:
            return refuse("invalid_request", "subject_token_type must be urn:ietf:params:oauth:token-type:jwt")
        provider = form.get("audience", "")
        if provider not in self.providers:
            return refuse("invalid_target", f"The target service indicated by the audience is invalid: {provider}")
        audiences = self.providers[provider] or ["https:" + provider]
        try:
            claims = self.issuer.verify(form.get("subject_token", ""), audiences)
        except TokenRefused as exc:
            return refuse("invalid_grant", f"The audience in ID Token does not match the expected audience. "
                          f"({exc})" if "audience" in str(exc) else str(exc))
        principal = self.principal(provider, str(claims["sub"]))
        token = self._issue(principal, "federated")
        self._record("sts", principal, None)
        return Response.json({"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                              "expires_in": self.token_seconds})

    # ------------------------------------------------------------------ IAM Credentials
    def _generate(self, request: Request, email: str) -> Response:
        auth = request.headers.get("authorization", "")
        caller = self.authorize(auth[7:]) if auth.startswith("Bearer ") else None
        if caller is None or caller.kind != "federated":
            self._record("iam", None, "UNAUTHENTICATED")
            return _google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if email not in self.impersonation:
            self._record("iam", caller.principal, "NOT_FOUND")
            return _google_error(404, "NOT_FOUND", f"Service account {email} not found.")
        if caller.principal not in self.impersonation[email]:
            self._record("iam", caller.principal, "PERMISSION_DENIED")
            return _google_error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.getAccessToken' denied "
                                 f"on resource (or it may not exist) for {caller.principal}.")
        body = request.json() or {}
        if not body.get("scope"):
            return _google_error(400, "INVALID_ARGUMENT", "scope is required")
        token = self._issue(email, "service-account")
        expires = dt.datetime.fromtimestamp(self.issued[token].expires, dt.UTC)
        self._record("iam", email, None)
        return Response.json({"accessToken": token, "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})

    def _issue(self, principal: str, kind: str) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self._lock:
            self.issued[token] = Issued(principal, time.time() + self.token_seconds, kind)
        return token

    def _record(self, step: str, principal: str | None, error: str | None) -> None:
        with self._lock:
            self.exchanges.append((step, principal, error))


def _google_error(code: int, status: str, message: str) -> Response:
    return Response.json({"error": {"code": code, "message": message, "status": status}}, status=code)


class GcsFront(FakeServer):
    """fake-gcs-server at `target`, behind the bearer tokens of `tokens`: `grants` maps a bucket to
    the principals (service account emails or federated principals) allowed on it."""

    def __init__(self, target: str, tokens: GoogleTokenService) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.tokens = tokens
        self.grants: dict[str, set[str]] = {}
        #: (bucket, principal or None, HTTP status) of every request
        self.seen: list[tuple[str, str | None, int]] = []

    def handle(self, request: Request) -> Response:
        bucket = _bucket_of(request.path)
        auth = request.headers.get("authorization", "")
        caller = self.tokens.authorize(auth[7:]) if auth.startswith("Bearer ") else None
        if caller is None:
            self.seen.append((bucket, None, 401))
            return _google_error(401, "UNAUTHENTICATED", "Invalid Credentials")
        if caller.principal not in self.grants.get(bucket, set()):
            self.seen.append((bucket, caller.principal, 403))
            return _google_error(403, "PERMISSION_DENIED", f"{caller.principal} does not have storage.objects "
                                 f"access to the Google Cloud Storage bucket {bucket}.")
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length", "authorization")}
        query = urllib.parse.urlencode([(k, v) for k, vs in request.query.items() for v in vs])
        answer = requests.request(request.method, f"{self.target}{request.raw_path}" + (f"?{query}" if query else ""),
                                  data=request.body, headers=headers, timeout=30)
        self.seen.append((bucket, caller.principal, answer.status_code))
        passed = {k: v for k, v in answer.headers.items()
                  if k.lower() in ("content-type", "etag", "x-goog-hash", "x-goog-generation", "location")}
        return Response(answer.status_code, answer.content, passed)


def _bucket_of(path: str) -> str:
    """The bucket a JSON API path names (``/storage/v1/b/B/...``, ``/upload/storage/v1/b/B/o``,
    ``/download/storage/v1/b/B/o/...``)."""
    match = re.search(r"/b/([^/]+)", path)
    return urllib.parse.unquote(match.group(1)) if match else ""

