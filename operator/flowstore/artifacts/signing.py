"""Optional artifact signing: an HMAC-SHA256 over the flow name and the artifact's digest.

The sha256 in status proves the bytes are the ones recorded; a signature proves the record came
from someone holding the key (the operator), so whoever can edit a StoredFlow's status or the
bucket cannot substitute a flow. Agents holding the same key refuse unsigned or mismatched
artifacts before unpickling or executing anything.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "hmac-sha256:"
_CONTEXT = b"flowstore.dev/artifact-signature/v1\n"


class SignatureError(ValueError):
    """The artifact is unsigned, or its signature does not verify with the agent's key."""


def key_id(key: bytes) -> str:
    """A stable, non-reversible name for a key (rotating the key re-signs every artifact)."""
    return "hmac:" + hmac.new(key, b"flowstore.dev/key-id", hashlib.sha256).hexdigest()[:16]


def sign(key: bytes, flow_name: str, digest: str) -> str:
    message = _CONTEXT + flow_name.encode("utf-8") + b"\n" + digest.encode("ascii")
    return PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(key: bytes, flow_name: str, digest: str, signature: str | None, *, what: str) -> None:
    if not signature:
        raise SignatureError(
            f"{what} is not signed, but this agent requires signed artifacts (a signing key is set); "
            "configure spec.signing on its FlowStorage and let the operator store it again"
        )
    if not hmac.compare_digest(sign(key, flow_name, digest), signature):
        raise SignatureError(
            f"{what}: the signature does not match (wrong key, or the recorded flow name or digest was "
            "changed); refusing to load it"
        )
