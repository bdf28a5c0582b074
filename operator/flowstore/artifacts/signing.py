"""Keys and signatures: who may vouch for an artifact, and how an agent checks that they did.

Two providers sign a FlowStorage's statements (:mod:`flowstore.artifacts.statement`):

* ``ed25519`` (the one to use): the operator holds the private key (a Secret in the FlowStorage's
  namespace); agents hold only the public key (``FLOWSTORE_VERIFY_KEY``, ``verify_key=``), which
  can check a signature but never make one. Keys are read as PEM (``openssl genpkey -algorithm
  ed25519``: PKCS#8 private, SubjectPublicKeyInfo public) or in OpenSSH's format
  (``ssh-keygen -t ed25519``: the private key file, and the ``ssh-ed25519 AAAA…`` public line).
* ``hmac`` (kept for existing users, weaker): one shared secret signs *and* verifies, so every
  agent that can check a signature can also forge one. Agents give it as ``signing_key=`` /
  ``FLOWSTORE_SIGNING_KEY``.

A signature names its scheme (``ed25519:<base64>``, ``hmac-sha256:<hex>``) and comes with the key
id of the key that made it (``ed25519:<16 hex>``: the start of the sha256 of the raw 32-byte
public key; ``hmac:<16 hex>``), so an agent holding several keys (a rotation under way) knows
which one to try and says which one it lacks. Key ids are names, not trust: a signature is only
believed when a key the agent holds verifies it.

``cryptography`` (pyca) does the ed25519 arithmetic; it is imported when a key is read, and its
absence is an install hint (the ``operator``, ``client`` and ``prefect`` extras carry it).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

PROVIDERS: Final = ("ed25519", "hmac")
#: signature prefixes by provider
ED25519_PREFIX: Final = "ed25519:"
HMAC_PREFIX: Final = "hmac-sha256:"
#: an agent's public keys (PEM text, OpenSSH public key lines, or the path of a file holding them)
VERIFY_KEY_ENV: Final = "FLOWSTORE_VERIFY_KEY"
#: an agent's shared HMAC key (the weaker provider)
SIGNING_KEY_ENV: Final = "FLOWSTORE_SIGNING_KEY"
#: HMAC keys shorter than this are refused (a password, not a key)
MIN_HMAC_KEY = 16
#: the most bytes of key material read from a file or a variable
_MAX_KEY_TEXT = 256 * 1024
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s.*?-----END \1-----", re.DOTALL)
_SSH_PUBLIC = re.compile(rb"^(ssh-ed25519)\s+([A-Za-z0-9+/=]+)(?:\s.*)?$", re.MULTILINE)


class SignatureError(ValueError):
    """A signature is missing, malformed, made with a key the agent does not hold, or does not
    cover what the agent was about to load: refused before anything is fetched or run."""


class KeyFormatError(ValueError):
    """Key material cannot be read as a key of the provider it is meant for."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - the extras carry it
        raise KeyFormatError("ed25519 signatures need the `cryptography` package: install flowstore with the "
                             "client (agents) or operator extra, e.g. pip install 'flowstore[client]'") from None
    return ed25519


