"""Manifests the tests apply: FlowStorages of each backend with their Secrets, inline StoredFlows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: the keys the local cloud's moto server accepts (it checks none)
MOTO_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def s3_storage(namespace: str, bucket: str, endpoint: str, name: str = "store", key_prefix: str | None = None,
               *, credentials: dict[str, str] | None = MOTO_KEYS, secret_name: str | None = None,
               **spec: Any) -> str:
    """Manifest of an S3 FlowStorage referencing Secret `secret_name` (default `<name>-creds`),
    created with `credentials` (moto's test keys) unless that is None (then it is left missing)."""
    secret_name = secret_name or f"{name}-creds"
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in spec.items())
    prefix = f"    keyPrefix: {key_prefix}\n" if key_prefix else ""
    secret_doc = "" if credentials is None else f"""
apiVersion: v1
kind: Secret
metadata: {{name: {secret_name}, namespace: {namespace}, labels: {{flowstore.dev/allow: "true"}}}}
stringData: {json.dumps(credentials)}
---"""
    return secret_doc + f"""
apiVersion: flowstore.dev/v1alpha1
kind: FlowStorage
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  s3:
    bucket: {bucket}
    endpointURL: {endpoint}
    region: us-east-1
    credentialsSecretRef: {{name: {secret_name}}}
{prefix}{extra}"""


def flow_script(flow_name: str, body: str = "return 42", prelude: str = "") -> str:
    """A flow script: `prelude`, then a Flow named `flow_name` whose task is `body`."""
    return f"{prelude}from flowstore.flow import Flow\n\ndef main():\n    {body}\n\nflow = Flow({flow_name!r}, main)\n"


def script_flow(namespace: str, name: str, flow_name: str, script: str, storage: str = "store",
                **spec: Any) -> str:
    """Manifest of a StoredFlow whose inline source is exactly `script`."""
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


def inline_flow(namespace: str, name: str, flow_name: str, body: str = "return 42", storage: str = "store",
                **spec: Any) -> str:
    """Manifest of a StoredFlow whose inline source is :func:`flow_script`'s."""
    return script_flow(namespace, name, flow_name, flow_script(flow_name, body), storage, **spec)


def stored_flow(namespace: str, name: str, flow_name: str, source: dict[str, Any], storage: str = "store",
                **spec: Any) -> dict[str, Any]:
    """A StoredFlow object (for :func:`manifests`) with any `source`: inline, configMapRef, path."""
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "StoredFlow",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"storageRef": {"name": storage}, "flowName": flow_name, "source": source, **spec}}


def manifests(*docs: dict[str, Any]) -> str:
    """Several objects as one manifest: a JSON v1 List (no YAML quoting surprises)."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)})


def secret(namespace: str, name: str, data: dict[str, str], *, opt_in: bool = True) -> dict[str, Any]:
    """A Secret; `opt_in` labels it flowstore.dev/allow=true, as the operator's default Secret
    policy wants of every Secret a FlowStorage uses (docs/security.md)."""
    labels = {"flowstore.dev/allow": "true"} if opt_in else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "stringData": data}


def configmap(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": data}


def flow_storage(namespace: str, name: str, backend: str, block: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "flowstore.dev/v1alpha1", "kind": "FlowStorage",
            "metadata": {"name": name, "namespace": namespace}, "spec": {backend: block, **spec}}


def local_storage(namespace: str, name: str, directory: str | Path, *, volume_name: str | None = None,
                  path: str | None = None, **spec: Any) -> str:
    """Manifest of a Local FlowStorage in `directory` (on the PVC `volume_name`, at the fixed
    `path`, if given); `spec` adds the fields every backend shares (suspend, deletionPolicy)."""
    block: dict[str, Any] = {"directory": str(directory)}
    if volume_name:
        block["volumeName"] = volume_name
    if path:
        block["path"] = path
    return manifests(flow_storage(namespace, name, "local", block, **spec))


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


def kustomize_overlay(directory: Path, base: Path, namespace: str, patches: str = "") -> Path:
    """Write a kustomization in `directory` on top of `base` (an example), as a user's environment
    overlay would be: everything in `namespace`, plus `patches` (the YAML of its ``patches:``
    list, indented by two). `directory` is created if missing; returned."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {namespace}
resources:
  - {os.path.relpath(base, directory)}
""" + (f"patches:\n{patches}" if patches else ""))
    return directory
