"""Workload identity against real servers: the local API server issues the ServiceAccount tokens
(TokenRequest, through the operator's own token cache), and each cloud's exchange is answered as
the cloud documents it:

- AWS: moto with IAM enforced, behind STS's AssumeRoleWithWebIdentity checks (tests/fakes/aws_sts.py);
- Google: STS token exchange + IAM Credentials (tests/fakes/google_sts.py), fake-gcs-server behind
  a front that takes only the access tokens those issued;
- Azure: the Microsoft identity platform's client-assertion grant (tests/fakes/entra_id.py),
  Azurite over HTTPS with ``--oauth basic``.

Each: a team's storage writes and reads with its own identity; the same storage on another
team's bucket is denied (AuthFailed, naming the identity); a token for the wrong audience is
refused (IdentityRejected); the fakes see exactly the exchange the SDK makes; credentials are
renewed before they expire with no request failing.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from flowstore.controller.identity import ServiceAccountTokens, workload_identity
from flowstore.storage import GCS, S3, Azure
from flowstore.storage.errors import AuthFailed, IdentityRejected
from flowstore.storage.identity import GCP_IAM_CREDENTIALS_URL_ENV, GCP_STS_URL_ENV, WorkloadIdentity
from tests.fakes.entra_id import EntraTokenEndpoint, FederatedCredential
from tests.fakes.google_sts import GcsFront, GoogleTokenService
from tests.fakes.oidc import ClusterIssuer
from tests.helpers.aws_identity import EnforcingAws
from tests.helpers.azurite_oauth import HttpsAzurite
from tests.helpers.kube import kubectl
from tests.helpers.tls_certs import Authority


class Clock:
    """The operator's and botocore's notion of now, moved by the test."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


@pytest.fixture(scope="module")
def issuer(kube_env: dict[str, str]) -> ClusterIssuer:
    return ClusterIssuer.from_api_server()


@pytest.fixture(scope="module")
def core(kube_env: dict[str, str]) -> k8s.CoreV1Api:
    from kubernetes import config

    # the admin's kubeconfig, named explicitly: the client read $KUBECONFIG when first imported
    return k8s.CoreV1Api(config.new_client_from_config(config_file=kube_env["KUBECONFIG"]))


@pytest.fixture
def team_ns(kube_env: dict[str, str]) -> Iterator[str]:
    name = f"id-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    for account in ("team-a", "team-b"):
        kubectl("create", "serviceaccount", account, "-n", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def identity(core: k8s.CoreV1Api, tokens: ServiceAccountTokens, namespace: str, account: str, cloud: str,
             **settings: Any) -> WorkloadIdentity:
    return workload_identity(core, tokens, namespace, account, cloud, settings, where="spec.x.identity",
                             session_name=f"flowstore.{namespace}.test")


# ---------------------------------------------------------------------- AWS
@pytest.fixture(scope="module")
def aws(issuer: ClusterIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcingAws]:
    cloud = EnforcingAws(tmp_path_factory.mktemp("aws"), issuer).start()
    yield cloud
    cloud.stop()


def test_aws_team_writes_with_its_role_and_is_denied_elsewhere(aws: EnforcingAws, core: k8s.CoreV1Api, team_ns: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.sts_url)
    bucket_a, bucket_b = f"a-{team_ns}", f"b-{team_ns}"
    role_a = aws.team(f"{team_ns}-a", team_ns, "team-a", bucket_a)
    aws.team(f"{team_ns}-b", team_ns, "team-b", bucket_b)
    tokens = ServiceAccountTokens(core)
    as_a = identity(core, tokens, team_ns, "team-a", "aws", roleARN=role_a)

    storage = S3(bucket=bucket_a, endpoint_url=aws.url, region="us-east-1", identity=as_a)
    storage.check_container()
    stored = storage.put_bytes("flows/etl", b"flow bytes")
    assert storage.get_bytes(stored.location) == b"flow bytes"
    role, claims, error = aws.sts.decisions[-1]  # type: ignore[union-attr]
    assert (role, error) == (role_a, None)
    assert claims is not None and claims["sub"] == f"system:serviceaccount:{team_ns}:team-a"
    assert claims["aud"] == ["sts.amazonaws.com"]

    # the same identity on B's bucket: denied by B's bucket being outside A's role
    with pytest.raises(AuthFailed) as denied:
        S3(bucket=bucket_b, endpoint_url=aws.url, region="us-east-1", identity=as_a).put_bytes("x", b"y")
    assert not isinstance(denied.value, IdentityRejected)
    assert role_a in denied.value.message and f"ServiceAccount {team_ns}/team-a" in denied.value.message
    assert aws.client("s3").list_objects_v2(Bucket=bucket_b).get("KeyCount") == 0

    # B's account cannot assume A's role: A's trust policy names team-a only
    as_b_on_a = identity(core, tokens, team_ns, "team-b", "aws", roleARN=role_a)
    with pytest.raises(IdentityRejected) as refused:
        S3(bucket=bucket_a, endpoint_url=aws.url, region="us-east-1", identity=as_b_on_a).check_container()
    assert "AccessDenied" in refused.value.message
    assert f"system:serviceaccount:{team_ns}:team-b" in refused.value.message


def test_aws_token_for_the_wrong_audience_is_refused(aws: EnforcingAws, core: k8s.CoreV1Api, team_ns: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.sts_url)
    role = aws.team(f"{team_ns}-a", team_ns, "team-a", f"a-{team_ns}")
    kubectl("annotate", "serviceaccount", "team-a", "-n", team_ns, f"eks.amazonaws.com/role-arn={role}",
            "eks.amazonaws.com/audience=vault")
    wrong = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "aws")  # all from the annotations
    assert (wrong.role_arn, wrong.audience) == (role, "vault")
    with pytest.raises(IdentityRejected) as refused:
        S3(bucket=f"a-{team_ns}", endpoint_url=aws.url, region="us-east-1", identity=wrong).check_container()
    assert "Incorrect token audience" in refused.value.message
    assert aws.sts.decisions[-1][2] == "InvalidIdentityToken"  # type: ignore[union-attr]


