"""Who a storage acts as, decided without a server: identity settings (spec over annotations,
defaults per cloud), the ambient-identity policy, and the core's choice through the fake ports."""

from __future__ import annotations

from typing import Any

import pytest

from flowstore.api.constants import Reason
from flowstore.api.models import SpecError, StorageSpec
from flowstore.controller.identity import AmbientPolicy, operator_namespace
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.identity import resolve_identity
from flowstore.storage.errors import IdentityNotConfigured, IdentityUnavailable
from flowstore.storage.identity import FileTokenSource, gcp_audience, session_name, settings_for
from flowstore.workload import agent_identity
from tests.fakes.ports import FakeCluster

ROLE = "arn:aws:iam::123456789012:role/team-a"
PROVIDER = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s"


def settings(cloud: str, spec: dict[str, Any], annotations: dict[str, str]) -> dict[str, str]:
    return settings_for(cloud, spec, annotations, where="spec.x.identity", account="ServiceAccount ns/sa")


def test_the_spec_wins_over_annotations_and_audiences_default_per_cloud() -> None:
    annotations = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/other"}
    assert settings("aws", {"roleARN": ROLE}, annotations) == {"roleARN": ROLE, "audience": "sts.amazonaws.com"}
    annotated = {"eks.amazonaws.com/role-arn": ROLE, "eks.amazonaws.com/audience": "x"}
    assert settings("aws", {}, annotated)["audience"] == "x"
    gcp = settings("gcp", {}, {"flowstore.dev/gcp-workload-identity-provider": PROVIDER,
                               "iam.gke.io/gcp-service-account": "sa@p.iam.gserviceaccount.com"})
    assert gcp == {"workloadIdentityProvider": PROVIDER, "serviceAccountEmail": "sa@p.iam.gserviceaccount.com",
                   "audience": "https:" + PROVIDER}
    assert gcp_audience(PROVIDER) == "https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s"
    guid = "5e3b2c1a-0f4d-4e6a-9b7c-1d2e3f4a5b6c"
    azure = settings("azure", {"tenantID": "contoso.onmicrosoft.com"}, {"azure.workload.identity/client-id": guid})
    assert azure == {"clientID": guid, "tenantID": "contoso.onmicrosoft.com", "audience": "api://AzureADTokenExchange"}


@pytest.mark.parametrize(("cloud", "spec", "says"), [
    ("aws", {}, "eks.amazonaws.com/role-arn"),
    ("aws", {"roleARN": "team-a"}, "is not an IAM role ARN"),
    ("gcp", {}, "flowstore.dev/gcp-workload-identity-provider"),
    ("gcp", {"workloadIdentityProvider": "projects/1/pools/p"}, "is not a workload identity pool provider"),
    ("azure", {"tenantID": "t"}, "azure.workload.identity/client-id"),
    ("azure", {"clientID": "not-a-guid", "tenantID": "t"}, "is not a client ID"),
])
def test_missing_or_malformed_settings_say_where_to_put_them(cloud: str, spec: dict[str, Any], says: str) -> None:
    with pytest.raises(IdentityNotConfigured) as error:
        settings(cloud, spec, {})
    assert says in error.value.message and error.value.reason == Reason.IDENTITY_NOT_CONFIGURED


def test_ambient_policy() -> None:
    assert AmbientPolicy("own-namespace", "flowstore-system").refusal("flowstore-system") is None
    assert "only in its own namespace 'flowstore-system'" in str(AmbientPolicy("own-namespace", "flowstore-system")
                                                                  .refusal("team-a"))
    assert AmbientPolicy("own-namespace", None).refusal("team-a") is not None  # outside a cluster: nowhere
    assert AmbientPolicy("any").refusal("team-a") is None
    assert AmbientPolicy("none", "team-a").refusal("team-a") is not None
    assert operator_namespace("x", {"POD_NAMESPACE": "y"}) == "x"
    assert operator_namespace(None, {"POD_NAMESPACE": "y"}) == "y"


