"""Cloud identity per FlowStorage, end to end: the real operator asks the real API server for
ServiceAccount tokens (TokenRequest) and exchanges them at STS (AssumeRoleWithWebIdentity as
AWS decides it, tests/fakes/aws_sts.py) for the role the ServiceAccount names; moto enforces IAM
on the bucket. Tenant A's FlowStorage writes with A's role; pointed at B's bucket it is denied;
a token for the wrong audience is refused; a FlowStorage with neither Secret nor ServiceAccount
may not act as the operator (whose own AWS keys are in its environment); an agent loads the flow
as its own ServiceAccount; a restarted operator asks for new tokens.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowstore import client
from tests.fakes.oidc import ClusterIssuer
from tests.helpers.aws_identity import EnforcingAws
from tests.helpers.kube import apply, condition, kubectl, wait_ready, wait_reason
from tests.helpers.manifests import flow_storage, inline_flow, manifests
from tests.helpers.operator import OperatorProcess


@pytest.fixture(scope="module")
def aws(kube_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnforcingAws]:
    cloud = EnforcingAws(tmp_path_factory.mktemp("aws"), ClusterIssuer.from_api_server()).start()
    yield cloud
    cloud.stop()


@pytest.fixture
def op(aws: EnforcingAws, crds: None, namespace: str, own_operators_only: None,
       tmp_path: Path) -> Iterator[OperatorProcess]:
    """An operator for this test's namespace, with STS at the front and its own AWS keys in its
    environment (moto's test keys: what the default chain would find)."""
    env = {**os.environ, "AWS_ENDPOINT_URL_STS": aws.sts_url, "AWS_ACCESS_KEY_ID": aws.admin[0],
           "AWS_SECRET_ACCESS_KEY": aws.admin[1]}
    process = OperatorProcess(tmp_path, env)
    process.start("--namespace", namespace)
    yield process
    kubectl("delete", "storedflows,flowstorages", "--all", "-n", namespace, "--wait=false", check=False)
    process.stop()


def s3_block(aws: EnforcingAws, bucket: str) -> dict[str, str]:
    return {"bucket": bucket, "endpointURL": aws.url, "region": "us-east-1"}


def test_a_team_stores_as_its_own_role_and_nowhere_else(aws: EnforcingAws, op: OperatorProcess, namespace: str,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket_a, bucket_b = f"a-{uuid.uuid4().hex[:10]}", f"b-{uuid.uuid4().hex[:10]}"
    role_a = aws.team(f"{namespace}-a", namespace, "team-a", bucket_a)
    aws.team(f"{namespace}-b", namespace, "team-b", bucket_b)
    kubectl("create", "serviceaccount", "team-a", "-n", namespace)
    kubectl("annotate", "serviceaccount", "team-a", "-n", namespace, f"eks.amazonaws.com/role-arn={role_a}")
    apply(manifests(flow_storage(namespace, "store", "s3", s3_block(aws, bucket_a), serviceAccountName="team-a")))
    apply(inline_flow(namespace, "etl", "etl daily", body="return 6 * 7"))
    flow = wait_ready(namespace, "etl", timeout=60)
    storage = wait_ready(namespace, "store", kind="flowstorage", timeout=30)
    assert "ServiceAccount" not in json.dumps(storage["status"].get("storage", {}))  # status: where, not who
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=bucket_a).get("Contents", [])]
    assert keys == [flow["status"]["location"]]
    decided = [(role, claims["sub"]) for role, claims, error in aws.sts.decisions if claims]  # type: ignore[union-attr]
    assert (role_a, f"system:serviceaccount:{namespace}:team-a") in decided

    # an agent (a worker Pod) loads it as its own ServiceAccount: a projected token file
    token_file = tmp_path / "token"
    token_file.write_text(kubectl("create", "token", "team-a", "-n", namespace, "--audience",
                                  "sts.amazonaws.com").stdout.strip())
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws.sts_url)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    loaded = client.load_flow("etl", namespace, identity={"tokenFile": str(token_file), "roleARN": role_a})
    assert loaded.run() == 42

    # the same FlowStorage pointed at B's bucket: A's role may not write there
    kubectl("patch", "flowstorage", "store", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"s3": {"bucket": bucket_b}}}))
    denied = wait_reason(namespace, "store", "AuthFailed", kind="flowstorage", timeout=60)
    message = condition(denied)["message"]
    assert role_a in message and f"ServiceAccount {namespace}/team-a" in message and bucket_b in message
    assert aws.client("s3").list_objects_v2(Bucket=bucket_b).get("KeyCount") == 0

    # a restarted operator re-uses nothing: it asks the API server for a new token
    kubectl("patch", "flowstorage", "store", "-n", namespace, "--type=merge", "-p",
            json.dumps({"spec": {"s3": {"bucket": bucket_a}}}))
    wait_ready(namespace, "store", kind="flowstorage", timeout=60)
    before = {claims["jti"] for _, claims, _ in aws.sts.decisions if claims}  # type: ignore[union-attr]
    op.restart()
    kubectl("annotate", "flowstorage", "store", "-n", namespace, f"flowstore.dev/requested-at={time.time()}",
            "--overwrite")
    deadline = time.monotonic() + 60
    while not {claims["jti"] for _, claims, _ in aws.sts.decisions if claims} - before:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, op.logs()
        time.sleep(0.5)
    wait_ready(namespace, "store", kind="flowstorage", timeout=60)
    assert op.alive(), op.logs()


def test_wrong_audience_missing_account_and_ambient_identity_are_refused(aws: EnforcingAws, op: OperatorProcess,
                                                                        namespace: str) -> None:
    bucket = f"a-{uuid.uuid4().hex[:10]}"
    role = aws.team(f"{namespace}-a", namespace, "team-a", bucket)
    kubectl("create", "serviceaccount", "team-a", "-n", namespace)
    kubectl("annotate", "serviceaccount", "team-a", "-n", namespace, f"eks.amazonaws.com/role-arn={role}",
            "eks.amazonaws.com/audience=vault")
    apply(manifests(
        flow_storage(namespace, "wrong-audience", "s3", s3_block(aws, bucket), serviceAccountName="team-a"),
        flow_storage(namespace, "no-account", "s3", s3_block(aws, bucket), serviceAccountName="nobody"),
        # neither Secret nor ServiceAccount: would act as the operator, whose env holds admin keys
        flow_storage(namespace, "ambient", "s3", s3_block(aws, bucket)),
    ))
    refused = wait_reason(namespace, "wrong-audience", "IdentityRejected", kind="flowstorage", timeout=60)
    assert "Incorrect token audience" in condition(refused)["message"]
    assert "vault" in condition(refused)["message"]
    missing = wait_reason(namespace, "no-account", "ServiceAccountNotFound", kind="flowstorage", timeout=60)
    assert condition(missing, "Stalled").get("status") == "True"
    ambient = wait_reason(namespace, "ambient", "AmbientIdentityNotAllowed", kind="flowstorage", timeout=60)
    assert condition(ambient, "Stalled").get("status") == "True"
    message = condition(ambient)["message"]
    assert "spec.serviceAccountName" in message and "--ambient-identity" in message
    assert aws.client("s3").list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert op.alive(), op.logs()
    # the admin's keys never reach a status or the log
    statuses = kubectl("get", "flowstorages", "-n", namespace, "-o", "json").stdout
    assert aws.admin[1] not in statuses and aws.admin[1] not in op.logs()