def test_aws_credentials_and_tokens_are_renewed_before_they_expire(aws: EnforcingAws, core: k8s.CoreV1Api,
                                                                   team_ns: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.sts_url)
    role = aws.team(f"{team_ns}-a", team_ns, "team-a", f"a-{team_ns}")
    clock = Clock()
    monkeypatch.setattr(aws.sts, "clock", clock)  # STS's clock too: its credentials expire an hour after its now
    tokens = ServiceAccountTokens(core, clock=clock)
    storage = S3(bucket=f"a-{team_ns}", endpoint_url=aws.url, region="us-east-1",
                 identity=identity(core, tokens, team_ns, "team-a", "aws", roleARN=role))
    before = len(aws.sts.decisions)  # type: ignore[union-attr]
    for minute in range(0, 130, 10):  # two hours of requests, ten minutes apart
        clock.offset = dt.timedelta(minutes=minute)
        storage.put_bytes(f"flows/{minute}", b"x")
    decisions = aws.sts.decisions[before:]  # type: ignore[union-attr]
    assert [error for _, _, error in decisions] == [None] * len(decisions)  # no exchange ever refused
    # one-hour STS credentials renewed 15 minutes ahead: at 0, 50 and 100 minutes
    assert len(decisions) == 3
    # tokens (one hour) renewed at 80% of their life: a new one for each exchange after the first
    assert tokens.requests == 3
    assert len({claims["jti"] for _, claims, _ in decisions if claims}) == 3  # three different tokens


# ---------------------------------------------------------------------- Google
PROVIDER = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/k8s/providers/local"


@pytest.fixture
def google(issuer: ClusterIssuer, gcs_endpoint: str,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[GoogleTokenService, GcsFront]]:
    service = GoogleTokenService(issuer, token_seconds=3600)
    service.add_provider(PROVIDER)
    front = GcsFront(gcs_endpoint, service)
    with service, front:
        monkeypatch.setenv(GCP_STS_URL_ENV, service.url + "/v1/token")
        monkeypatch.setenv(GCP_IAM_CREDENTIALS_URL_ENV, service.url)
        yield service, front


def gcs_bucket(endpoint: str) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_sdk

    name = f"flows-{uuid.uuid4().hex[:12]}"
    gcs_sdk.Client(project="flowstore", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                   client_options={"api_endpoint": endpoint}).create_bucket(name)
    return name


