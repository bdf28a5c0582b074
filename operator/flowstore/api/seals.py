"""Seals: the operator's mark on the status records it acts on later (docs/security.md).

Whoever may patch ``storedflows/status`` is not necessarily whoever wrote the spec, and a status
record the operator reads back can aim its next request: a Webhook's recorded build response
names the object a DELETE goes to, a Docker record names the image whose manifest is deleted,
``status.storing`` names where an upload goes and what an interrupted one left. So before the
operator deletes, overwrites or replays anything a record names by its *recorded state*, it checks
that record's seal: an HMAC-SHA256, with a key only the operator holds (a Secret in its own
namespace, ``controller/record_key.py``), over what the record addresses and the StoredFlow it
belongs to (namespace, name and uid: a record copied from another StoredFlow does not verify).

A record without a valid seal is not acted on (left in place, with a Warning that says so). What
a location alone addresses needs no seal: it is checked against the flow's own places instead
(``publishers/base.owned``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Final

#: the prefix of a seal as status records it (the scheme, so another one can follow)
PREFIX: Final = "hmac-sha256:"
#: a record key shorter than this is refused (the operator makes 32 random bytes)
MIN_KEY_BYTES: Final = 32
#: what a history entry's seal leaves out: what changes while the revision stays the same
REVISION_UNSEALED: Final = frozenset({"supersededAt", "signature", "keyId", "seal"})


def canonical(value: Any) -> Any:
    """`value` as the API server hands it back: a float that is a whole number reads back as an
    integer (the server's JSON keeps no ``.0``), so a seal over it must not depend on which."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Seals:
    """Seals for the records of one StoredFlow, with the operator's record key."""

    key: bytes = dataclasses.field(repr=False)
    namespace: str
    name: str
    uid: str
    #: where the StoredFlow's FlowStorage puts artifacts (``status.historyStorage``): a record
    #: sealed for another storage (the flow moved) does not address this one's objects
    place: str = ""

    def _mac(self, kind: str, *fields: Any) -> str:
        message = json.dumps([kind, self.namespace, self.name, self.uid, self.place, *canonical(list(fields))],
                             sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
        return PREFIX + hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    def state(self, location: str, state: Mapping[str, Any] | None) -> str | None:
        """The seal of an artifact's backend `state` at `location` (None when there is no state:
        the location alone addresses the object)."""
        return self._mac("state", location, dict(state)) if state else None

    def holds_state(self, location: str, state: Mapping[str, Any] | None, seal: str | None) -> bool:
        """Whether the operator recorded `state` at `location` for this StoredFlow (no state: yes)."""
        expected = self.state(location, state)
        return expected is None or (seal is not None and hmac.compare_digest(expected, seal))

    def revision(self, doc: Mapping[str, Any]) -> str:
        """The seal of a ``status.history`` entry (as ``Revision.to_status`` writes it): all it says
        of the revision but when it stopped being current and its signature. Only a sealed entry
        is signed (``reconcile/signatures.py``): the operator vouches for what it recorded."""
        return self._mac("revision", {k: v for k, v in doc.items() if k not in REVISION_UNSEALED})

    def holds_revision(self, doc: Mapping[str, Any], seal: str | None) -> bool:
        return seal is not None and hmac.compare_digest(self.revision(doc), seal)

    def storing(self, inputs_digest: str, location: str, idempotency_key: str) -> str:
        """The seal of a ``status.storing`` record."""
        return self._mac("storing", inputs_digest, location, idempotency_key)

    def holds_storing(self, inputs_digest: str, location: str, idempotency_key: str, seal: str | None) -> bool:
        return seal is not None and hmac.compare_digest(self.storing(inputs_digest, location, idempotency_key), seal)


def seals_for(key: bytes, obj: Mapping[str, Any], place: str = "") -> Seals:
    """The seals of StoredFlow `obj`'s records in the storage `place` (``storage_marker``)."""
    meta = obj.get("metadata") or {}
    return Seals(key, str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or ""),
                 place)
