"""A StoredFlow and its FlowStorage as the Kubernetes API would return them to an agent, with the
artifact in a real Local storage under a temporary directory (no server: the unit tier)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from flowstore.artifacts import signing, statement
from flowstore.storage.local import Local

UID = "0b7c5a4e-uid-of-etl"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeApi:
    """``get_namespaced_custom_object`` for one StoredFlow (``spec.storageRef: store``) and its
    FlowStorage ``store``; `forbidden` plurals answer 403, as RBAC would."""

    def __init__(self, storedflow: dict[str, Any], flowstorage: dict[str, Any] | None,
                 forbidden: tuple[str, ...] = ()) -> None:
        self.storedflow, self.flowstorage, self.forbidden = storedflow, flowstorage, forbidden
        self.asked: list[str] = []

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> Any:
        from kubernetes.client.exceptions import ApiException

        self.asked.append(plural)
        if plural in self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        obj = self.flowstorage if plural == "flowstorages" else self.storedflow
        if obj is None:  # the API server's Status names the object (a missing kind would not)
            missing = ApiException(status=404, reason="Not Found")
            missing.body = json.dumps({"kind": "Status", "reason": "NotFound", "details": {"name": name}})
            raise missing
        return copy.deepcopy(obj)


def local_flow(directory: Path, data: bytes, fmt: str = "script", *, name: str = "etl",
               **artifact: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(StoredFlow, FlowStorage): `data` stored at ``<directory>/etl-<hash>`` by a Local storage,
    the status as the operator writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    location = directory / f"etl-{hashlib.sha256(data).hexdigest()[:8]}"
    location.write_bytes(data)
    storage = Local(directory=str(directory)).to_status()
    storage["flows"] = {"etl daily": str(location)}
    status = {"location": str(location), "flowName": "etl daily", "storage": storage,
              "artifact": {"url": location.as_uri(), "digest": digest_of(data), "size": len(data), "format": fmt,
                           "revision": 1, "designation": 1, "lastUpdateTime": "2026-11-26T10:00:00Z", **artifact}}
    storedflow = {"metadata": {"name": name, "namespace": "data", "uid": UID},
                  "spec": {"storageRef": {"name": "store"}}, "status": status}
    flowstorage = {"metadata": {"name": "store", "namespace": "data"}, "spec": {"local": {"directory": str(directory)}}}
    return storedflow, flowstorage


def sign_status(status: dict[str, Any], key: bytes | str, *, namespace: str = "data", name: str = "etl",
                uid: str = UID) -> dict[str, Any]:
    """`status` signed in place as the operator signs it (the statement of its revision, with
    `key`: an HMAC key, or an ed25519 private key's PEM), and returned."""
    signer = signing.signer_from_secret(key.encode() if isinstance(key, str) else key, None, where="a test key")
    made = statement.sign(statement.from_status(status, namespace=namespace, name=name, uid=uid), signer)
    status["artifact"].update(signature=made.signature, keyId=made.key_id)
    return status