def test_gcs_federation_then_impersonation_writes_as_the_team(google: tuple[GoogleTokenService, GcsFront],
                                                              gcs_endpoint: str, core: k8s.CoreV1Api,
                                                              team_ns: str) -> None:
    service, front = google
    bucket_a, bucket_b = gcs_bucket(gcs_endpoint), gcs_bucket(gcs_endpoint)
    email = "team-a@flows.iam.gserviceaccount.com"
    service.allow(email, service.principal(PROVIDER, f"system:serviceaccount:{team_ns}:team-a"))
    front.grants[bucket_a] = {email}
    as_a = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "gcp", workloadIdentityProvider=PROVIDER,
                    serviceAccountEmail=email)
    storage = GCS(bucket=bucket_a, endpoint_url=front.url, identity=as_a)
    storage.check_container()
    stored = storage.put_bytes("flows/etl", b"flow bytes")
    assert storage.get_bytes(stored.location) == b"flow bytes"

    # the exact exchange google-auth made: RFC 8693 at STS, then generateAccessToken
    sts = next(r for r in service.log if r.path == "/v1/token")
    form = {k: v[0] for k, v in urllib.parse.parse_qs(sts.body.decode()).items()}
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["audience"] == PROVIDER
    assert form["requested_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert form["scope"] == "https://www.googleapis.com/auth/iam"  # enough to impersonate, nothing else
    assert service.issuer.verify(form["subject_token"], ["https:" + PROVIDER])["sub"] == \
        f"system:serviceaccount:{team_ns}:team-a"
    generate = next(r for r in service.log if r.path.endswith(":generateAccessToken"))
    assert generate.path == f"/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
    assert generate.headers["authorization"].startswith("Bearer ya29.fake-")
    assert "https://www.googleapis.com/auth/devstorage.read_write" in generate.json()["scope"]
    assert [e for e in service.exchanges if e[2]] == []
    assert {(b, p) for b, p, status in front.seen if status < 300} == {(bucket_a, email)}

    with pytest.raises(AuthFailed) as denied:  # the same identity on B's bucket
        GCS(bucket=bucket_b, endpoint_url=front.url, identity=as_a).put_bytes("x", b"y")
    assert not isinstance(denied.value, IdentityRejected) and email in denied.value.message

    as_b = identity(core, ServiceAccountTokens(core), team_ns, "team-b", "gcp", workloadIdentityProvider=PROVIDER,
                    serviceAccountEmail=email)  # B may not impersonate A's service account
    with pytest.raises(IdentityRejected):
        GCS(bucket=bucket_a, endpoint_url=front.url, identity=as_b).check_container()
    assert service.exchanges[-1][2] == "PERMISSION_DENIED"


def test_gcs_direct_federated_access_and_the_wrong_audience(google: tuple[GoogleTokenService, GcsFront],
                                                           gcs_endpoint: str, core: k8s.CoreV1Api,
                                                           team_ns: str) -> None:
    service, front = google
    bucket = gcs_bucket(gcs_endpoint)
    principal = service.principal(PROVIDER, f"system:serviceaccount:{team_ns}:team-a")
    front.grants[bucket] = {principal}
    kubectl("annotate", "serviceaccount", "team-a", "-n", team_ns,
            f"flowstore.dev/gcp-workload-identity-provider={PROVIDER}")
    direct = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "gcp")  # no service account: direct
    assert direct.service_account_email is None
    GCS(bucket=bucket, endpoint_url=front.url, identity=direct).put_bytes("flows/a", b"direct")
    assert not [r for r in service.log if r.path.endswith(":generateAccessToken")]

    wrong = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "gcp", audience="api://elsewhere")
    with pytest.raises(IdentityRejected) as refused:
        GCS(bucket=bucket, endpoint_url=front.url, identity=wrong).check_container()
    assert "audience" in refused.value.message
    assert service.exchanges[-1] == ("sts", None, "invalid_grant")


def test_gcs_tokens_are_renewed_before_they_expire(issuer: ClusterIssuer, google: tuple[GoogleTokenService, GcsFront],
                                                   gcs_endpoint: str, core: k8s.CoreV1Api, team_ns: str) -> None:
    import time

    service, front = google
    service.token_seconds = 228  # google-auth refreshes when under 3m45s (225 s) are left
    bucket = gcs_bucket(gcs_endpoint)
    email = "team-a@flows.iam.gserviceaccount.com"
    service.allow(email, service.principal(PROVIDER, f"system:serviceaccount:{team_ns}:team-a"))
    front.grants[bucket] = {email}
    storage = GCS(bucket=bucket, endpoint_url=front.url,
                  identity=identity(core, ServiceAccountTokens(core), team_ns, "team-a", "gcp",
                                    workloadIdentityProvider=PROVIDER, serviceAccountEmail=email))
    for i in range(4):  # 4 s apart: each access token is stale after 3 s
        storage.put_bytes(f"flows/{i}", b"x")
        time.sleep(4)
    assert [status for _, _, status in front.seen if status >= 300] == []  # no request failed
    assert [e for e in service.exchanges if e[2]] == []
    assert len([e for e in service.exchanges if e[0] == "iam"]) >= 4  # a new token before each write


