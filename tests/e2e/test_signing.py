"""Signing end to end (docs/signing.md): the real operator signs a statement per revision with the
FlowStorage's ed25519 key; agents holding only the public key verify it before any request that
carries their credentials (a recording proxy in front of S3 proves nothing was sent) and before
anything is unpickled; older revisions are refused unless pinned; a new key re-signs every
revision with a status update only."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from flowstore import client
from flowstore.artifacts.freshness import RollbackRefused
from flowstore.artifacts.signing import SignatureError, hmac_key_id
from flowstore.storage.errors import IntegrityError
from tests.helpers.kube import apply, get, kubectl, wait_for, wait_ready
from tests.helpers.manifests import inline_flow, s3_storage
from tests.helpers.operator import OperatorProcess
from tests.helpers.recording_proxy import RecordingProxy

HMAC_KEY = "k3y-for-signing-flows-0123456789"


def key_pair() -> tuple[str, str]:
    """(private PEM, public PEM) of a new ed25519 key."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def signed_storage(namespace: str, bucket: str, endpoint: str, private: str, *, name: str = "store",
                   provider: str = "ed25519", secret: str = "signing") -> str:  # noqa: S107
    indented = "\n".join("    " + line for line in private.strip().splitlines())
    # labelled: Secrets a FlowStorage uses opt in (the operator's default --secret-policy)
    return s3_storage(namespace, bucket, endpoint, name=name,
                      signing={"provider": provider, "secretRef": {"name": secret}}) + f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: {secret}, namespace: {namespace}, labels: {{flowstore.dev/allow: "true"}}}}
stringData:
  FLOWSTORE_SIGNING_KEY: |
{indented}
"""


@pytest.fixture
def agent_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An agent cache of this test's own (its memory of verified designations included)."""
    cache = tmp_path / "agent-cache"
    monkeypatch.setenv("FLOWSTORE_CACHE_DIR", str(cache))
    monkeypatch.delenv("FLOWSTORE_VERIFY_KEY", raising=False)
    monkeypatch.delenv("FLOWSTORE_SIGNING_KEY", raising=False)
    return cache


