"""Bad input end to end: every runtime failure becomes Ready=False with its own reason and a
message that says what to do; neighbours are unaffected, nothing secret leaks, and the
operator keeps running. The real operator, kube-apiserver and S3 server (moto)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowstore import client
from flowstore.controller.runtime import SUMMARY_QUIET
from tests.helpers.kube import apply, condition, delete_flows, get, kubectl, message, wait_for, wait_ready, wait_reason
from tests.helpers.manifests import flow_script, inline_flow, manifests, s3_storage, script_flow, stored_flow
from tests.helpers.moto import auth_enforcing_moto
from tests.helpers.objects import s3_keys
from tests.helpers.operator import OperatorProcess


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def auth_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second, real moto server that enforces authentication from the first request: the
    shared one accepts any keys."""
    with auth_enforcing_moto(tmp_path_factory.mktemp("moto-auth")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _remove_flows(namespace: str) -> Iterator[None]:
    yield
    delete_flows(namespace)


# --------------------------------------------------------------------------- credentials and buckets
def test_missing_secret_and_missing_key(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                        s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="good"))
    key_id = f"AKIA{uuid.uuid4().hex[:16].upper()}"
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="nosecret", credentials=None))
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="nokey", credentials={"AWS_ACCESS_KEY_ID": key_id}))
    apply(inline_flow(namespace, "ok", "ok", storage="good"))
    apply(inline_flow(namespace, "a", "a", storage="nosecret"))
    apply(inline_flow(namespace, "b", "b", storage="nokey"))

    missing = wait_reason(namespace, "a", "SecretNotFound")
    assert "'nosecret-creds'" in message(missing) and "create it" in message(missing)
    assert condition(missing, "Stalled").get("status") == "True"
    assert not missing["status"].get("location")
    storage = wait_reason(namespace, "nosecret", "SecretNotFound", kind="flowstorage")
    assert "'nosecret-creds'" in message(storage)

    lacking = wait_reason(namespace, "b", "InvalidSpec")
    assert "AWS_SECRET_ACCESS_KEY" in message(lacking) and "Secret" in message(lacking)
    assert key_id not in json.dumps(lacking["status"])
    assert condition(lacking, "Stalled").get("status") == "True"

    assert wait_ready(namespace, "ok")["status"]["location"]
    assert s3_keys(s3_endpoint, s3_bucket) == [get("storedflow", namespace, "ok")["status"]["location"]]
    assert key_id not in operator.logs()

    # Secrets are not watched, yet creating the missing one is picked up within seconds (a
    # doubling recheck delay, not a fixed minute), for the storage and its flow.
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="nosecret",
                     credentials={"AWS_ACCESS_KEY_ID": "AKIALATE000000000000", "AWS_SECRET_ACCESS_KEY": "late-secret"}))
    assert wait_ready(namespace, "a", timeout=30)["status"]["location"]
    wait_ready(namespace, "nosecret", kind="flowstorage", timeout=30)
    assert operator.alive()


def test_wrong_credentials_are_auth_failed(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                           s3_endpoint: str, auth_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="good"))
    apply(s3_storage(namespace, "flows", auth_endpoint, name="store",
                     credentials={"AWS_ACCESS_KEY_ID": "AKIABOGUS0000000000", "AWS_SECRET_ACCESS_KEY": "bogus-bogus"}))
    apply(inline_flow(namespace, "bad", "bad"))
    apply(inline_flow(namespace, "ok", "ok", storage="good"))
    failed = wait_reason(namespace, "bad", "AuthFailed")
    assert "rejected the credentials" in message(failed) and "Secret" in message(failed)
    assert "bogus-bogus" not in json.dumps(failed["status"])
    assert condition(failed, "Stalled").get("status") == "True"
    wait_reason(namespace, "store", "AuthFailed", kind="flowstorage")
    wait_ready(namespace, "ok")
    assert operator.alive()


def test_missing_bucket_is_bucket_not_found(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                            s3_endpoint: str) -> None:
    missing = f"nope-{uuid.uuid4().hex[:10]}"
    apply(s3_storage(namespace, missing, s3_endpoint))
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, name="good"))
    apply(inline_flow(namespace, "bad", "bad"))
    apply(inline_flow(namespace, "ok", "ok", storage="good"))
    failed = wait_reason(namespace, "bad", "BucketNotFound")
    assert missing in message(failed) and "spec.s3.bucket" in message(failed)
    storage = wait_reason(namespace, "store", "BucketNotFound", kind="flowstorage")
    assert missing in message(storage)
    wait_ready(namespace, "ok")
    assert operator.alive()


