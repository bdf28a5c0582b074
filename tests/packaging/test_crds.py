"""The CRDs (crds/*.yaml) against the real kube-apiserver: what they accept, what defaults they
apply, what they reject and how the rejection reads, and that every field is documented.

Validation is exercised with `kubectl apply --dry-run=server`, so the API server runs the full
admission path (OpenAPI schema, defaulting, CEL rules) without storing anything.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.kube import kubectl

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
ONE_BACKEND = (
    "exactly one backend block (local, s3, gcs, azure, webhook, docker, oci, github, gitlab, bitbucket, "
    "codecommit, git) must be set"
)
CRD_FILES = ["flowstore.dev_flowstorages.yaml", "flowstore.dev_storedflows.yaml"]

pytestmark = pytest.mark.usefixtures("crds")


def manifest(kind: str, name: str, spec: str) -> str:
    """A flowstore.dev/v1alpha1 manifest with `spec` given as an indented YAML block."""
    return (
        f"apiVersion: flowstore.dev/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n"
        + "spec:\n"
        + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
        + "\n"
    )


def dry_run(namespace: str, text: str) -> dict[str, Any]:
    """Server-side dry-run apply that must succeed; returns the object as the server would store it."""
    out = kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f", "-", input=text, check=False
    )
    assert out.returncode == 0, out.stderr
    obj: dict[str, Any] = json.loads(out.stdout)
    return obj


def rejected(namespace: str, text: str) -> str:
    """Server-side dry-run apply that must fail; returns the error text kubectl shows the user."""
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=text, check=False)
    assert out.returncode != 0, f"accepted but should be rejected:\n{text}\n{out.stdout}"
    assert "is invalid" in out.stderr, out.stderr  # the server's validation error, not a client failure
    return out.stderr


# --- FlowStorage: accepted, with defaults ---------------------------------------------------


def test_local_flowstorage_accepted_with_defaults(namespace: str) -> None:
    obj = dry_run(
        namespace,
        manifest(
            "FlowStorage",
            "shared",
            """
        local:
          directory: /flows
          volumeName: shared-flows
    """,
        ),
    )
    spec = obj["spec"]
    assert spec["deletionPolicy"] == "Retain"
    assert spec["interval"] == "10m"
    assert spec["addDefaultLabels"] is True
    assert spec["storedAsScript"] is False
    assert spec["suspend"] is False
    assert spec["local"] == {"directory": "/flows", "volumeName": "shared-flows", "validate": True}


def test_s3_flowstorage_with_credentials_accepted(namespace: str) -> None:
    obj = dry_run(
        namespace,
        manifest(
            "FlowStorage",
            "team-s3",
            """
        s3:
          bucket: flows
          keyPrefix: prod/
          region: eu-west-1
          endpointURL: http://127.0.0.1:5000
          clientOptions: {verify: "false"}
          credentialsSecretRef: {name: aws-creds}
        labels: [prod]
        secrets: [SLACK_TOKEN]
        deletionPolicy: Delete
        interval: 1h30m
    """,
        ),
    )
    spec = obj["spec"]
    assert spec["s3"]["credentialsSecretRef"] == {"name": "aws-creds"}
    assert spec["s3"]["clientOptions"] == {"verify": "false"}
    assert spec["deletionPolicy"] == "Delete"
    assert spec["interval"] == "1h30m"
    assert spec["addDefaultLabels"] is True


@pytest.mark.parametrize(
    ("block", "check"),
    [
        pytest.param("gcs: {bucket: flows, project: p, credentialsSecretRef: {name: gcs-key}}",
                     lambda spec: spec["gcs"]["credentialsSecretRef"]["key"] == "service-account.json", id="gcs"),
        pytest.param("azure: {container: flows, credentialsSecretRef: {name: conn}}",
                     lambda spec: spec["azure"]["credentialsSecretRef"]["key"] == "AZURE_STORAGE_CONNECTION_STRING",
                     id="azure-connection-string"),
        pytest.param("azure: {container: flows, accountURL: 'https://a.blob.core.windows.net'}",
                     lambda spec: "credentialsSecretRef" not in spec["azure"], id="azure-workload-identity"),
        pytest.param(
            "webhook: {buildRequest: {method: POST, url: 'https://x/upload',"
            " headers: {Authorization: 'Bearer ${TOKEN}'}},"
            " getFlowRequest: {method: GET, url: 'https://x/flows/${response.json.id}'},"
            " credentialsSecretRef: {name: hook}}",
            lambda spec: spec["webhook"]["getFlowRequest"]["url"].endswith("${response.json.id}"), id="webhook"),
        pytest.param("oci: {repository: 'registry.example.com:5000/flows/etl', credentialsSecretRef: {name: push}}",
                     lambda spec: spec["oci"]["repository"].endswith("/flows/etl"), id="oci"),
    ],
)
def test_more_backends_accepted(namespace: str, block: str, check: Any) -> None:
    obj = dry_run(namespace, manifest("FlowStorage", "more", block))
    assert check(obj["spec"]), obj["spec"]


# --- FlowStorage: rejected, with a message a person can act on --------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "labels: [prod]",
            ["spec:", ONE_BACKEND],
            id="no-backend",
        ),
        pytest.param(
            "local: {directory: /flows}\ns3: {bucket: flows}",
            ["spec:", ONE_BACKEND],
            id="two-backends",
        ),
        pytest.param("s3: {region: eu-west-1}", ["spec.s3.bucket: Required value"], id="s3-without-bucket"),
        pytest.param(
            "local: {validate: true}", ["spec.local.directory: Required value"], id="local-without-directory"
        ),
        pytest.param(
            "local: {directory: flows}",
            ["spec.local.directory", "directory must be an absolute path (starting with /), got: flows"],
            id="relative-directory",
        ),
        pytest.param(
            "local: {directory: /var/lib/flowstore/flows/team/../other}",
            ["spec.local.directory", "directory must not contain '..'"],
            id="dotdot-directory",
        ),
        pytest.param(
            "local: {directory: /flows}\ndeletionPolicy: Keep",
            ['spec.deletionPolicy: Unsupported value: "Keep"', '"Retain", "Delete"'],
            id="unknown-deletion-policy",
        ),
        pytest.param(
            "local: {directory: /flows}\ninterval: 10 minutes",
            ['spec.interval: Invalid value: "10 minutes"', "should match"],
            id="malformed-interval",
        ),
        pytest.param(
            "s3: {bucket: flows, key: etl.pkl, keyPrefix: prod/}",
            ["spec.s3:", "key and keyPrefix are mutually exclusive"],
            id="s3-key-and-keyprefix",
        ),
        pytest.param("s3: {bucket: Not_A_Bucket}", ["spec.s3.bucket", "should match"], id="bad-bucket-name"),
        pytest.param(
            "s3: {bucket: flows, endpointURL: 'minio:9000'}",
            ["spec.s3.endpointURL", "should match"],
            id="endpoint-without-scheme",
        ),
        pytest.param(
            "gcs: {bucket: flows}\nazure: {container: flows, accountURL: 'https://a.blob.core.windows.net'}",
            ["exactly one backend block"],
            id="gcs-and-azure",
        ),
        pytest.param(
            "gcs: {bucket: flows, key: etl.pkl, keyPrefix: prod/}",
            ["spec.gcs:", "key and keyPrefix are mutually exclusive"],
            id="gcs-key-and-keyprefix",
        ),
        pytest.param(
            "azure: {container: flows, accountURL: 'https://a.blob.core.windows.net',"
            " credentialsSecretRef: {name: c}}",
            ["spec.azure:", "give either credentialsSecretRef (a connection string) or accountURL"],
            id="azure-connection-string-and-account-url",
        ),
        pytest.param(
            "azure: {container: flows}",
            ["spec.azure:", "azure needs credentialsSecretRef"],
            id="azure-without-credentials",
        ),
        pytest.param(
            "azure: {container: Flows_1, accountURL: 'https://a.blob.core.windows.net'}",
            ["spec.azure.container", "should match"],
            id="azure-bad-container-name",
        ),
        pytest.param(
            "webhook: {buildRequest: {method: POST, url: 'http://x'}}",
            ["spec.webhook.getFlowRequest: Required value"],
            id="webhook-without-get-request",
        ),
        pytest.param(
            "webhook: {buildRequest: {method: DELETE, url: 'http://x'},"
            " getFlowRequest: {method: GET, url: 'http://x'}}",
            ['spec.webhook.buildRequest.method: Unsupported value: "DELETE"'],
            id="webhook-bad-method",
        ),
        pytest.param("oci: {plainHTTP: true}", ["spec.oci.repository: Required value"], id="oci-without-repository"),
        pytest.param("oci: {repository: 'registry.example.com/flows/etl:v1'}", ["spec.oci.repository", "should match"],
                     id="oci-repository-with-tag"),
        pytest.param("oci: {repository: 'registry.example.com/Flows'}", ["spec.oci.repository", "should match"],
                     id="oci-repository-upper-case"),
        pytest.param("local: {directory: /flows}\nrevisionHistoryLimit: 0",
                     ["spec.revisionHistoryLimit", "greater than or equal to 1"], id="history-limit-0"),
        pytest.param("local: {directory: /flows}\nretention: {minAge: ten minutes}",
                     ["spec.retention.minAge", "should match"], id="min-age-not-a-duration"),
    ],
)
def test_invalid_flowstorage_rejected(namespace: str, spec: str, expected: list[str]) -> None:
    error = rejected(namespace, manifest("FlowStorage", "bad", spec))
    for text in expected:
        assert text in error, error


# --- StoredFlow -------------------------------------------------------------------------------


def test_storedflow_from_configmap_accepted_with_defaults(namespace: str) -> None:
    obj = dry_run(
        namespace,
        manifest(
            "StoredFlow",
            "etl-daily",
            """
        storageRef: {name: team-s3}
        flowName: etl daily
        source:
          configMapRef: {name: flows, key: etl.py}
        objectName: flow
    """,
        ),
    )
    spec = obj["spec"]
    assert spec["source"] == {"configMapRef": {"name": "flows", "key": "etl.py"}}
    assert spec["suspend"] is False
    assert "storedAsScript" not in spec  # absent: the FlowStorage's default applies


def test_storedflow_inline_accepted(namespace: str) -> None:
    obj = dry_run(
        namespace,
        manifest(
            "StoredFlow",
            "hello",
            """
        storageRef: {name: shared}
        flowName: hello
        storedAsScript: true
        key: hello/flow.py
        source:
          inline: |
            from prefect import Flow
            flow = Flow("hello")
    """,
        ),
    )
    assert obj["spec"]["source"]["inline"].startswith("from prefect import Flow")
    assert obj["spec"]["storedAsScript"] is True


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            "flowName: etl\nsource: {inline: 'flow = 1'}",
            ["spec.storageRef: Required value"],
            id="no-storage-ref",
        ),
        pytest.param("storageRef: {name: s}\nflowName: etl", ["spec.source: Required value"], id="no-source"),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\nsource: {}",
            ["spec.source:", "source needs exactly one of configMapRef, inline or path"],
            id="empty-source",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\n"
            "source: {inline: 'flow = 1', configMapRef: {name: f, key: k}}",
            ["spec.source:", "source needs exactly one of configMapRef, inline or path"],
            id="inline-and-configmap",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: ''\nsource: {inline: 'flow = 1'}",
            ['spec.flowName: Invalid value: ""', "at least 1 chars long"],
            id="empty-flow-name",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\nsource: {configMapRef: {name: f, key: a.py, items: [{key: a.py, "
            "path: a.py}]}}",
            ["configMapRef takes key (one file) or items (several files), not both"],
            id="configmap-key-and-items",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\nsource: {configMapRef: {name: f, items: [{key: a.py, "
            "path: ../a.py}]}}",
            ["items[].path must be relative and stay inside the flow's directory"],
            id="configmap-item-outside",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\nsource: {inline: x}\nkey: flows/../../usr/local/bin/python3",
            ["key must not contain a '..' segment"],
            id="key-with-dotdot",
        ),
        pytest.param(
            "storageRef: {name: s}\nflowName: etl\nsource: {inline: 'flow = 1'}\n"
            "pin: {revision: 2, digest: 'sha256:" + "ab" * 32 + "'}",
            ["spec.pin:", "pin needs exactly one of revision or digest"], id="pin-revision-and-digest"),
        pytest.param("storageRef: {name: s}\nflowName: etl\nsource: {inline: 'flow = 1'}\npin: {}",
                     ["pin needs exactly one of revision or digest"], id="pin-empty"),
        pytest.param("storageRef: {name: s}\nflowName: etl\nsource: {inline: 'flow = 1'}\npin: {digest: abc}",
                     ["spec.pin.digest", "should match"], id="pin-digest-not-sha256"),
        pytest.param("storageRef: {name: s}\nflowName: etl\nsource: {inline: 'flow = 1'}\npin: {revision: 0}",
                     ["spec.pin.revision", "greater than or equal to 1"], id="pin-revision-0"),
        pytest.param("storageRef: {name: s}\nflowName: etl\nsource: {inline: 'flow = 1'}\nrevisionHistoryLimit: 101",
                     ["spec.revisionHistoryLimit", "less than or equal to 100"], id="history-limit-101"),
    ],
)
def test_invalid_storedflow_rejected(namespace: str, spec: str, expected: list[str]) -> None:
    error = rejected(namespace, manifest("StoredFlow", "bad", spec))
    for text in expected:
        assert text in error, error


# --- status: survives the schema (no pruning) and feeds the printer columns -------------------


def test_storedflow_status_round_trip_and_columns(namespace: str, own_operators_only: None) -> None:
    """(No operator may reconcile the object meanwhile: the session's, started by an e2e test, is paused.)"""
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=manifest(
            "StoredFlow",
            "etl-daily",
            """
        storageRef: {name: team-s3}
        flowName: etl daily
        source: {inline: 'flow = 1'}
    """,
        ),
    )
    digest = "sha256:" + "ab" * 32
    status = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "observedGeneration": 1,
                "reason": "Succeeded",
                "message": "stored at prod/etl-daily/x",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            }
        ],
        "location": "prod/etl-daily/x",
        "flowName": "etl daily",
        "labels": ["prod", "s3-flow-storage"],
        "artifact": {
            "url": "s3://flows/prod/etl-daily/x",
            "digest": digest,
            "size": 2048,
            "format": "pickle",
            "sourceDigest": digest,
            "inputsDigest": digest,
            "lastUpdateTime": "2026-11-26T10:00:00Z",
            "revision": 7,
            "designation": 9,
        },
        "storage": {"type": "S3", "bucket": "flows", "keyPrefix": "prod/", "anyFutureField": {"kept": True}},
        "history": [{"revision": 7, "digest": digest, "size": 2048, "format": "pickle",
                     "url": "s3://flows/prod/etl-daily/x", "location": "prod/etl-daily/x", "sourceDigest": digest,
                     "inputsDigest": digest, "storedAt": "2026-11-26T10:00:00Z", "versions": {"python": "3.11.7"},
                     "storageState": {"any": ["thing"]}},
                    {"revision": 6, "digest": digest, "size": 10, "format": "script", "url": "s3://flows/w",
                     "location": "w", "sourceDigest": digest, "inputsDigest": digest,
                     "storedAt": "2026-11-25T10:00:00Z", "supersededAt": "2026-11-26T10:00:00Z", "fileName": "etl.py",
                     "git": {"commit": "3f2c" * 10}, "image": {"name": "r/i", "digest": digest}}],
        "lastRevision": 7,
        "historyStorage": "sha256:0123456789abcdef",
        "latest": {"revision": 7, "digest": digest},
        "retired": [{"revision": 5, "location": "v", "supersededAt": "2026-11-24T10:00:00Z",
                     "storageState": {"imageDigest": digest}}],
    }
    kubectl(
        "patch",
        "storedflow",
        "etl-daily",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    stored = json.loads(kubectl("get", "storedflow", "etl-daily", "-n", namespace, "-o", "json").stdout)
    assert stored["status"] == status

    table = kubectl("get", "sflow", "etl-daily", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SUSPENDED", "REVISION", "LOCATION", "FLOW", "COMMIT", "AGE",
                                "MESSAGE"]
    assert "True" in table[1] and "prod/etl-daily/x" in table[1] and "etl daily" in table[1]
    assert _column(table, "SUSPENDED") == ""  # not suspended: nothing to see
    assert _column(table, "REVISION") == "7"  # status.artifact.revision

    # suspended (here through its FlowStorage): the column says so, the stored flow stays listed
    status["conditions"] = [*status["conditions"], {
        "type": "Suspended", "status": "True", "observedGeneration": 1, "reason": "Suspended",
        "message": "Suspended: FlowStorage 'team-s3' has spec.suspend: true; nothing is stored or checked until it "
                   "is false", "lastTransitionTime": "2026-11-26T10:05:00Z"}]
    kubectl("patch", "storedflow", "etl-daily", "-n", namespace, "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": status}))
    table = kubectl("get", "sflow", "etl-daily", "-n", namespace).stdout.splitlines()
    assert (_column(table, "SUSPENDED"), _column(table, "READY"), _column(table, "LOCATION")) == \
        ("True", "True", "prod/etl-daily/x")