#: the agent's own AWS key id (moto takes any): its requests are told from the operator's by it
AGENT_KEY_ID = "AKIAAGENTSIGNINGTEST1"


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    """A recording proxy in front of S3; this process (the agent) signs with AGENT_KEY_ID."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AGENT_KEY_ID)
    with RecordingProxy(s3_endpoint) as running:
        yield running


def agent_requests(proxy: RecordingProxy) -> list[Any]:
    return [r for r in proxy.requests() if r.access_key == AGENT_KEY_ID]


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    kubectl("patch", "storedflow", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


def uploads(s3_endpoint: str, bucket: str) -> int:
    listed = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    return int(listed.get("KeyCount", 0))


def test_public_key_agents_load_signed_flows_and_nothing_replayed_elsewhere_sends_a_request(
        operator: OperatorProcess, namespace: str, kube_env: dict[str, str], s3_bucket: str, s3_endpoint: str,
        proxy: RecordingProxy, agent_cache: Path) -> None:
    private, public = key_pair()
    apply(signed_storage(namespace, s3_bucket, proxy.url, private))
    apply(inline_flow(namespace, "etl", "etl"))
    apply(inline_flow(namespace, "report", "report", body="return 7"))
    etl = wait_ready(namespace, "etl")
    report = wait_ready(namespace, "report")
    artifact = etl["status"]["artifact"]
    assert artifact["signature"].startswith("ed25519:") and artifact["keyId"].startswith("ed25519:")
    assert artifact["revision"] == 1 and artifact["designation"] == 1
    assert etl["status"]["history"][0]["signature"] == artifact["signature"]
    storage = wait_for("flowstorage", namespace, "store", lambda o: "signing" in (o.get("status") or {}))
    assert storage["status"]["signing"] == {"provider": "ed25519", "keyId": artifact["keyId"],
                                            "publicKey": public}
    assert "PRIVATE" not in json.dumps(etl) + json.dumps(storage) and private not in operator.logs()

    # An agent that holds only the public key loads it (its requests are recorded: the proof below
    # that refused loads send none is not vacuous).
    assert client.load_flow("etl", namespace, verify_key=public).run() == 42
    assert [r.method for r in agent_requests(proxy)] == ["GET"] and agent_requests(proxy)[0].authenticated
    # The same with the key in the environment, through the CLI.
    env = {**os.environ, "FLOWSTORE_VERIFY_KEY": public}
    done = subprocess.run([sys.executable, "-m", "flowstore.cli", "run", "etl", "-n", namespace],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr

    # Replays: each status below carries a genuine signature made by the operator's key, for
    # another StoredFlow, another namespace or another place. None is accepted, and none makes
    # the agent send a single request (with its credentials) to the storage.
    other_ns = f"{namespace}-b"
    kubectl("create", "namespace", other_ns)
    try:
        apply(signed_storage(other_ns, s3_bucket, proxy.url, private))
        apply(inline_flow(other_ns, "etl", "etl", body="return 1"))
        wait_ready(other_ns, "etl")
        replays = {
            "another StoredFlow": (namespace, "report", etl["status"]),
            "another namespace": (other_ns, "etl", etl["status"]),
            "another bucket": (namespace, "etl", {**etl["status"], "storage": {
                **etl["status"]["storage"], "bucket": f"{s3_bucket}-attacker"}}),
            "another endpoint": (namespace, "etl", {**etl["status"], "storage": {
                **etl["status"]["storage"], "endpointURL": "http://127.0.0.1:9"}}),
            "another key": (namespace, "etl", {**etl["status"], "location": report["status"]["location"]}),
        }
        for what, (ns, name, status) in replays.items():
            patch_status(ns, name, copy.deepcopy(status))
            before = len(agent_requests(proxy))
            with pytest.raises(SignatureError, match="does not match"):
                client.load_flow(name, ns, verify_key=public)
            assert agent_requests(proxy)[before:] == [], f"{what}: the agent sent a request"
            print(f"refused ({what}), nothing sent")
    finally:
        kubectl("delete", "namespace", other_ns, "--wait=false", check=False)


def test_bytes_swapped_in_the_bucket_are_refused_before_import(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, agent_cache: Path,
        tmp_path: Path) -> None:
    private, public = key_pair()
    apply(signed_storage(namespace, s3_bucket, s3_endpoint, private))
    apply(inline_flow(namespace, "etl", "etl", storedAsScript=True))
    status = wait_ready(namespace, "etl")["status"]
    marker = tmp_path / "imported"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n".encode()
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key=status["location"], Body=evil)
    with pytest.raises(IntegrityError):
        client.load_flow("etl", namespace, verify_key=public)
    # whoever may also write the status makes the digest match the swapped bytes: the signature fails
    patch_status(namespace, "etl", {"artifact": {**status["artifact"],
                                                 "digest": "sha256:" + hashlib.sha256(evil).hexdigest(),
                                                 "size": len(evil)}})
    with pytest.raises(SignatureError, match="does not match"):
        client.load_flow("etl", namespace, verify_key=public)
    assert not marker.exists()


def test_an_older_signed_revision_is_refused_unless_pinned_and_a_revert_is_not(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, agent_cache: Path) -> None:
    private, public = key_pair()
    apply(signed_storage(namespace, s3_bucket, s3_endpoint, private))
    apply(inline_flow(namespace, "etl", "etl", body="return 1"))
    first = wait_ready(namespace, "etl")["status"]
    assert client.load_flow("etl", namespace, verify_key=public).run() == 1
    apply(inline_flow(namespace, "etl", "etl", body="return 2"))
    second = wait_for("storedflow", namespace, "etl",
                      lambda o: ((o.get("status") or {}).get("artifact") or {}).get("revision") == 2)["status"]
    assert client.load_flow("etl", namespace, verify_key=public).run() == 2
    retained = next(e for e in second["history"] if e["revision"] == 1)
    assert retained["signature"] != first["artifact"]["signature"]  # a retained revision: designation 0

    # Whoever may write the status puts revision 1's statement back, exactly as it was current.
    patch_status(namespace, "etl", {"location": first["location"], "artifact": first["artifact"],
                                    "storage": first["storage"]})
    with pytest.raises(RollbackRefused, match=r"revision 1 .*pin it"):
        client.load_flow("etl", namespace, verify_key=public)
    # a deliberate rollback: pinned, it loads, checked against revision 1's own signature
    patch_status(namespace, "etl", {"location": second["location"], "artifact": second["artifact"],
                                    "storage": second["storage"]})
    assert client.load_flow("etl", namespace, verify_key=public, revision=1).run() == 1
    assert client.load_flow("etl", namespace, verify_key=public, digest=first["artifact"]["digest"]).run() == 1

    # A GitOps revert makes revision 1 current again: a new designation, accepted.
    apply(inline_flow(namespace, "etl", "etl", body="return 1"))
    reverted = wait_for("storedflow", namespace, "etl",
                        lambda o: ((o.get("status") or {}).get("artifact") or {}).get("revision") == 1)["status"]
    assert reverted["artifact"]["designation"] == 3
    assert client.load_flow("etl", namespace, verify_key=public).run() == 1


def test_a_new_key_re_signs_every_revision_without_storing_again(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, agent_cache: Path) -> None:
    old_private, old_public = key_pair()
    new_private, new_public = key_pair()
    apply(signed_storage(namespace, s3_bucket, s3_endpoint, old_private))
    apply(inline_flow(namespace, "etl", "etl", body="return 1"))
    wait_ready(namespace, "etl")
    apply(inline_flow(namespace, "etl", "etl", body="return 2"))
    before = wait_for("storedflow", namespace, "etl",
                      lambda o: len((o.get("status") or {}).get("history") or []) == 2)["status"]
    objects = uploads(s3_endpoint, s3_bucket)
    # the rotation: a new Secret, and the FlowStorage pointed at it (a FlowStorage change: every
    # StoredFlow is signed again at once)
    apply(signed_storage(namespace, s3_bucket, s3_endpoint, new_private, secret="signing-2"))
    new_id = client_key_id(new_public)
    after = wait_for("storedflow", namespace, "etl",
                     lambda o: all(e.get("keyId") == new_id for e in (o.get("status") or {}).get("history") or [])
                     and ((o.get("status") or {}).get("artifact") or {}).get("keyId") == new_id)["status"]
    assert uploads(s3_endpoint, s3_bucket) == objects  # re-signed, not stored again
    assert after["artifact"]["digest"] == before["artifact"]["digest"]
    assert after["artifact"]["revision"] == before["artifact"]["revision"]
    assert client.load_flow("etl", namespace, verify_key=[old_public, new_public]).run() == 2
    assert client.load_flow("etl", namespace, verify_key=new_public, revision=1).run() == 1
    with pytest.raises(SignatureError, match="which this agent does not hold"):
        client.load_flow("etl", namespace, verify_key=old_public)


def client_key_id(public: str) -> str:
    from flowstore.artifacts.signing import public_keys

    return public_keys(public.encode(), where="test")[0].key_id


def test_hmac_the_weaker_kind_still_signs_every_field(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, agent_cache: Path) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, signing={"secretRef": {"name": "signing"}}) + f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: signing, namespace: {namespace}, labels: {{flowstore.dev/allow: "true"}}}}
stringData: {{FLOWSTORE_SIGNING_KEY: {HMAC_KEY}}}
""")
    apply(inline_flow(namespace, "etl", "etl"))
    status = wait_ready(namespace, "etl")["status"]
    assert status["artifact"]["signature"].startswith("hmac-sha256:")
    assert status["artifact"]["keyId"] == hmac_key_id(HMAC_KEY.encode())
    assert client.load_flow("etl", namespace, signing_key=HMAC_KEY).run() == 42
    with pytest.raises(SignatureError):
        client.load_flow("etl", namespace, signing_key="another-key-0123456789")
    patch_status(namespace, "etl", {"artifact": {**status["artifact"], "designation": 7}})
    with pytest.raises(SignatureError, match="does not match"):
        client.load_flow("etl", namespace, signing_key=HMAC_KEY)


def test_unsigned_artifacts_are_refused_by_agents_that_require_signatures(
        operator: OperatorProcess, namespace: str, s3_bucket: str, s3_endpoint: str, agent_cache: Path) -> None:
    private, public = key_pair()
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "plain", "plain"))
    assert "signature" not in wait_ready(namespace, "plain")["status"]["artifact"]
    assert client.load_flow("plain", namespace).run() == 42  # no key: digest check only
    with pytest.raises(SignatureError, match="not signed"):
        client.load_flow("plain", namespace, verify_key=public)
    # Turning signing on signs it: a status update, nothing stored again.
    objects = uploads(s3_endpoint, s3_bucket)
    apply(signed_storage(namespace, s3_bucket, s3_endpoint, private))
    wait_for("storedflow", namespace, "plain",
             lambda o: "signature" in ((o.get("status") or {}).get("artifact") or {}))
    assert client.load_flow("plain", namespace, verify_key=public).run() == 42
    assert uploads(s3_endpoint, s3_bucket) == objects
    assert get("storedflow", namespace, "plain")["status"]["artifact"]["keyId"] == client_key_id(public)
