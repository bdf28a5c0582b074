"""kubectl against the local cluster, and waiting for flowstore objects' conditions."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl against the local cluster; returns the completed process (text)."""
    done = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=os.environ)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def apply(manifest: str) -> None:
    kubectl("apply", "-f", "-", input=manifest)


def delete_flows(namespace: str) -> None:
    """Delete the namespace's StoredFlows and FlowStorages, not waiting: after a test, so that a
    later operator start does not keep retrying (or rebuilding) the failing ones, since no
    namespace controller runs here to remove them with their namespace."""
    kubectl("delete", "storedflows,flowstorages", "--all", "-n", namespace, "--wait=false", check=False)


def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)  # type: ignore[no-any-return]


def condition(obj: dict[str, Any], ctype: str = "Ready") -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def message(obj: dict[str, Any]) -> str:
    """The Ready condition's message ("" when there is none)."""
    return str(condition(obj).get("message", ""))


def wait_for(kind: str, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 30.0, what: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if found.returncode == 0:
            obj = json.loads(found.stdout)
            if predicate(obj):
                return obj
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {kind} {namespace}/{name} {what}: {json.dumps(obj.get('status'))}")


def wait_ready(namespace: str, name: str, kind: str = "storedflow", timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(kind, namespace, name,
                    lambda o: condition(o).get("status") == "True"
                    and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"],
                    timeout, "to be Ready")


def wait_listed(namespace: str, name: str, flows: int, timeout: float = 30.0) -> dict[str, Any]:
    """Until FlowStorage `name`'s status.flows lists at least `flows` flows (it follows them once they
    were quiet SUMMARY_QUIET seconds, so a test that reads it right after its flows got Ready waits)."""
    return wait_for("flowstorage", namespace, name,
                    lambda o: len((o.get("status") or {}).get("flows") or {}) >= flows, timeout,
                    f"to list {flows} flows")


def wait_reason(namespace: str, name: str, reason: str, kind: str = "storedflow",
                timeout: float = 30.0) -> dict[str, Any]:
    return wait_for(kind, namespace, name, lambda o: condition(o).get("reason") == reason
                    and condition(o).get("status") == "False", timeout, f"to have Ready=False reason {reason}")
