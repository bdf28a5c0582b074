"""A contract fake of the Microsoft identity platform's token endpoint for workload identity:
the client-credentials grant with a client assertion (a Kubernetes ServiceAccount token).

``POST /{tenant}/oauth2/v2.0/token`` (form): ``grant_type=client_credentials``, ``client_id``,
``scope`` (``https://storage.azure.com/.default``), ``client_assertion_type=
urn:ietf:params:oauth:client-assertion-type:jwt-bearer``, ``client_assertion`` (the token). The
application must have a *federated identity credential* whose issuer, subject and audiences
(default ``api://AzureADTokenExchange``) match the assertion, which must be signed by the
issuer's keys and current. Answers ``{"token_type": "Bearer", "expires_in", "ext_expires_in",
"access_token"}``; errors HTTP 400/401 ``{"error": "invalid_client" | "invalid_request" |
"unauthorized_client" | "invalid_scope", "error_description": "AADSTS…", "error_codes": [...]}``.
https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow
(third case: access token request with a federated credential),
https://learn.microsoft.com/entra/workload-id/workload-identity-federation ,
https://learn.microsoft.com/entra/identity-platform/reference-error-codes

The access token is a JWT as Entra issues for Storage (v1: ``iss https://sts.windows.net/<tenant>/``,
``aud https://storage.azure.com``, ``appid``, ``oid``, ``tid``, ``iat``/``nbf``/``exp``), signed with
this fake's own key: Azurite's ``--oauth basic`` checks exactly those claims (not the signature).
azure-identity sends the request to ``AZURE_AUTHORITY_HOST`` (https only), so the fake serves HTTPS.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import urllib.parse
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.oidc import ClusterIssuer, TokenRefused

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
STORAGE_RESOURCE = "https://storage.azure.com"
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")


@dataclasses.dataclass(frozen=True)
class FederatedCredential:
    issuer: str
    subject: str
    audiences: tuple[str, ...] = (EXCHANGE_AUDIENCE,)


class EntraTokenEndpoint(FakeServer):
    """Applications (client ID -> tenant and federated credentials) and their tokens."""

    def __init__(self, issuer: ClusterIssuer, *, token_seconds: int = 3600) -> None:
        super().__init__()
        self.issuer = issuer
        self.token_seconds = token_seconds
        self.apps: dict[str, tuple[str, list[FederatedCredential]]] = {}
        #: (client ID, the assertion's subject or None, error or None) of every request
        self.requests_seen: list[tuple[str, str | None, str | None]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()

    def add_app(self, client_id: str, tenant_id: str, *credentials: FederatedCredential) -> None:
        self.apps[client_id] = (tenant_id, list(credentials))

    def handle(self, request: Request) -> Response:
        match = _TOKEN_PATH.fullmatch(request.path)
        if request.method != "POST" or not match:
            return Response.json({"error": "invalid_request", "error_description": "AADSTS900561: The endpoint "
                                  "only accepts POST requests."}, status=400)
        tenant = match.group(1)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode(), keep_blank_values=True).items()}
        client_id = form.get("client_id", "")

        def refuse(error: str, code: int, description: str, status: int = 400, subject: str | None = None) -> Response:
            with self._lock:
                self.requests_seen.append((client_id, subject, error))
            return Response.json({"error": error, "error_description": f"AADSTS{code}: {description}",
                                  "error_codes": [code]}, status=status)

        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return refuse("invalid_request", 7000218, "The request body must contain client_assertion or "
                          "client_secret.")
        if form.get("scope") != STORAGE_RESOURCE + "/.default":
            return refuse("invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} is not valid.")
        app = self.apps.get(client_id)
        if app is None or app[0] != tenant:
            return refuse("unauthorized_client", 700016, f"Application with identifier '{client_id}' was not found "
                          f"in the directory '{tenant}'.", status=400)
        assertion = form["client_assertion"]
        unverified = jwt.decode(assertion, options={"verify_signature": False})
        subject, iss = str(unverified.get("sub")), str(unverified.get("iss"))
        matching = [c for c in app[1] if c.issuer == iss and c.subject == subject]
        if not matching:
            return refuse("invalid_client", 700213, f"No matching federated identity record found for presented "
                          f"assertion subject '{subject}'.", status=401, subject=subject)
        try:
            self.issuer.verify(assertion, list(matching[0].audiences))
        except TokenRefused as exc:
            code = 700212 if "audience" in str(exc) else 700024
            return refuse("invalid_client", code, f"No matching federated identity record found for presented "
                          f"assertion audience, or the assertion is invalid ({exc}).", status=401, subject=subject)
        now = int(time.time())
        token = jwt.encode({"aud": STORAGE_RESOURCE, "iss": f"https://sts.windows.net/{tenant}/", "iat": now,
                            "nbf": now, "exp": now + self.token_seconds, "appid": client_id, "oid": str(uuid.uuid4()),
                            "tid": tenant, "sub": client_id, "ver": "1.0"}, self._key, algorithm="RS256")
        with self._lock:
            self.requests_seen.append((client_id, subject, None))
        return Response.json({"token_type": "Bearer", "expires_in": self.token_seconds,
                              "ext_expires_in": self.token_seconds, "access_token": token})
