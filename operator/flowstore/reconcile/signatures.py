"""Signing what a StoredFlow's status says (docs/signing.md).

The signing key is read once per pass (:func:`read_signer`). Just before a Ready status is written,
:func:`sign_status` signs the statement of the revision ``status.artifact`` names — built from that
very status by the function agents use to rebuild it (``artifacts.statement.from_status``), so
the two can never disagree — and puts the signature and key id in ``status.artifact``; each
``status.history`` entry gets its own (the statement of that revision, designation 0 unless it
is the current one). Signing is deterministic, so a pass that changes nothing writes the same
signatures; a new key changes every signature at once: a status update, nothing stored again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowstore.api.constants import Reason
from flowstore.api.history import History, view_for
from flowstore.api.models import SpecError, StorageSpec
from flowstore.api.seals import Seals
from flowstore.artifacts import statement
from flowstore.artifacts.signing import KeyFormatError, SignatureError, Signer, signer_from_secret
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.ports import Ports

SIGNED_FIELDS = ("signature", "keyId")


def read_signer(ports: Ports, namespace: str, spec: StorageSpec) -> Signer | None:
    """The key spec.signing names (its Secret read now), or None when the storage does not sign.
    A missing Secret or key stalls (rechecked); a key that is not what the provider needs is a
    spec error saying how to make one."""
    signing = spec.signing
    if signing is None:
        return None
    secret = ports.get_secret(namespace, signing.secret_name)
    if secret is None:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {signing.secret_name!r} (spec.signing.secretRef) was not found in namespace {namespace!r}; "
            "create it or remove spec.signing.", stalled=True)
    value = (secret.get("data") or {}).get(signing.key)
    if not value:
        raise ReconcileError(
            Reason.SECRET_NOT_FOUND,
            f"Secret {signing.secret_name!r} has no key {signing.key!r} (spec.signing.secretRef.key); put the signing "
            "key there (docs/signing.md).", stalled=True)
    try:
        return signer_from_secret(str(value).encode("utf-8"), signing.provider,
                                  where=f"Secret {signing.secret_name!r} (key {signing.key!r})")
    except KeyFormatError as exc:
        raise SpecError(str(exc)) from None


def sign_status(status: dict[str, Any], obj: Mapping[str, Any], signer: Signer | None, *,
                seals: Seals | None = None, refused: list[int] | None = None) -> bool:
    """Sign `status` in place (see module docstring): ``status.artifact`` and every
    ``status.history`` entry, each over its own revision's statement (``history.status_for``: the
    status as it reads with that revision current, so an agent loading it pinned rebuilds exactly
    that statement); without a signer, remove every signature. Returns whether a signature
    changed (a new key, or a new revision).

    Only what the operator recorded is signed: an entry whose seal holds (``api/seals.py``), or
    one that already carries the very signature this key makes of it (signed before; it is
    sealed now). Any other entry (a status writer's) loses its signature and its revision
    number goes to `refused`: agents that verify signatures refuse it."""
    meta = obj.get("metadata") or {}
    namespace, name, uid = str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("uid") or "")
    changed = False
    entries = status.get(History.HISTORY)
    history = History.read(status)  # read once (status_for would read it again per entry)
    vouched: set[int] = set()
    for entry in entries if isinstance(entries, list) else []:
        found = history.find(revision=entry.get("revision")) if isinstance(entry, dict) else None
        if found is None:  # an entry History.read leaves out (unreadable): not signed
            for field in SIGNED_FIELDS:
                if isinstance(entry, dict):
                    entry.pop(field, None)
            continue
        sealed = seals is not None and seals.holds_revision(found.to_status(), found.seal)
        signed = _sign(entry, view_for(status, history, found), signer, sealed, namespace=namespace, name=name,
                       uid=uid)
        if signed is None:
            if refused is not None:
                refused.append(found.revision)
            continue
        changed |= signed
        vouched.add(found.revision)
        if not sealed and seals is not None and signer is not None:  # signed before sealing existed
            entry["seal"] = seals.revision(found.to_status())
    artifact = status.get("artifact")
    if isinstance(artifact, dict):
        current = history.current in vouched or (signer is None and history.current is not None)
        signed = _sign(artifact, status, signer, current, namespace=namespace, name=name, uid=uid)
        changed |= bool(signed)
    return changed


def _sign(target: dict[str, Any], status: Mapping[str, Any], signer: Signer | None, vouched: bool, *,
          namespace: str, name: str, uid: str) -> bool | None:
    """Put the signature of the statement `status` names (and its key id) into `target`, when the
    operator `vouched` for it or `target` already carries that very signature; else remove it and
    return None. Returns whether the signature changed."""
    before = target.get("signature")
    if signer is None:
        for field in SIGNED_FIELDS:
            target.pop(field, None)
        return before is not None
    try:
        signed = statement.sign(statement.from_status(status, namespace=namespace, name=name, uid=uid), signer)
    except SignatureError as exc:
        raise ReconcileError(Reason.BACKEND_ERROR, f"cannot sign the status: {exc}", stalled=False,
                             retry_after=60.0) from None
    if not vouched and before != signed.signature:
        for field in SIGNED_FIELDS:
            target.pop(field, None)
        return None
    target["signature"], target["keyId"] = signed.signature, signed.key_id
    return before != signed.signature


def signing_status(signer: Signer | None) -> dict[str, Any] | None:
    """FlowStorage ``status.signing``: the key agents need (never the private half)."""
    if signer is None:
        return None
    doc: dict[str, Any] = {"provider": signer.provider, "keyId": signer.key_id}
    if signer.public_pem:
        doc["publicKey"] = signer.public_pem
    return doc