# ---------------------------------------------------------------------- Azure
CLIENT_ID = "5e3b2c1a-0f4d-4e6a-9b7c-1d2e3f4a5b6c"
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture
def azure(issuer: ClusterIssuer, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EntraTokenEndpoint, HttpsAzurite]]:
    import ssl

    authority = Authority.create()
    ca = tmp_path / "ca.pem"
    ca.write_text(authority.cert_pem)
    entra = EntraTokenEndpoint(issuer)
    pem = authority.issue("127.0.0.1", server=True)
    (tmp_path / "entra.pem").write_text(pem.cert + pem.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "entra.pem")
    entra.tls = context
    azurite = HttpsAzurite(tmp_path, authority).start()
    with entra:
        monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        yield entra, azurite
    azurite.stop()


def azure_container(azurite: HttpsAzurite) -> str:
    from azure.storage.blob import BlobServiceClient

    name = f"flows-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(name)
    return name


def test_azure_client_assertion_writes_as_the_team(azure: tuple[EntraTokenEndpoint, HttpsAzurite],
                                                   core: k8s.CoreV1Api, issuer: ClusterIssuer, team_ns: str) -> None:
    entra, azurite = azure
    container = azure_container(azurite)
    entra.add_app(CLIENT_ID, TENANT_ID, FederatedCredential(issuer.issuer, f"system:serviceaccount:{team_ns}:team-a"))
    kubectl("annotate", "serviceaccount", "team-a", "-n", team_ns, f"azure.workload.identity/client-id={CLIENT_ID}",
            f"azure.workload.identity/tenant-id={TENANT_ID}")
    as_a = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "azure")
    storage = Azure(container=container, account_url=azurite.account_url, identity=as_a)
    storage.check_container()
    stored = storage.put_bytes("flows/etl", b"flow bytes")
    assert storage.get_bytes(stored.location) == b"flow bytes"

    # the exact request azure-identity made: client credentials with the token as assertion
    (request,) = [r for r in entra.log if r.method == "POST"]
    assert request.path == f"/{TENANT_ID}/oauth2/v2.0/token"
    form = {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode()).items()}
    assert form["grant_type"] == "client_credentials" and form["client_id"] == CLIENT_ID
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert form["scope"] == "https://storage.azure.com/.default"
    assert issuer.verify(form["client_assertion"], ["api://AzureADTokenExchange"])["sub"] == \
        f"system:serviceaccount:{team_ns}:team-a"

    # team-b has no federated credential on the application: refused, and nothing reaches Azurite
    as_b = identity(core, ServiceAccountTokens(core), team_ns, "team-b", "azure", clientID=CLIENT_ID,
                    tenantID=TENANT_ID)
    with pytest.raises(IdentityRejected) as refused:
        Azure(container=container, account_url=azurite.account_url, identity=as_b).check_container()
    assert "AADSTS700213" in refused.value.message
    wrong = identity(core, ServiceAccountTokens(core), team_ns, "team-a", "azure", audience="api://elsewhere")
    with pytest.raises(IdentityRejected) as refused:
        Azure(container=container, account_url=azurite.account_url, identity=wrong).check_container()
    assert "audience" in refused.value.message


def test_azure_tokens_are_renewed_before_they_expire(azure: tuple[EntraTokenEndpoint, HttpsAzurite],
                                                     core: k8s.CoreV1Api, issuer: ClusterIssuer, team_ns: str) -> None:
    import time

    entra, azurite = azure
    # azure-core asks for a new token 300 s (less up to 60 s of jitter) before expiry, and
    # azure-identity requests one at most every 30 s while the old one is valid
    entra.token_seconds = 305
    container = azure_container(azurite)
    entra.add_app(CLIENT_ID, TENANT_ID, FederatedCredential(issuer.issuer, f"system:serviceaccount:{team_ns}:team-a"))
    storage = Azure(container=container, account_url=azurite.account_url,
                    identity=identity(core, ServiceAccountTokens(core), team_ns, "team-a", "azure",
                                      clientID=CLIENT_ID, tenantID=TENANT_ID))
    for i in range(6):  # 75 s of writes: past the latest renewal (65 s), well before expiry (305 s)
        storage.put_bytes(f"flows/{i}", b"x")
        time.sleep(15 if i < 5 else 0)
    assert [seen for seen in entra.requests_seen if seen[2]] == []  # none refused
    assert len(entra.requests_seen) >= 2  # renewed while still valid: every write above succeeded
