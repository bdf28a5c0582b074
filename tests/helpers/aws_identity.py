"""AWS with IAM enforced, for IRSA-style tests: a moto server of its own (enforcement switched
on once the account is set up), the cluster's issuer registered as an IAM OIDC provider, and
STS's AssumeRoleWithWebIdentity decided as AWS does (tests/fakes/aws_sts.py) in front of it.

A team is a role whose trust policy names one ServiceAccount and whose policy reaches one
bucket: tenant A's role can write A's bucket and nothing of B's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import requests

from tests.fakes.aws_sts import StsWebIdentityFront
from tests.fakes.oidc import ClusterIssuer
from tests.helpers.net import free_port

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
AUDIENCE = "sts.amazonaws.com"


class EnforcingAws:
    """moto with IAM enforcement plus the STS front; ``url`` (S3, IAM) and ``sts_url``."""

    def __init__(self, log_dir: Path, issuer: ClusterIssuer) -> None:
        self.log_dir = log_dir
        self.issuer = issuer
        self.proc: subprocess.Popen[bytes] | None = None
        self.sts: StsWebIdentityFront | None = None
        self.admin: tuple[str, str] = ("", "")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sts_url(self) -> str:
        assert self.sts is not None
        return self.sts.url

    @property
    def provider_arn(self) -> str:
        return f"arn:aws:iam::{ACCOUNT}:oidc-provider/{self.issuer.host_path}"

    def start(self) -> EnforcingAws:
        self.port = free_port()
        moto = Path(sys.executable).parent / "moto_server"
        log = open(self.log_dir / "moto.log", "wb")
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/moto-api/", timeout=1)
                break
            except requests.RequestException:
                assert self.proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        # The account, while every call is still free: an administrator, the cluster's issuer.
        iam = boto3.client("iam", endpoint_url=self.url, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        self.admin = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.create_open_id_connect_provider(Url=self.issuer.issuer, ClientIDList=[AUDIENCE],
                                            ThumbprintList=["0" * 40])
        # From now on every request must be signed by someone IAM allows (moto's enforcement).
        requests.post(self.url + "/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        self.sts = StsWebIdentityFront(self.url, self.admin, self.issuer, REGION)
        self.sts.start()
        return self

    def client(self, service: str, credentials: tuple[str, str] | None = None) -> Any:
        key, secret = credentials or self.admin
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=key,
                            aws_secret_access_key=secret)

    def team(self, name: str, namespace: str, service_account: str, bucket: str) -> str:
        """A role for ``namespace/service_account`` that may use `bucket` (created): its ARN."""
        iam = self.client("iam")
        host = self.issuer.host_path
        trust = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": self.provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {f"{host}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                                           f"{host}:aud": AUDIENCE}}}]}
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(RoleName=name, PolicyName="flows", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
        self.client("s3").create_bucket(Bucket=bucket)
        return str(role["Arn"])

    def stop(self) -> None:
        if self.sts is not None:
            self.sts.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
