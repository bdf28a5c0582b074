"""What an agent does with a signed status, before anything else: rebuild the statement of the
revision it is about to load, verify its signature with the keys it holds, and refuse a
designation older than one it verified (unless the caller pinned the revision).

Called with the status to load from (the StoredFlow's own, or — for a pinned revision — the status
as if that revision were current) and the object's uid as the API returned it. No
network: the API server was read already, and nothing has been requested from the storage yet.
A :class:`Verified` result vouches for ``status.storage`` and ``status.location`` as the operator
wrote them; the agent then still checks that place against what it trusts (its FlowStorage, or
``FLOWSTORE_TRUSTED_STORAGES``: ``flowstore.agent.trust``) before its credentials go there
(``flowstore.client``).

An agent without keys (no ``verify_key=``/``FLOWSTORE_VERIFY_KEY``, no ``signing_key=``/
``FLOWSTORE_SIGNING_KEY``) verifies digests only, as before: :func:`agent_keys` is empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from flowstore.artifacts import signing, statement
from flowstore.artifacts.freshness import Freshness, Seen
from flowstore.artifacts.signing import KeySource, SignatureError, Verifier
from flowstore.artifacts.statement import Statement


@dataclasses.dataclass(frozen=True)
class Verified:
    """A statement verified with one of the agent's keys (and admitted by its memory)."""

    statement: Statement
    key: Verifier
    #: what the agent remembered of this StoredFlow before (None: the first statement it sees)
    remembered: Seen | None

    def describe(self) -> str:
        return f"revision {self.statement.revision}, signed with {self.key.key_id}"

    def signed_status(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """`status` with its storage document replaced by the signed one (plus the one flow at
        its signed location): what the agent then fetches with, so nothing the signature does
        not cover (``labels``, ``flows``, a member added to the status) can steer a request."""
        storage = dict(self.statement.storage)
        storage["flows"] = {self.statement.flow_name: self.statement.location}
        return {**status, "storage": storage, "location": self.statement.location}


def agent_keys(verify_key: KeySource | Sequence[KeySource] | None = None, signing_key: bytes | str | None = None, *,
               environ: Mapping[str, str] | None = None) -> list[Verifier]:
    """The keys this agent verifies with: ed25519 public keys (`verify_key`, else
    ``$FLOWSTORE_VERIFY_KEY``) and the shared HMAC key (`signing_key`, else
    ``$FLOWSTORE_SIGNING_KEY``; the weaker kind). Set but empty or unreadable is an error."""
    try:
        keys = signing.verifiers_from(verify_key, environ=environ)
    except signing.KeyFormatError as exc:
        raise SignatureError(str(exc)) from None
    shared = signing.hmac_key_from(signing_key, environ=environ)
    if shared is not None:
        keys.append(signing.hmac_verifier(shared))
    return keys


def check(status: Mapping[str, Any], keys: Sequence[Verifier], *, namespace: str, name: str, uid: str,
          pinned: bool, memory: Freshness | None = None) -> Verified:
    """Verify the statement of the revision `status` names (see module docstring); `namespace`/
    `name` are what the agent asked for, `uid` the StoredFlow's ``metadata.uid`` as the API server
    gave it. `pinned`: the caller asked for this revision or digest on purpose (an older one is
    then allowed). SignatureError (RollbackRefused for an older designation) otherwise."""
    what = f"StoredFlow {namespace}/{name}"
    artifact = status.get("artifact")
    artifact = artifact if isinstance(artifact, Mapping) else {}
    statement.require_signature(artifact.get("signature"), artifact.get("keyId"), keys, what=what)
    stmt = statement.from_status(status, namespace=namespace, name=name, uid=uid)
    key = statement.verify(stmt, artifact.get("signature"), artifact.get("keyId"), keys, what=what)
    before = (memory or Freshness()).admit(stmt, key.key_id, pinned=pinned, what=what)
    return Verified(statement=stmt, key=key, remembered=before)