# ---------------------------------------------------------------------- key ids
def ed25519_key_id(public_raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def hmac_key_id(key: bytes) -> str:
    """A stable, non-reversible name for an HMAC key."""
    return "hmac:" + hmac.new(key, b"flowstore.dev/key-id", hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------------- signers (the operator)
@dataclasses.dataclass(frozen=True)
class Signer:
    """A key that signs (the operator's): the provider, its key id, and for ed25519 the public
    key agents verify with (PEM), published in the FlowStorage's status."""

    provider: str
    key_id: str
    _key: Any = dataclasses.field(repr=False)
    public_pem: str | None = None

    def sign(self, message: bytes) -> str:
        if self.provider == "ed25519":
            return ED25519_PREFIX + base64.b64encode(self._key.sign(message)).decode("ascii")
        return HMAC_PREFIX + hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verifier(self) -> Verifier:
        """The verifier of this key (ed25519: its public half; hmac: the same secret)."""
        if self.provider == "ed25519":
            return Verifier("ed25519", self.key_id, self._key.public_key())
        return Verifier("hmac", self.key_id, self._key)


def signer_from_secret(value: bytes, provider: str | None, *, where: str) -> Signer:
    """The signing key held in a Secret (`where` names it in messages, never the value).
    `provider` None infers it: a PEM or OpenSSH private key is ed25519, anything else hmac."""
    text = value.strip()
    looks_private = text.startswith(b"-----BEGIN") and b"PRIVATE KEY" in text
    if provider is None:
        provider = "ed25519" if looks_private else "hmac"
    if provider == "hmac":
        if looks_private:
            raise KeyFormatError(f"{where} holds a private key, but spec.signing.provider is hmac; set provider: "
                                 "ed25519 to sign with it")
        if len(value) < MIN_HMAC_KEY:
            raise KeyFormatError(f"the HMAC key in {where} is shorter than {MIN_HMAC_KEY} characters; use a random key "
                                 "(e.g. openssl rand -hex 32)")
        return Signer("hmac", hmac_key_id(value), value)
    if provider != "ed25519":
        raise KeyFormatError(f"unknown signing provider {provider!r}; use one of {', '.join(PROVIDERS)}")
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    if not looks_private:
        raise KeyFormatError(f"{where} does not hold an ed25519 private key (PEM or OpenSSH); make one with "
                             "`openssl genpkey -algorithm ed25519` or `ssh-keygen -t ed25519 -N ''`")
    key: Any
    try:
        if b"OPENSSH PRIVATE KEY" in text:
            key = serialization.load_ssh_private_key(text, password=None)
        else:
            key = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise KeyFormatError(f"{where} holds no readable private key ({type(exc).__name__}: a passphrase-protected "
                             "or damaged key?); store an unencrypted ed25519 key") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        raise KeyFormatError(f"{where}: the private key cannot be used ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFormatError(f"{where} holds a {type(key).__name__.removeprefix('_')}, not an ed25519 key; make one "
                             "with `openssl genpkey -algorithm ed25519`")
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return Signer("ed25519", ed25519_key_id(raw), key, pem)


# ---------------------------------------------------------------------- verifiers (agents)
@dataclasses.dataclass(frozen=True)
class Verifier:
    """A key that checks signatures. An ed25519 verifier holds only a public key: it has no way
    to sign."""

    provider: str
    key_id: str
    _key: Any = dataclasses.field(repr=False)

    def verify(self, message: bytes, signature: str) -> bool:
        if self.provider == "ed25519":
            if not signature.startswith(ED25519_PREFIX):
                return False
            try:
                raw = base64.b64decode(signature[len(ED25519_PREFIX):], validate=True)
            except (binascii.Error, ValueError):
                return False
            if len(raw) != 64:
                return False
            from cryptography.exceptions import InvalidSignature

            try:
                self._key.verify(raw, message)
            except InvalidSignature:
                return False
            return True
        expected = HMAC_PREFIX + hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)


def hmac_verifier(key: bytes | str) -> Verifier:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return Verifier("hmac", hmac_key_id(raw), raw)


def public_keys(text: bytes, *, where: str) -> list[Verifier]:
    """Every ed25519 public key in `text`: PEM blocks (``PUBLIC KEY``) and OpenSSH lines
    (``ssh-ed25519 AAAA…``). A private key, another algorithm or nothing at all is refused."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    found: list[Verifier] = []
    for match in _PEM_BLOCK.finditer(text):
        label = match.group(1).decode()
        if "PRIVATE" in label:
            raise KeyFormatError(f"{where} holds a private key: agents need only the public key (which cannot sign); "
                                 "give them `openssl pkey -in KEY -pubout`, and keep the private key in the "
                                 "operator's Secret")
        if label != "PUBLIC KEY":
            raise KeyFormatError(f"{where} holds a PEM {label!r} block; expected ed25519 PUBLIC KEY blocks")
        try:
            key = serialization.load_pem_public_key(match.group(0))
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"{where}: a PUBLIC KEY block cannot be read ({exc})") from None
        except Exception as exc:  # UnsupportedAlgorithm
            raise KeyFormatError(f"{where}: a PUBLIC KEY block cannot be used ({type(exc).__name__})") from None
        found.append(_public_verifier(key, ed25519, where))
    for match in _SSH_PUBLIC.finditer(text):
        try:
            key = serialization.load_ssh_public_key(match.group(1) + b" " + match.group(2))
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"{where}: an ssh-ed25519 line cannot be read ({exc})") from None
        found.append(_public_verifier(key, ed25519, where))
    if not found:
        raise KeyFormatError(f"{where} holds no ed25519 public key (a PEM PUBLIC KEY block, or an ssh-ed25519 line)")
    return found


def _public_verifier(key: Any, ed25519: Any, where: str) -> Verifier:
    from cryptography.hazmat.primitives import serialization

    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFormatError(f"{where} holds a {type(key).__name__.removeprefix('_')}, not an ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Verifier("ed25519", ed25519_key_id(raw), key)


KeySource = str | bytes | os.PathLike[str] | Verifier


def verifiers_from(verify_key: KeySource | Sequence[KeySource] | None = None, *,
                   environ: Mapping[str, str] | None = None) -> list[Verifier]:
    """An agent's public keys: `verify_key` (PEM/OpenSSH text, a file's path, a Verifier, or a list
    of these — several keys, e.g. during a rotation), else ``$FLOWSTORE_VERIFY_KEY`` (text or a
    path), else none. Set but empty, unreadable or holding no key is an error, never
    "verification off"."""
    env = os.environ if environ is None else environ
    if verify_key is None:
        if VERIFY_KEY_ENV not in env:
            return []
        sources: list[KeySource] = [env[VERIFY_KEY_ENV]]
        origin = VERIFY_KEY_ENV
    else:
        sources = list(verify_key) if isinstance(verify_key, list | tuple) else [verify_key]  # type: ignore[list-item]
        origin = "verify_key"
    keys: list[Verifier] = []
    for source in sources:
        keys.extend(_read_source(source, origin))
    if not keys:
        raise KeyFormatError(f"{origin} is set but holds no key; set it to the FlowStorage's public key (PEM text or "
                             f"a file's path), or unset it to verify digests only")
    return _unique(keys)


def _read_source(source: KeySource, origin: str) -> list[Verifier]:
    if isinstance(source, Verifier):
        return [source]
    if isinstance(source, os.PathLike):
        return public_keys(_read_file(Path(source), origin), where=f"{origin} ({os.fspath(source)})")
    data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    if not data.strip():
        raise KeyFormatError(f"{origin} is set but empty; set it to the FlowStorage's public key (PEM text or a "
                             "file's path), or unset it to verify digests only")
    if b"-----BEGIN" in data or data.lstrip().startswith(b"ssh-"):
        return public_keys(data[:_MAX_KEY_TEXT], where=origin)
    path = Path(data.decode("utf-8", "replace").strip())
    return public_keys(_read_file(path, origin), where=f"{origin} ({path})")


def _read_file(path: Path, origin: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX_KEY_TEXT)
    except OSError as exc:
        raise KeyFormatError(f"{origin}: cannot read the key file {path} ({exc.strerror or exc}); it holds either "
                             "the public key itself (PEM) or the path of a file with it") from None


def _unique(keys: Iterable[Verifier]) -> list[Verifier]:
    seen: dict[str, Verifier] = {}
    for key in keys:
        seen.setdefault(key.key_id, key)
    return list(seen.values())


def hmac_key_from(signing_key: bytes | str | None, *, environ: Mapping[str, str] | None = None) -> bytes | None:
    """An agent's shared HMAC key: the argument, else ``$FLOWSTORE_SIGNING_KEY``, else none. Set
    but empty is an error, never "verification off"."""
    env = os.environ if environ is None else environ
    if signing_key is not None:
        key, where = signing_key, "the signing key given"
    elif SIGNING_KEY_ENV in env:
        key, where = env[SIGNING_KEY_ENV], SIGNING_KEY_ENV
    else:
        return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw.strip():
        raise SignatureError(f"{where} is set but empty, so no signature could be checked; set it to the "
                             "FlowStorage's signing key, or unset it to check digests only")
    return raw
