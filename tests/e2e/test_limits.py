"""Values that grow with user input stay bounded, so an object can always be written and
deleted: the inline source's limit (enforced by the API server), kopf's annotations (no copy of
the spec: no diff base at all), condition messages and Events of a flow that prints or raises a lot."""

from __future__ import annotations

import hashlib
import json
import time

from tests.helpers.kube import apply, condition, get, kubectl, wait_ready, wait_reason
from tests.helpers.manifests import s3_storage, stored_flow
from tests.helpers.operator import OperatorProcess

LIMIT = 131072  # characters of spec.source.inline (crds/flowstore.dev_storedflows.yaml)


def script_of_size(size: int, flow_name: str = "big") -> str:
    """A valid flow script of exactly `size` characters (a comment pads it)."""
    head = f"from flowstore.flow import Flow\n\nflow = Flow({flow_name!r}, lambda: 'big')\n#"
    return head + "x" * (size - len(head) - 1) + "\n"


def storedflow(namespace: str, name: str, source: str) -> str:
    return json.dumps(stored_flow(namespace, name, "big", {"inline": source}))


def test_an_inline_source_at_the_limit_stores_and_deletes(operator: OperatorProcess, namespace: str,
                                                          s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    source = script_of_size(LIMIT)
    assert len(source) == LIMIT
    apply(storedflow(namespace, "big", source))  # client-side `kubectl apply`, as users do
    obj = wait_ready(namespace, "big", timeout=60)
    annotations = obj["metadata"].get("annotations") or {}
    diffbase = annotations.get("flowstore.dev/last-handled-configuration", "")
    assert len(diffbase) < 300, f"kopf's diff base copies the spec ({len(diffbase)} characters)"
    assert not any(k.startswith("flowstore.dev/") for k in annotations), annotations  # kopf kept no record
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 256 * 1024
    assert obj["status"]["artifact"]["sourceDigest"] == "sha256:" + hashlib.sha256(source.encode()).hexdigest()

    t0 = time.monotonic()
    kubectl("delete", "storedflow", "big", "-n", namespace, "--timeout=60s")
    assert kubectl("get", "storedflow", "big", "-n", namespace, check=False).returncode != 0
    print(f"\nlimits: a StoredFlow with a {LIMIT}-character inline source deleted in {time.monotonic() - t0:.1f}s")
    assert "Too long" not in operator.logs() and "may not be more than" not in operator.logs()


def test_an_inline_source_over_the_limit_is_rejected_pointing_to_configmaps(crds: None, namespace: str) -> None:
    done = kubectl("apply", "--dry-run=server", "-f", "-", input=storedflow(namespace, "huge",
                                                                            script_of_size(LIMIT + 1)), check=False)
    assert done.returncode != 0
    assert "spec.source.inline is limited to 131072 characters" in done.stderr
    assert "ConfigMap (spec.source.configMapRef)" in done.stderr


def test_a_flow_raising_a_huge_error_gets_a_bounded_message(operator: OperatorProcess, namespace: str,
                                                            s3_bucket: str, s3_endpoint: str) -> None:
    apply(s3_storage(namespace, s3_bucket, s3_endpoint))
    source = ("import sys\nsys.stderr.write('noise ' * 200000)\n"
              "raise ValueError('start of the problem ' + 'x' * 300000 + ' end of the problem')\n")
    apply(storedflow(namespace, "loud", source))
    obj = wait_reason(namespace, "loud", "ScriptFailed", timeout=60)
    message = condition(obj)["message"]
    assert len(message) <= 8192, len(message)
    assert message.startswith("ValueError: start of the problem") and "characters left out" in message
    assert len(json.dumps(obj["status"])) < 32 * 1024
    time.sleep(1)
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    mine = [e for e in events if e["involvedObject"]["name"] == "loud" and e["reason"] == "ScriptFailed"]
    assert mine and all(len(e["message"]) <= 1024 for e in mine)
    assert get("storedflow", namespace, "loud")["metadata"]["generation"] == 1
