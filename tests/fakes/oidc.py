"""What every cloud's token service does first with a Kubernetes ServiceAccount token: verify it
against the issuer the cloud was told to trust (an IAM OIDC provider, a workload identity pool
provider, a federated identity credential).

The cluster is an OpenID Connect issuer (KEP-1393, "Service Account Issuer Discovery"): its
``/.well-known/openid-configuration`` names the issuer and ``/openid/v1/jwks`` serves the public
keys tokens are signed with (RS256). The clouds fetch those from the issuer URL; the local API
server's issuer URL (https://kubernetes.default.svc.cluster.local) resolves nowhere, so the
fakes are handed the same two documents, read from the real API server, as a cloud is when an
administrator uploads the JWKS (GCP pools accept a JWKS file; Entra ID and AWS fetch it).
https://kubernetes.io/docs/tasks/configure-pod-container/configure-service-account/#service-account-issuer-discovery
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jwt

from tests.helpers.kube import kubectl


class TokenRefused(Exception):
    """The token is not one the issuer signed for this audience, or it has expired; `code` is
    the cloud's error code, the message its description."""

    def __init__(self, message: str, code: str = "InvalidIdentityToken") -> None:
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class ClusterIssuer:
    """The local API server as an OIDC issuer: its issuer URL and signing keys."""

    issuer: str
    jwks: dict[str, Any]

    @classmethod
    def from_api_server(cls) -> ClusterIssuer:
        config = json.loads(kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
        jwks = json.loads(kubectl("get", "--raw", "/openid/v1/jwks").stdout)
        return cls(issuer=str(config["issuer"]), jwks=jwks)

    @property
    def host_path(self) -> str:
        """The issuer without its scheme, as AWS names OIDC providers and condition keys."""
        return self.issuer.split("://", 1)[-1].rstrip("/")

    def verify(self, token: str, audiences: list[str] | str) -> dict[str, Any]:
        """The claims of `token` if the issuer signed it (RS256, a key of the JWKS), it is for one
        of `audiences` and current; TokenRefused otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the token is not a JWT ({exc})") from None
        keys = {k.get("kid"): k for k in self.jwks.get("keys", [])}
        if header.get("alg") != "RS256" or header.get("kid") not in keys:
            raise TokenRefused("the token is not signed by a key of the trusted issuer")
        key = jwt.PyJWK(keys[header["kid"]]).key
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience=audiences,
                                                issuer=self.issuer, options={"require": ["exp", "iat", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired", code="ExpiredTokenException") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("Incorrect token audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("the token's issuer is not trusted") from None
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"the token is invalid ({type(exc).__name__})") from None
        return claims