def _column(table: list[str], name: str) -> str:
    """The value of column `name` in the first row of kubectl's table (columns start where their
    header does)."""
    header, row = table[0], table[1]
    start = header.index(name)
    following = [header.index(h, start + len(name)) for h in header[start + len(name):].split()]
    end = following[0] if following else len(row)
    return row[start:end].strip()


def test_flowstorage_columns(namespace: str, own_operators_only: None) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=manifest("FlowStorage", "shared", "local: {directory: /flows}"),
    )
    status = {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "DirectoryNotWritable",
                "message": "cannot write to /flows",
                "lastTransitionTime": "2026-11-26T10:00:00Z",
            }
        ],
        "backend": "Local",
        "flows": {"etl daily": "/flows/etl-daily/x"},
        "labels": ["local-flow-storage"],
    }
    kubectl(
        "patch",
        "flowstorage",
        "shared",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    table = kubectl("get", "fstor", "shared", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "SUSPENDED", "TYPE", "AGE", "MESSAGE"]
    # TYPE comes from status.backend, which the operator writes from the spec: it is there
    # before the first success (no status.storage yet, here)
    assert (_column(table, "READY"), _column(table, "TYPE"), _column(table, "SUSPENDED")) == ("False", "Local", "")
    assert "cannot write to /flows" in table[1]


# --- documentation (the schema's own: tests/unit/test_crd_sources.py) ---------------------------------


def test_explain_the_revision_fields() -> None:
    def explain(field: str) -> str:
        return " ".join(kubectl("explain", field).stdout.split())

    assert "never reused" in explain("storedflow.status.history.revision")
    assert "Exactly one of revision or digest" in explain("storedflow.spec.pin")
    assert "minAge" in explain("flowstorage.spec.retention") and "PinNotFound" in explain("storedflow.spec.pin")


def test_explain_storedflow_artifact_reads_well() -> None:
    out = kubectl("explain", "storedflow.status.artifact").stdout
    assert "digest" in out
    assert "sha256:" in out
    assert "inputsDigest" in out


def test_explain_flowstorage_s3_credentials() -> None:
    out = kubectl("explain", "flowstorage.spec.s3.credentialsSecretRef").stdout
    assert "AWS_ACCESS_KEY_ID" in out and "AWS_SECRET_ACCESS_KEY" in out and "AWS_SESSION_TOKEN" in out


@pytest.mark.parametrize("example", sorted((ROOT / "examples" / "providers").glob("*.yaml")), ids=lambda p: p.stem)
def test_provider_examples_pass_server_side_validation(namespace: str, example: Path) -> None:
    """The git-provider examples need the real services to run; the API server still checks
    them (schema + CEL), in a test namespace."""
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                             "items": docs}), check=False)
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in docs]
    assert "FlowStorage" in kinds and "StoredFlow" in kinds
