"""The signed statement: what the operator vouches for about one revision of a StoredFlow.

A bare digest says *which bytes*; it does not say for which StoredFlow, which revision, or where
those bytes are to be fetched from, so a signature over it alone can be replayed onto another
flow, an older revision or another bucket. The operator therefore signs a statement naming all of
it, and an agent rebuilds the same statement from what it asked for (namespace and name), what
the API server says of the object (its uid) and what the status says it is about to fetch (the
revision, the digest, the size, the format, the storage and the location), and verifies the
signature over *that*. Any field that differs — the status copied from another namespace, another
StoredFlow, another revision, or pointed at another bucket, endpoint, repository, image or key —
and the signature does not verify: the agent refuses before any request that carries its
credentials, and before anything is unpickled or run.

The statement (``_type`` ``https://flowstore.dev/statement/v1``)::

    {"_type": …, "namespace": "data", "storedFlow": "etl-daily", "uid": "<metadata.uid>",
     "flowName": "etl daily", "revision": 7, "designation": 9,
     "digest": "sha256:…", "size": 2048, "format": "pickle",
     "storage": {"type": "S3", "bucket": "flows", "endpointURL": "…", "region": "…", …},
     "location": "prod/etl-daily/2026-…", "storedAt": "2026-11-26T10:00:00Z"}

* ``storage`` is ``status.storage`` without ``flows`` (``location`` says it) and ``labels`` (they
  choose agents, not bytes), ``null`` members left out: the backend type and every field that says
  where and how the bytes are read (endpoint, bucket, container, repository, registry, request
  templates, the pinned commit or image digest, …). Nothing in it may steer an agent's request
  without being signed.
* ``revision`` grows by one per stored revision (``status.artifact.revision``); ``designation``
  (``status.artifact.designation``) grows by one every time a revision is made *current* — a GitOps
  revert makes an older revision current again under a new designation. A revision kept in
  ``status.history`` but no longer current is signed with designation 0, so its signature can
  never pass for a current one. An agent remembers the highest designation it verified per
  StoredFlow and refuses a lower one unless the caller pinned a revision
  (:mod:`flowstore.artifacts.freshness`): an old statement put back into the status is told apart
  from a deliberate rollback.
* ``storedAt`` is when the revision's bytes were stored (RFC 3339, UTC).

**Canonical form.** The statement is serialized as RFC 8785 JSON Canonicalization Scheme (JCS):
UTF-8, no whitespace, object members sorted by their names' UTF-16 code units, strings with
JSON's minimal escapes (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other controls as lowercase
``\\u00xx``, everything else literal), numbers as ECMAScript prints them (integers beyond 2^53
are refused). The bytes signed are DSSE's pre-authentication encoding of that JSON under the
payload type :data:`PAYLOAD_TYPE` (``DSSEv1 <len> <type> <len> <json>``), so a statement and its
signature also form a DSSE envelope that in-toto tooling can check with the same public key
(:func:`envelope`).
"""

from __future__ import annotations

import base64
import dataclasses
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from flowstore.artifacts.signing import (
    ED25519_PREFIX,
    HMAC_PREFIX,
    SignatureError,
    Signer,
    Verifier,
)

STATEMENT_TYPE: Final = "https://flowstore.dev/statement/v1"
PAYLOAD_TYPE: Final = "application/vnd.flowstore.statement.v1+json"
#: status.storage members that are not part of where the bytes are
UNSIGNED_STORAGE_FIELDS: Final = frozenset({"flows", "labels"})
_MAX_SAFE_INTEGER = 2**53 - 1


# ---------------------------------------------------------------------- RFC 8785 (JCS)
def canonical_json(value: Any) -> bytes:
    """`value` (None, bool, int, float, str, lists and str-keyed mappings) as RFC 8785 canonical
    JSON. ValueError for anything JCS cannot express exactly (NaN, infinities, integers beyond
    2^53, non-string keys, lone surrogates)."""
    return _encode(value).encode("utf-8")


