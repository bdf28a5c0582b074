"""AWS STS ``AssumeRoleWithWebIdentity`` as AWS decides it, in front of moto.

moto (5.2.6) answers AssumeRoleWithWebIdentity for any token at all, and with IAM enforcement on
it crashes on the call (it is unsigned: ``KeyError: 'HTTP_AUTHORIZATION'`` in
moto/iam/access_control.py); no moto release fixes either. So this front does what STS does
before it issues credentials, reading the account's IAM state from moto itself, and then has
moto issue them (the call re-signed with an administrator's key, so moto's enforcement lets it
through); every other STS call passes through unchanged. What STS checks, from
https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html and
https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_providers_oidc.html :

- the token's ``iss`` names an IAM OIDC provider of the account (else ``InvalidIdentityToken``:
  "No OpenIDConnect provider found in your account for …");
- the token is signed by the issuer's keys, current (``ExpiredTokenException``), and its ``aud``
  is one of the provider's client IDs (``InvalidIdentityToken``: "Incorrect token audience");
- the role's trust policy allows ``sts:AssumeRoleWithWebIdentity`` for
  ``Principal: {Federated: <provider ARN>}`` under its conditions on ``<issuer>:sub`` and
  ``<issuer>:aud`` (``StringEquals``, ``StringLike``), and no statement denies it (else
  ``AccessDenied``, HTTP 403: "Not authorized to perform sts:AssumeRoleWithWebIdentity").
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_iam-condition-keys.html#condition-keys-wif

The wire protocol is the AWS Query protocol: ``POST /`` with a form body (``Action``,
``Version=2011-06-15``, ``RoleArn``, ``RoleSessionName``, ``WebIdentityToken``, ...); errors are
``<ErrorResponse><Error><Type>Sender</Type><Code>…</Code><Message>…</Message></Error>…``.
https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import escape

import boto3
import jwt
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes.base import FakeServer, Request, Response
from tests.fakes.oidc import ClusterIssuer, TokenRefused

ACTION = "AssumeRoleWithWebIdentity"


class StsWebIdentityFront(FakeServer):
    """STS at :attr:`url`, deciding AssumeRoleWithWebIdentity by the IAM state of the moto at
    `moto_url` (whose administrator key is `admin`), trusting tokens of `issuer`."""

    def __init__(self, moto_url: str, admin: tuple[str, str], issuer: ClusterIssuer, region: str = "us-east-1",
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        super().__init__()
        #: the front's "now": credentials expire DurationSeconds (default 3600) after it, so a
        #: test that moves the clock moves STS's too (moto's own Expiration is wall-clock time)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.moto_url = moto_url.rstrip("/")
        self.admin = Credentials(*admin)
        self.issuer = issuer
        self.region = region
        self.iam = boto3.client("iam", endpoint_url=self.moto_url, region_name=region,
                                aws_access_key_id=admin[0], aws_secret_access_key=admin[1])
        #: every AssumeRoleWithWebIdentity decided: (role ARN, the token's claims or None, error code or None)
        self.decisions: list[tuple[str, dict[str, Any] | None, str | None]] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Response:
        form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode(), keep_blank_values=True).items()}
        if form.get("Action") != ACTION:
            return self._pass_through(request)
        role_arn = form.get("RoleArn", "")
        try:
            claims = self._decide(role_arn, form.get("WebIdentityToken", ""))
        except _StsError as exc:
            with self._lock:
                self.decisions.append((role_arn, None, exc.code))
            return _error(exc.code, str(exc), exc.status)
        with self._lock:
            self.decisions.append((role_arn, claims, None))
        seconds = int(form.get("DurationSeconds") or 3600)
        return self._issue(request.body, self.clock() + dt.timedelta(seconds=seconds))

    # ------------------------------------------------------------------ what STS decides
    def _decide(self, role_arn: str, token: str) -> dict[str, Any]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _StsError("InvalidIdentityToken", "Couldn't parse the web identity token") from None
        issuer = str(unverified.get("iss") or "")
        provider = self._provider(issuer)
        try:
            claims = self.issuer.verify(token, provider["ClientIDList"])
        except TokenRefused as exc:
            raise _StsError(exc.code, str(exc)) from None
        try:
            role = self.iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]
        except self.iam.exceptions.NoSuchEntityException:
            raise _StsError("AccessDenied", f"Not authorized to perform sts:{ACTION}", 403) from None
        if role["Arn"] != role_arn:
            raise _StsError("AccessDenied", f"Not authorized to perform sts:{ACTION}", 403)
        host = issuer.split("://", 1)[-1].rstrip("/")
        context = {f"{host}:sub": str(claims.get("sub")), f"{host}:aud": _first(claims.get("aud"))}
        if not _trusts(role["AssumeRolePolicyDocument"], provider["Arn"], context):
            raise _StsError("AccessDenied", f"Not authorized to perform sts:{ACTION}", 403)
        return claims

    def _provider(self, issuer: str) -> dict[str, Any]:
        host = issuer.split("://", 1)[-1].rstrip("/")
        for entry in self.iam.list_open_id_connect_providers()["OpenIDConnectProviderList"]:
            arn = entry["Arn"]
            if arn.endswith(":oidc-provider/" + host):
                provider = self.iam.get_open_id_connect_provider(OpenIDConnectProviderArn=arn)
                return {"Arn": arn, "ClientIDList": list(provider.get("ClientIDList") or [])}
        raise _StsError("InvalidIdentityToken", f"No OpenIDConnect provider found in your account for {issuer}")

    # ------------------------------------------------------------------ moto issues, or answers
    def _issue(self, body: bytes, expires: dt.datetime) -> Response:
        """The same call, signed by the administrator, answered by moto (its credentials are real
        to moto's S3 and IAM enforcement: the assumed role's policies apply)."""
        request = AWSRequest(method="POST", url=self.moto_url + "/", data=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        SigV4Auth(self.admin, "sts", self.region).add_auth(request)
        answer = requests.post(self.moto_url + "/", data=body, headers=dict(request.headers.items()), timeout=30)
        content = answer.content
        if answer.status_code == 200:
            stamp = expires.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            content = re.sub(rb"<Expiration>[^<]*</Expiration>", f"<Expiration>{stamp}</Expiration>".encode(), content)
        return Response(answer.status_code, content, {"Content-Type": answer.headers.get("Content-Type", "text/xml")})

    def _pass_through(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        answer = requests.request(request.method, self.moto_url + request.raw_path, data=request.body,
                                  headers=headers, timeout=30)
        return Response(answer.status_code, answer.content,
                        {"Content-Type": answer.headers.get("Content-Type", "text/xml")})


class _StsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _error(code: str, message: str, status: int) -> Response:
    body = (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return Response(status, body.encode(), {"Content-Type": "text/xml"})


def _first(value: Any) -> str:
    return str(value[0]) if isinstance(value, list) and value else str(value or "")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _trusts(policy: Mapping[str, Any], provider_arn: str, context: Mapping[str, str]) -> bool:
    """IAM's evaluation of a trust policy for this federated principal and action: an explicit
    Deny wins, else some Allow must match (action, principal, every condition)."""
    allowed = False
    for statement in _as_list(policy.get("Statement") or []):
        actions = [str(a) for a in _as_list(statement.get("Action") or [])]
        if not any(fnmatch.fnmatchcase(f"sts:{ACTION}", a) for a in actions):
            continue
        principal = statement.get("Principal") or {}
        federated = _as_list(principal.get("Federated") or []) if isinstance(principal, Mapping) else []
        if principal != "*" and provider_arn not in federated:
            continue
        if not _conditions_hold(statement.get("Condition") or {}, context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            actual = context.get(key)
            if actual is None:
                return False
            values = [str(v) for v in _as_list(expected)]
            if operator == "StringEquals" and actual not in values:
                return False
            if operator == "StringLike" and not any(fnmatch.fnmatchcase(actual, v) for v in values):
                return False
            if operator not in ("StringEquals", "StringLike"):
                return False  # an operator this front does not know never grants
    return True