# --------------------------------------------------------------------------- sources
def test_configmap_missing_then_missing_key_then_fixed(operator: OperatorProcess, namespace: str,
                                                       s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(manifests(stored_flow(namespace, "etl", "etl", {"configMapRef": {"name": "flows", "key": "etl.py"}})))
    missing = wait_reason(namespace, "etl", "SourceNotFound")
    assert "ConfigMap 'flows'" in message(missing) and "create it" in message(missing)
    assert condition(missing, "Stalled").get("status") == "True"

    kubectl("create", "configmap", "flows", "-n", namespace, "--from-literal=other.py=x = 1\n",
            "--from-literal=more.py=y = 2\n")
    nokey = wait_for("storedflow", namespace, "etl",
                     lambda o: "no key" in message(o) and condition(o).get("reason") == "SourceNotFound",
                     what="to report the missing key")
    assert "'etl.py'" in message(nokey) and "more.py, other.py" in message(nokey)

    patch = json.dumps({"data": {"etl.py": flow_script("etl", "return 5")}})
    kubectl("patch", "configmap", "flows", "-n", namespace, "--type=merge", "-p", patch)
    wait_ready(namespace, "etl", timeout=15)
    assert client.load_flow("etl", namespace).run() == 5
    assert operator.alive()


# --------------------------------------------------------------------------- builds
BAD_SCRIPTS = {
    # name: (script, reason, text the message must contain)
    "syntax": ("from flowstore.flow import Flow\n\ndef main(:\n    return 1\n\nflow = Flow('syntax', main)\n",
               "ScriptSyntaxError", "line 3"),
    "raises": ("raise RuntimeError('database password missing from config')\n",
               "ScriptFailed", "RuntimeError: database password missing from config"),
    "noflow": ("x = 1\n", "FlowNotFound", "spec.objectName"),
    "twice": (flow_script("twice") + "again = Flow('twice', main)\n", "FlowAmbiguous", "twice"),
    "lock": (flow_script("lock", "return LOCK is not None", prelude="import threading\nLOCK = threading.Lock()\n"),
             "Unpicklable", "LOCK"),
}


def test_script_failures_each_have_their_reason(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                                s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    for name, (script, _, _) in BAD_SCRIPTS.items():
        apply(script_flow(namespace, name, name, script))
    apply(inline_flow(namespace, "good", "good"))

    for name, (_, reason, text) in BAD_SCRIPTS.items():
        obj = wait_reason(namespace, name, reason)
        assert text in message(obj), (name, message(obj))
        assert condition(obj, "Stalled").get("status") == "True", name
        assert not obj["status"].get("location"), name
    good = wait_ready(namespace, "good")["status"]["location"]
    assert s3_keys(s3_endpoint, s3_bucket) == [good]
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=raises",
                     "-o", "jsonpath={.items[*].reason}").stdout
    assert "ScriptFailed" in events

    # Fixing the spec makes it Ready.
    apply(script_flow(namespace, "syntax", "syntax", flow_script("syntax", "return 3")))
    wait_ready(namespace, "syntax", timeout=15)
    assert client.load_flow("syntax", namespace).run() == 3
    assert operator.alive()


def test_build_timeout_and_out_of_memory(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                         s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(script_flow(namespace, "spin", "spin", "while True:\n    pass\n"))
    apply(script_flow(namespace, "hog", "hog", "DATA = bytearray(2 * 1024 ** 3)\n"))
    apply(inline_flow(namespace, "good", "good"))
    hog = wait_reason(namespace, "hog", "BuildOutOfMemory")
    assert "256 MiB" in message(hog) and "memory limit" in message(hog)
    spin = wait_reason(namespace, "spin", "BuildTimeout")
    assert "5 s" in message(spin) and "build timeout" in message(spin)
    wait_ready(namespace, "good")
    assert operator.alive()


def test_script_mode_checks_syntax_and_never_executes(operator: OperatorProcess, namespace: str,
                                                      s3_bucket: str, s3_endpoint: str,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / f"executed-{uuid.uuid4().hex}"
    apply(s3_storage(namespace, s3_bucket, s3_endpoint, storedAsScript=True))
    apply(script_flow(namespace, "broken", "broken", "def f(:\n    pass\n"))
    side_effect = f"open({str(marker)!r}, 'w').write('ran')\n" + flow_script("effect")
    apply(script_flow(namespace, "effect", "effect", side_effect))
    broken = wait_reason(namespace, "broken", "ScriptSyntaxError")
    assert "line 1" in message(broken)
    stored = wait_ready(namespace, "effect")["status"]
    assert stored["artifact"]["format"] == "script"
    assert client.load_artifact("effect", namespace).data == side_effect.encode()
    time.sleep(0.5)
    assert not marker.exists(), "a script-mode flow must be stored without being executed"
    assert operator.alive()


def test_name_conflict_older_wins_then_newer_takes_over(operator: OperatorProcess, namespace: str,
                                                        s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "first", "etl", body="return 1"))
    wait_ready(namespace, "first")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    apply(inline_flow(namespace, "second", "etl", body="return 2"))
    conflict = wait_reason(namespace, "second", "NameConflict")
    assert "'first'" in message(conflict) and "spec.flowName" in message(conflict)
    assert condition(conflict, "Stalled").get("status") == "True"
    assert condition(get("storedflow", namespace, "first")).get("status") == "True"
    assert client.load_flow("first", namespace).run() == 1

    kubectl("delete", "storedflow", "first", "-n", namespace, "--timeout=30s")
    wait_ready(namespace, "second", timeout=15)
    assert client.load_flow("second", namespace).run() == 2
    wait_for("flowstorage", namespace, "store",
             lambda o: (o.get("status") or {}).get("flows", {}).get("etl")
             == get("storedflow", namespace, "second")["status"]["location"])
    assert operator.alive()


# --------------------------------------------------------------------------- secrets stay secret
def test_canary_secret_never_leaks(operator: OperatorProcess, namespace: str, s3_endpoint: str,
                                   auth_endpoint: str) -> None:
    canary = f"canary-{uuid.uuid4()}"
    canary_id = f"AKIA{uuid.uuid4().hex[:16].upper()}"
    creds = {"AWS_ACCESS_KEY_ID": canary_id, "AWS_SECRET_ACCESS_KEY": canary}
    missing = f"nope-{uuid.uuid4().hex[:10]}"
    apply(s3_storage(namespace, missing, s3_endpoint, name="nobucket", credentials=creds, secret_name="canary"))
    apply(s3_storage(namespace, "flows", auth_endpoint, name="denied", credentials=None, secret_name="canary"))
    apply(inline_flow(namespace, "a", "a", storage="nobucket"))
    apply(inline_flow(namespace, "b", "b", storage="denied"))
    wait_reason(namespace, "a", "BucketNotFound")
    wait_reason(namespace, "b", "AuthFailed")
    wait_reason(namespace, "nobucket", "BucketNotFound", kind="flowstorage")
    wait_reason(namespace, "denied", "AuthFailed", kind="flowstorage")
    time.sleep(1)  # let Events and log lines land

    statuses = kubectl("get", "storedflows,flowstorages", "-n", namespace, "-o", "json").stdout
    events = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "AuthFailed" in events and "BucketNotFound" in events
    for where, text in (("statuses", statuses), ("events", events), ("operator log", operator.logs())):
        assert canary not in text, f"the secret value leaked into {where}"
    assert operator.alive()


def test_build_cannot_see_operator_environment(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                               s3_endpoint: str) -> None:
    assert os.environ.get("KUBECONFIG") and os.environ.get("AWS_SECRET_ACCESS_KEY")  # the operator has them
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    prelude = 'import os\nSEEN = sorted(k for k in os.environ if k.startswith(("AWS", "KUBE")))\n'
    apply(script_flow(namespace, "env", "env", flow_script("env", "return SEEN", prelude=prelude)))
    wait_ready(namespace, "env")
    assert client.load_flow("env", namespace).run() == []
    assert operator.alive()


def test_broken_source_keeps_last_good_artifact(operator: OperatorProcess, namespace: str, s3_bucket: str,
                                                s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    apply(inline_flow(namespace, "etl", "etl", body="return 'v1'"))
    good = wait_ready(namespace, "etl")["status"]
    apply(script_flow(namespace, "etl", "etl", "def main(:\n"))
    broken = wait_for("storedflow", namespace, "etl",
                      lambda o: condition(o).get("reason") == "ScriptSyntaxError"
                      and o["status"].get("observedGeneration") == o["metadata"]["generation"],
                      what="to fail with ScriptSyntaxError")
    assert condition(broken)["status"] == "False"
    assert broken["status"]["location"] == good["location"]
    assert broken["status"]["artifact"] == good["artifact"]
    assert client.load_flow("etl", namespace).run() == "v1"
    assert s3_keys(s3_endpoint, s3_bucket) == [good["location"]]
    # The storage still lists the last good location after it has seen the failure: status.flows
    # follows the flows once they were quiet for SUMMARY_QUIET seconds.
    wait_for("flowstorage", namespace, "store", lambda o: "etl" in ((o.get("status") or {}).get("flows") or {}),
             what="to list etl")
    time.sleep(SUMMARY_QUIET + 1)
    storage = get("flowstorage", namespace, "store")
    assert storage["status"]["flows"].get("etl") == good["location"]
    assert operator.alive()
