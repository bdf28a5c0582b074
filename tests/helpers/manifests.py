"""Manifests the e2e tests apply: an S3 FlowStorage with its Secret, an inline StoredFlow."""

from __future__ import annotations

import json
from typing import Any


def s3_storage(namespace: str, bucket: str, endpoint: str, name: str = "store", key_prefix: str | None = None,
               **spec: Any) -> str:
    """Manifest of an S3 FlowStorage with a credentials Secret (moto's test keys)."""
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in spec.items())
    prefix = f"    keyPrefix: {key_prefix}\n" if key_prefix else ""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}-creds, namespace: {namespace}}}
stringData: {{AWS_ACCESS_KEY_ID: testing, AWS_SECRET_ACCESS_KEY: testing}}
---
apiVersion: flowstore.dev/v1alpha1
kind: FlowStorage
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  s3:
    bucket: {bucket}
    endpointURL: {endpoint}
    region: us-east-1
    credentialsSecretRef: {{name: {name}-creds}}
{prefix}{extra}"""


def inline_flow(namespace: str, name: str, flow_name: str, body: str = "return 42", storage: str = "store",
                **spec: Any) -> str:
    script = f"from flowstore.flow import Flow\n\ndef main():\n    {body}\n\nflow = Flow({flow_name!r}, main)\n"
    indented = "\n".join("      " + line for line in script.splitlines())
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in spec.items())
    return f"""
apiVersion: flowstore.dev/v1alpha1
kind: StoredFlow
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  storageRef: {{name: {storage}}}
  flowName: {json.dumps(flow_name)}
  source:
    inline: |
{indented}
{extra}"""


def s3_keys(endpoint: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