def storage(spec: dict[str, Any], name: str = "store") -> tuple[dict[str, Any], StorageSpec]:
    fs = {"metadata": {"name": name, "namespace": "team-a", "uid": "u"}, "spec": spec}
    return fs, StorageSpec.parse(spec)


def test_the_core_refuses_ambient_identity_where_the_policy_does() -> None:
    cluster = FakeCluster()
    cluster.ambient_refusal = "this operator lends its own identity to no FlowStorage"
    for spec in ({"s3": {"bucket": "flows"}}, {"gcs": {"bucket": "flows"}},
                 {"azure": {"container": "c", "accountURL": "https://a.blob.core.windows.net"}},
                 {"codecommit": {"repo": "r"}}):
        fs, parsed = storage(spec)
        with pytest.raises(ReconcileError) as refused:
            resolve_identity(cluster, "team-a", fs, parsed)
        failure = refused.value.failure
        assert failure.reason == Reason.AMBIENT_IDENTITY_NOT_ALLOWED and failure.stalled
        assert "spec.serviceAccountName" in failure.message and "--ambient-identity" in failure.message
    # not the operator's identity: a Secret, an anonymous emulator, a backend without a cloud identity
    for spec in ({"s3": {"bucket": "flows", "credentialsSecretRef": {"name": "k"}}},
                 {"gcs": {"bucket": "flows", "endpointURL": "http://127.0.0.1:1"}},
                 {"local": {"directory": "/flows"}}):
        fs, parsed = storage(spec)
        assert resolve_identity(cluster, "team-a", fs, parsed) is None


def test_the_core_resolves_a_service_account() -> None:
    cluster = FakeCluster()
    cluster.service_accounts["flows"] = {"eks.amazonaws.com/role-arn": ROLE}
    fs, parsed = storage({"serviceAccountName": "flows", "s3": {"bucket": "flows"}}, name="team-s3")
    identity = resolve_identity(cluster, "team-a", fs, parsed)
    assert identity is not None and identity.role_arn == ROLE and identity.cloud == "aws"
    assert identity.session_name == session_name("team-a", "team-s3") == "flowstore.team-a.team-s3"
    assert identity.token_subject == "system:serviceaccount:team-a:flows"
    fs, parsed = storage({"serviceAccountName": "nobody", "s3": {"bucket": "flows"}})
    with pytest.raises(ReconcileError) as missing:
        resolve_identity(cluster, "team-a", fs, parsed)
    assert missing.value.failure.reason == Reason.SERVICE_ACCOUNT_NOT_FOUND
    fs, parsed = storage({"serviceAccountName": "flows", "local": {"directory": "/flows"}})
    with pytest.raises(SpecError):
        resolve_identity(cluster, "team-a", fs, parsed)
    with pytest.raises(SpecError):
        StorageSpec.parse({"serviceAccountName": "flows", "s3": {"bucket": "f", "credentialsSecretRef": {"name": "k"}}})


def test_an_agent_identity_comes_from_its_options_and_pod_environment(tmp_path: Any) -> None:
    import base64
    import json

    claims = base64.urlsafe_b64encode(json.dumps({"sub": "system:serviceaccount:team-a:worker"}).encode()).decode()
    token = tmp_path / "token"
    token.write_text(f"e30.{claims.rstrip('=')}.sig")
    env = {"AWS_ROLE_ARN": ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE": str(token)}
    identity = agent_identity("S3", {}, env)
    assert identity is not None and identity.role_arn == ROLE
    assert identity.token_subject == "system:serviceaccount:team-a:worker"
    assert agent_identity("S3", None, env) is None  # not asked: the SDK's default chain
    assert agent_identity("Local", {}, env) is None
    with pytest.raises(IdentityNotConfigured):
        agent_identity("S3", {}, {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token)})
    with pytest.raises(IdentityUnavailable):
        FileTokenSource(str(tmp_path / "missing")).token()
