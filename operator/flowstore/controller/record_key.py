"""The operator's record key: what seals the status records it acts on later (``api/seals.py``).

32 random bytes under ``key`` in a Secret of the operator's own namespace (``--record-key-secret``,
default ``flowstore-record-key``), made by the first operator that finds none, immutable, and
shared by every replica and shard of one installation (they read the same Secret). Tenants never
read it: the chart grants Secrets of the operator's namespace to no one else. Deleting the Secret
rotates the key: records sealed with the old one are then left in place (a Warning names each).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from typing import Final

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from flowstore.api.constants import MANAGED_BY, MANAGED_BY_LABEL
from flowstore.api.seals import MIN_KEY_BYTES

log = logging.getLogger(__name__)

DEFAULT_SECRET: Final = "flowstore-record-key"  # noqa: S105 - a Secret's name, not a secret
#: the key of the Secret's data that holds the record key
DATA_KEY: Final = "key"
#: how long a start waits for an API server that does not answer yet
CONNECT_SECONDS: Final = 60.0


class RecordKeyError(Exception):
    """The record key can be neither read nor made: the message says what to grant or fix."""


def load_record_key(core: client.CoreV1Api, namespace: str, name: str = DEFAULT_SECRET, *,
                    connect_seconds: float = CONNECT_SECONDS) -> bytes:
    """The record key in Secret ``namespace/name``; made there when there is none."""
    where = f"Secret {namespace}/{name}"
    deadline = time.monotonic() + connect_seconds
    while True:
        try:
            return _read_or_make(core, namespace, name, where)
        except ApiException as exc:
            if exc.status in (401, 403):
                raise RecordKeyError(
                    f"the operator may not read or create {where} (HTTP {exc.status}): grant its ServiceAccount "
                    f"get and create on secrets in namespace {namespace} (the chart does), or name another Secret "
                    "with --record-key-secret") from None
            if exc.status is not None and exc.status < 500 and exc.status != 429:
                raise RecordKeyError(f"could not read or create {where}: HTTP {exc.status} {exc.reason}") from None
            problem = f"HTTP {exc.status} {exc.reason}"
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # connection refused, timeouts
            problem = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise RecordKeyError(f"could not read or create {where}: {problem}")
        log.info("waiting for the API server to read the record key: %s", problem)
        time.sleep(2.0)


def _read_or_make(core: client.CoreV1Api, namespace: str, name: str, where: str) -> bytes:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
    else:
        return _key_of(secret, where)
    key = secrets.token_bytes(32)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={MANAGED_BY_LABEL: MANAGED_BY}),
        type="Opaque", immutable=True, data={DATA_KEY: base64.b64encode(key).decode()})
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return _key_of(core.read_namespaced_secret(name, namespace), where)  # another replica made it first
    log.info("made the record key in %s", where)
    return key


def _key_of(secret: client.V1Secret, where: str) -> bytes:
    encoded = (secret.data or {}).get(DATA_KEY) or ""
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < MIN_KEY_BYTES:
        raise RecordKeyError(f"{where} holds no record key of at least {MIN_KEY_BYTES} bytes under {DATA_KEY!r}: "
                             "delete it and the operator makes one (what the old key sealed is then left in place)")
    return key