def _encode(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INTEGER:
            raise ValueError(f"the integer {value} is beyond 2^53 and has no exact JSON number (RFC 8785)")
        return str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        items = []
        for key in sorted(value, key=_utf16_key):
            items.append(_string(key) + ":" + _encode(value[key]))
        return "{" + ",".join(items) + "}"
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    raise ValueError(f"{type(value).__name__} has no JSON form")


def _utf16_key(key: Any) -> bytes:
    if not isinstance(key, str):
        raise ValueError(f"object member names must be strings, not {type(key).__name__}")
    return key.encode("utf-16-be", "surrogatepass")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds a lone surrogate, which UTF-8 cannot carry") from None
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _number(value: float) -> str:
    """ECMAScript's Number.prototype.toString (ECMA-262 7.1.12.1), which RFC 8785 prescribes,
    from the shortest digits that round-trip (Python's repr)."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON number (RFC 8785)")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    digits_tuple = decimal.Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digits_tuple.digits)).lstrip("0")
    exponent = int(digits_tuple.exponent)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        power = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"
    return sign + text


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


# ---------------------------------------------------------------------- the statement
@dataclasses.dataclass(frozen=True)
class Statement:
    namespace: str
    stored_flow: str
    uid: str
    flow_name: str
    revision: int
    designation: int
    digest: str
    size: int
    format: str
    #: status.storage, signed fields only (:func:`signed_storage`)
    storage: Mapping[str, Any]
    #: status.location: the key, path or file the bytes are at
    location: str
    stored_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE, "namespace": self.namespace, "storedFlow": self.stored_flow, "uid": self.uid,
            "flowName": self.flow_name, "revision": self.revision, "designation": self.designation,
            "digest": self.digest, "size": self.size, "format": self.format, "storage": dict(self.storage),
            "location": self.location,
            "storedAt": self.stored_at,
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    def message(self) -> bytes:
        """The bytes a signature covers."""
        return pae(PAYLOAD_TYPE, self.canonical())

    def describe(self) -> str:
        return (f"revision {self.revision} of StoredFlow {self.namespace}/{self.stored_flow} ({self.digest[:19]}…, "
                f"{self.storage.get('type', '?')} {self.location})")


def from_status(status: Mapping[str, Any], *, namespace: str, name: str, uid: str) -> Statement:
    """The statement of the revision `status` names as current (``status.artifact``,
    ``status.location``, ``status.storage``, ``status.flowName``): what the operator signs just
    before it writes that status, and what an agent rebuilds from the status it read — with the
    namespace and name it asked for, and the uid the API server gave the object. For a revision of
    ``status.history``, pass the status as if it were current (``api.history.status_for``).
    SignatureError when a field is missing or not of its type: such a status cannot be checked."""
    what = f"StoredFlow {namespace}/{name}"
    artifact = status.get("artifact")
    storage = status.get("storage")
    if not isinstance(artifact, Mapping) or not isinstance(storage, Mapping):
        raise SignatureError(f"{what} records no artifact and storage to verify")
    numbers: dict[str, int] = {}
    for field, value in (("revision", artifact.get("revision")), ("designation", artifact.get("designation", 0)),
                         ("size", artifact.get("size"))):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SignatureError(f"{what}: status.artifact.{field} is {type(value).__name__}, not a whole number: the "
                                 "status was not written by an operator that signs revisions, or was edited")
        numbers[field] = value
    texts = {}
    for field, value in (("flowName", status.get("flowName")), ("location", status.get("location")),
                         ("artifact.digest", artifact.get("digest")), ("artifact.format", artifact.get("format")),
                         ("artifact.lastUpdateTime", artifact.get("lastUpdateTime")), ("uid", uid)):
        if not isinstance(value, str) or not value:
            raise SignatureError(f"{what}: status.{field} is {type(value).__name__}, not text: the status cannot be "
                                 "verified (edited, or written by an operator that does not sign)")
        texts[field] = value
    try:
        signed = signed_storage(storage)
        canonical_json(signed)
    except ValueError as exc:
        raise SignatureError(f"{what}: status.storage cannot be signed or verified ({exc})") from None
    return Statement(namespace=namespace, stored_flow=name, uid=texts["uid"], flow_name=texts["flowName"],
                     revision=numbers["revision"], designation=numbers["designation"],
                     digest=texts["artifact.digest"], size=numbers["size"], format=texts["artifact.format"],
                     storage=signed, location=texts["location"], stored_at=texts["artifact.lastUpdateTime"])


def signed_storage(storage: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a ``status.storage`` document a statement signs: all but ``flows`` and
    ``labels``, ``null`` members dropped at every depth (the API server may drop them too)."""
    return {k: _without_nulls(v) for k, v in storage.items() if k not in UNSIGNED_STORAGE_FIELDS and v is not None}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_without_nulls(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Signed:
    """A statement's signature and the id of the key that made it (``status.artifact.signature``
    and ``keyId``; the same two fields in each ``status.history`` entry)."""

    signature: str
    key_id: str


def sign(statement: Statement, signer: Signer) -> Signed:
    return Signed(signer.sign(statement.message()), signer.key_id)


def require_signature(signature: Any, key_id: Any, keys: Sequence[Verifier], *, what: str) -> None:
    """SignatureError unless `signature` is one of the schemes this agent checks, with its key id
    (the checks that need no statement: an unsigned or old-style artifact is refused first)."""
    if not keys:
        raise SignatureError(f"{what}: no key to verify with")
    if not signature:
        raise SignatureError(
            f"{what} is not signed, but this agent requires signed artifacts (it holds {_ids(keys)}); set "
            "spec.signing on its FlowStorage and let the operator sign it, or give this agent no key to check "
            "digests only")
    if not isinstance(signature, str) or not isinstance(key_id, str | type(None)):
        raise SignatureError(f"{what}: the signature or key id in status is not text; the status was edited")
    if signature.startswith(HMAC_PREFIX) and not key_id:
        raise SignatureError(
            f"{what} carries an old-style signature (over the flow name and digest only, from an older operator), "
            "which this agent no longer accepts; upgrade the operator: it signs every flow again (a status update, "
            "nothing is uploaded)")
    if not signature.startswith((ED25519_PREFIX, HMAC_PREFIX)):
        raise SignatureError(f"{what}: unknown signature scheme {signature.split(':', 1)[0][:20]!r} "
                             "(expected ed25519 or hmac-sha256)")


def verify(statement: Statement, signature: str | None, key_id: str | None, keys: Sequence[Verifier], *,
           what: str) -> Verifier:
    """The key of `keys` whose signature `signature` is over `statement` (the one the agent
    rebuilt from what it is about to load); SignatureError saying why otherwise. `key_id` picks the
    key to try first; it is a hint, not trust (every key is tried)."""
    require_signature(signature, key_id, keys, what=what)
    assert isinstance(signature, str)
    message = statement.message()
    for key in sorted(keys, key=lambda k: k.key_id != key_id):
        if key.verify(message, signature):
            return key
    if key_id and all(k.key_id != key_id for k in keys):
        wanted = ("the FlowStorage's HMAC key (FLOWSTORE_SIGNING_KEY, or signing_key=)" if key_id.startswith("hmac:")
                  else "the FlowStorage's current public key (FLOWSTORE_VERIFY_KEY, or verify_key=; several keys may "
                  "be given while a key is rotated)")
        raise SignatureError(
            f"{what} is signed with key {key_id[:40]}, which this agent does not hold (it holds {_ids(keys)}); give "
            f"it {wanted}")
    raise SignatureError(
        f"{what}: the signature does not match {statement.describe()} as this agent was about to load it. The "
        "signature covers the namespace, StoredFlow (and its uid), flow name, revision, designation, digest, size, "
        "format, storage and location: the status was edited, or copied from another StoredFlow, revision or place. "
        "Refusing to load it; nothing was fetched")


def _ids(keys: Sequence[Verifier]) -> str:
    return ", ".join(k.key_id for k in keys)


def envelope(statement: Statement, signed: Signed) -> dict[str, Any]:
    """The statement and its ed25519 signature as a DSSE envelope (in-toto's signature wrapper),
    verifiable with the FlowStorage's public key by any DSSE implementation."""
    if not signed.signature.startswith(ED25519_PREFIX):
        raise SignatureError("only ed25519 signatures form a DSSE envelope others can verify")
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(statement.canonical()).decode("ascii"),
            "signatures": [{"keyid": signed.key_id, "sig": signed.signature[len(ED25519_PREFIX):]}]}
