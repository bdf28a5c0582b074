"""No silent downgrades: what an agent remembers of the statements it verified.

A signed statement (:mod:`flowstore.artifacts.statement`) stays valid for ever, so whoever may
write a StoredFlow's status could put back the statement of an older revision — one with a known
vulnerability — and it would verify. Each statement therefore carries a ``designation`` that the
operator raises every time it makes a revision current (a new upload, or a revert to an older
revision, which is a new decision and gets a new designation). An agent remembers, per StoredFlow, the
highest designation it has verified and refuses a lower one — unless the caller pinned that revision
(``--revision``, ``digest=``, a pinned pull step): a rollback is then a deliberate act.

The state is small, local and plain (one JSON file per StoredFlow, a few hundred bytes)::

    <cache root>/verified/<sha256(namespace/name)[:32]>.json
        {"namespace": "data", "storedFlow": "etl-daily", "uid": "…", "designation": 9, "revision": 7,
         "digest": "sha256:…", "keyId": "ed25519:…", "verifiedAt": "2026-…Z"}

under the agent cache's root (``$FLOWSTORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/flowstore/agent``,
else ``~/.cache/flowstore/agent``). Updates take an exclusive ``flock`` on ``verified/.lock`` and
replace the file atomically (written only when a newer designation or key is seen), so concurrent
agent processes (a worker's parallel flow runs) never lose a higher designation or read half a
file. A StoredFlow deleted and created again (a new uid)
starts afresh. The directory must belong to this user and be writable by nobody else (else
anyone could reset what it remembers): otherwise the load is refused, saying why. Deleting a
file forgets that StoredFlow (the next statement is believed as the first one). Nothing is kept
when the agent has no key: without signatures, designations prove nothing.

Standard library only, no I/O at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flowstore.artifacts.signing import SignatureError
from flowstore.artifacts.statement import Statement

STATE_DIR = "verified"
_MAX_STATE_BYTES = 64 * 1024


class RollbackRefused(SignatureError):
    """The status names an older revision than one this agent already verified as current, and
    the caller did not pin it."""


class StateError(SignatureError):
    """The agent's memory of verified statements cannot be used (unsafe directory, unreadable
    file), so the statement cannot be admitted: refused like a bad signature, before anything is
    fetched; the message says what to do."""


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """The agent cache's root (shared with the artifact cache)."""
    env = os.environ if environ is None else environ
    configured = env.get("FLOWSTORE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowstore" / "agent"


@dataclasses.dataclass(frozen=True)
class Seen:
    namespace: str
    stored_flow: str
    uid: str
    designation: int
    revision: int
    digest: str
    key_id: str
    verified_at: str

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "storedFlow": self.stored_flow, "uid": self.uid,
                "designation": self.designation, "revision": self.revision, "digest": self.digest, "keyId": self.key_id,
                "verifiedAt": self.verified_at}


