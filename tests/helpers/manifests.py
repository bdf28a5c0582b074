"""Manifests the tests apply: FlowStorages of each backend with their Secrets, inline StoredFlows."""

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
metadata: {{name: {name}-creds, namespace: {namespace}, labels: {{flowstore.dev/allow: "true"}}}}
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


def manifests(*docs: dict[str, Any]) -> str:
    """Several objects as one manifest: a JSON v1 List (no YAML quoting surprises)."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})


def secret(namespace: str, name: str, data: dict[str, str], *, opt_in: bool = True) -> dict[str, Any]:
    """A Secret; `opt_in` labels it flowstore.dev/allow=true, as the operator's default Secret
    policy wants of every Secret a FlowStorage uses (docs/security.md)."""
    labels = {"flowstore.dev/allow": "true"} if opt_in else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "stringData": data}


def flow_storage(namespace: str, name: str, backend: str, block: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
            "metadata": {"name": name, "namespace": namespace}, "spec": {backend: block, **spec}}


def azure_storage(namespace: str, name: str, container: str, connection_string: str,
                  **block: Any) -> str:
    return manifests(
        secret(namespace, f"{name}-conn", {"AZURE_STORAGE_CONNECTION_STRING": connection_string}),
        flow_storage(namespace, name, "azure",
                     {"container": container, "credentialsSecretRef": {"name": f"{name}-conn"}, **block}),
    )


def webhook_storage(namespace: str, name: str, server: str, token: str | None, *,
                    build_url: str = "{server}/flows", header: str = "Bearer ${TOKEN}",
                    delete: bool = False, **spec: Any) -> str:
    """The seed's pattern: POST the flow, read the id the service assigned, GET it by id."""
    headers = {"Authorization": header}
    block: dict[str, Any] = {
        "buildRequest": {"method": "POST", "url": build_url.format(server=server), "headers": headers},
        "getFlowRequest": {"method": "GET", "url": f"{server}/flows/${{response.json.id}}", "headers": headers},
        "credentialsSecretRef": {"name": f"{name}-token"},
    }
    if delete:
        block["deleteRequest"] = {"method": "DELETE", "url": f"{server}/flows/${{response.json.id}}",
                                  "headers": headers}
    docs = [flow_storage(namespace, name, "webhook", block, **spec)]
    if token is not None:
        docs.insert(0, secret(namespace, f"{name}-token", {"TOKEN": token}))
    return manifests(*docs)
