"""Artifact signing end to end: the operator signs, agents with the key verify before loading."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import boto3
import pytest

from flowstore import client
from flowstore.artifacts.signing import SignatureError, sign
from tests.helpers.kube import apply, kubectl, wait_for, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.operator import OperatorProcess

KEY = "k3y-for-signing-flows-0123456789"


def signed_storage(namespace: str, bucket: str, endpoint: str) -> str:
    return s3_storage(namespace, bucket, endpoint, signing={"secretRef": {"name": "signing"}}) + f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: signing, namespace: {namespace}, labels: {{flowstore.dev/allow: "true"}}}}
stringData: {{FLOWSTORE_SIGNING_KEY: {KEY}}}
"""


def test_signed_artifacts_load_only_with_a_valid_signature(operator: OperatorProcess, namespace: str,
                                                           s3_bucket: str, s3_endpoint: str) -> None:
    apply(signed_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl"))
    status = wait_ready(namespace, "etl")["status"]
    artifact = status["artifact"]
    assert artifact["signature"] == sign(KEY.encode(), "etl", artifact["digest"])
    assert KEY not in json.dumps(status) and KEY not in operator.logs()

    assert client.load_flow("etl", namespace, signing_key=KEY).run() == 42
    with pytest.raises(SignatureError, match="does not match"):
        client.load_flow("etl", namespace, signing_key="another-key-0123456789")

    # Someone with write access to the bucket and the StoredFlow's status swaps the flow and
    # fixes up the digest: the digest check passes, the signature does not.
    evil = b'{"flow": "", "versions": {}}'
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key=status["location"], Body=evil)
    patch = {"status": {"artifact": {**artifact, "digest": "sha256:" + hashlib.sha256(evil).hexdigest(),
                                     "size": len(evil)}}}
    kubectl("patch", "storedflow", "etl", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(patch))
    with pytest.raises(SignatureError, match="does not match"):
        client.load_flow("etl", namespace, signing_key=KEY)
    cli = subprocess.run([sys.executable, "-m", "flowstore.cli", "run", "etl", "-n", namespace],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "FLOWSTORE_SIGNING_KEY": KEY})
    assert cli.returncode == 1 and "signature does not match" in cli.stderr


def test_unsigned_artifacts_are_refused_by_agents_that_require_signatures(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "plain", "plain"))
    assert "signature" not in wait_ready(namespace, "plain")["status"]["artifact"]
    assert client.load_flow("plain", namespace).run() == 42  # no key: digest check only
    with pytest.raises(SignatureError, match="not signed"):
        client.load_flow("plain", namespace, signing_key=KEY)

    # Turning signing on re-signs: the flow is stored again, now with a signature.
    apply(signed_storage(namespace, s3_bucket, s3_endpoint))
    signed = wait_for("storedflow", namespace, "plain",
                      lambda o: "signature" in ((o.get("status") or {}).get("artifact") or {}))
    assert client.load_flow("plain", namespace, signing_key=KEY).run() == 42
    assert signed["status"]["location"] != ""