class Freshness:
    """The agent's memory of the newest statement it verified, per StoredFlow."""

    def __init__(self, root: Path | None = None) -> None:
        self.directory = (root or default_root()) / STATE_DIR

    def path_for(self, namespace: str, stored_flow: str) -> Path:
        name = hashlib.sha256(f"{namespace}/{stored_flow}".encode()).hexdigest()[:32]
        return self.directory / f"{name}.json"

    def seen(self, namespace: str, stored_flow: str) -> Seen | None:
        """What this agent last remembered of the StoredFlow, or None."""
        self._check_directory()
        return self._read(self.path_for(namespace, stored_flow))

    def admit(self, statement: Statement, key_id: str, *, pinned: bool, what: str) -> Seen | None:
        """Remember `statement` (just verified) unless an older designation than the remembered one
        comes unpinned: RollbackRefused then. Returns what was remembered before."""
        if not pinned and statement.designation < 1:
            raise RollbackRefused(
                f"{what}: the status names revision {statement.revision} with the statement of a retained revision "
                "(designation 0: signed for status.history, never as the current one). If you mean to run revision "
                f"{statement.revision}, pin it (--revision {statement.revision}); otherwise check who may write "
                "storedflows/status")
        self._check_directory()
        path = self.path_for(statement.namespace, statement.stored_flow)
        remembered = self._read(path)  # files are replaced whole: a read without the lock sees one
        if remembered is not None and (remembered.uid, remembered.designation, remembered.revision,
                                       remembered.digest, remembered.key_id) == (
                statement.uid, statement.designation, statement.revision, statement.digest, key_id):
            return remembered  # the usual load: already remembered exactly so, nothing to write or lock
        with self._locked():
            before = self._read(path)
            fresh = before is None or before.uid != statement.uid
            if not fresh and before is not None and not pinned:
                if statement.designation < before.designation:
                    raise RollbackRefused(
                        f"{what}: the status names revision {statement.revision} (designation "
                        f"{statement.designation}), but this agent verified revision {before.revision} (designation "
                        f"{before.designation}) as current on "
                        f"{before.verified_at}: an older signed statement was put back into the status. If you mean "
                        f"to run revision {statement.revision}, pin it (flowstore run/get --revision "
                        f"{statement.revision}, or digest={statement.digest}); otherwise check who may write "
                        "storedflows/status")
                if statement.designation == before.designation and (statement.revision, statement.digest) != (
                        before.revision, before.digest):
                    raise RollbackRefused(
                        f"{what}: designation {statement.designation} was verified for revision {before.revision} "
                        f"({before.digest[:19]}…), and now names revision {statement.revision} "
                        f"({statement.digest[:19]}…); two signed statements cannot share a designation. Refusing it")
            if fresh or before is None or statement.designation > before.designation or (
                    statement.designation == before.designation and key_id != before.key_id):
                self._write(path, Seen(
                    namespace=statement.namespace, stored_flow=statement.stored_flow, uid=statement.uid,
                    designation=statement.designation, revision=statement.revision, digest=statement.digest,
                    key_id=key_id,
                    verified_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
            return before

    # ------------------------------------------------------------------ disk
    def _check_directory(self) -> None:
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(directory)
        except OSError as exc:
            raise StateError(f"cannot create {directory} (where the agent remembers verified revisions): "
                             f"{exc.strerror or exc}; set FLOWSTORE_CACHE_DIR to a directory of this user's") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise StateError(f"{directory} must be a directory of this user (uid {os.geteuid()}) that nobody else can "
                             "write, or anyone could make this agent forget the revisions it verified; fix its owner "
                             "and mode (chmod 700), or set FLOWSTORE_CACHE_DIR to such a directory")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, path: Path) -> Seen | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path} ({exc.strerror or exc}); it must be a file of this user's "
                             "(delete it to forget that StoredFlow's verified revisions)") from None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
                raise StateError(f"{path} is not a file only this user can write; delete it (the agent then forgets "
                                 "that StoredFlow's verified revisions)")
            data = fh.read(_MAX_STATE_BYTES + 1)
        try:
            doc = json.loads(data)
            return Seen(namespace=str(doc["namespace"]), stored_flow=str(doc["storedFlow"]), uid=str(doc["uid"]),
                        designation=_int(doc["designation"]), revision=_int(doc["revision"]),
                        digest=str(doc["digest"]),
                        key_id=str(doc.get("keyId") or ""), verified_at=str(doc.get("verifiedAt") or "?"))
        except (ValueError, KeyError, TypeError):
            raise StateError(f"{path} is not what this agent writes there; delete it (the agent then forgets that "
                             "StoredFlow's verified revisions)") from None

    def _write(self, path: Path, seen: Seen) -> None:
        fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(seen.to_json(), fh, sort_keys=True)
            # atomic, not durable: a crash of the machine may forget the last designation (the
            # memory then holds an older one), never leave half a file; no fsync on a load's path
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    return value
