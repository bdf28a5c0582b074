"""What a storage's configuration names in the cluster: the fields of a FlowStorage block that
point at ConfigMaps or Secrets, and what the storage is given in their place.

A Storage class declares its fields (:attr:`Storage.config_refs`); the reconcile core reads the
objects they name, through its ports, and hands the storage their contents: the storage itself
never reads the cluster, and the generic core knows no backend's fields. Credentials
(``credentialsSecretRef``) are common to every backend and are not declared here.

Three shapes cover what the CRD has:

- :class:`KeyRef` — ``{configMapRef: {name, key}}`` (or ``secretRef``): the storage gets that
  key's content (Docker's ``dockerfile``);
- :class:`FileRefs` — ``[{path, configMapRef|secretRef: {name, key}}]``: the storage gets
  ``{path: bytes}`` (Docker's ``files``);
- :class:`SecretKeys` — ``{name}`` of a Secret whose listed keys the storage gets as text under
  another field (Docker's ``daemonTLSSecretRef`` → ``daemonTLS``; git's ``verify.secretRef`` →
  ``verifyKeys``, the field a dotted path into the block).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class KeyRef:
    """`field` holds ``{configMapRef|secretRef: {name, key}}``; the storage gets the key's content
    in its place (decoded UTF-8 text when `text`, else bytes)."""

    field: str
    text: bool = False


@dataclasses.dataclass(frozen=True)
class FileRefs:
    """`field` holds a list of ``{path, configMapRef|secretRef: {name, key}}``; the storage gets
    ``{path: bytes}`` in its place."""

    field: str


@dataclasses.dataclass(frozen=True)
class SecretKeys:
    """`field` holds ``{name}`` of a Secret; the storage gets ``{key: text}`` of those of `keys`
    the Secret has, under `into`. `hint` says what the Secret must hold (in the message when it
    is missing)."""

    field: str
    into: str
    keys: tuple[str, ...]
    hint: str = ""
    #: keys ending so are given too (git's OpenPGP keys: ``*.asc``)
    suffixes: tuple[str, ...] = ()


ConfigRef = KeyRef | FileRefs | SecretKeys
