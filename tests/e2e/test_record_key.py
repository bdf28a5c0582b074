"""The operator's record key (controller/record_key.py) in a real API server: made once, shared by
every operator of an installation (also when several start at once), refused when unusable, and
a clear error where the operator may not read it."""

from __future__ import annotations

import base64
import concurrent.futures
import uuid

import pytest
from kubernetes import client

from flowstore import kubeconfig
from flowstore.controller.record_key import RecordKeyError, load_record_key
from tests.helpers.kube import kubectl


@pytest.fixture
def core(kube_env: dict[str, str]) -> client.CoreV1Api:
    kubeconfig.load()
    return client.CoreV1Api(client.ApiClient())


def test_the_key_is_made_once_and_shared(core: client.CoreV1Api, namespace: str) -> None:
    name = f"key-{uuid.uuid4().hex[:8]}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four replicas starting at once
        keys = list(pool.map(lambda _: load_record_key(core, namespace, name), range(4)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    secret = core.read_namespaced_secret(name, namespace)
    assert secret.immutable and base64.b64decode(secret.data["key"]) == keys[0]
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "flowstore"
    assert load_record_key(core, namespace, name) == keys[0]  # a restart reads the same key


def test_a_secret_without_a_usable_key_is_refused(core: client.CoreV1Api, namespace: str) -> None:
    kubectl("create", "secret", "generic", "short", "-n", namespace, "--from-literal=key=too-short")
    with pytest.raises(RecordKeyError, match="no record key of at least 32 bytes"):
        load_record_key(core, namespace, "short")


def test_an_operator_that_may_not_read_it_says_what_to_grant(core: client.CoreV1Api, namespace: str) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    api = client.ApiClient(core.api_client.configuration)
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:nobody")
    with pytest.raises(RecordKeyError, match="grant its ServiceAccount get and create on secrets"):
        load_record_key(client.CoreV1Api(api), namespace, "flowstore-record-key", connect_seconds=0)
