"""The agent's cache: verified artifacts and extracted bundles, by digest, for ``flowstore.client``
and ``flowstore.prefect`` alike (one cache, one meaning of ``FLOWSTORE_CACHE_DIR``).

Nothing on disk is trusted because it is in the cache. Layout, under the root::

    artifacts/<hex>     an artifact's bytes (read-only); rehashed against <hex> on every use
    bundles/<hex>/      a bundle's files (read-only tree); compared with the bundle's manifest,
                        taken from artifacts/<hex>, on every use, and extracted again otherwise
    locks/<hex>.use     shared (flock) by every process using or pinning the entry; eviction
                        takes it exclusively, without waiting, so it never removes an entry in use
    locks/<hex>.fill    exclusive while one process downloads or extracts the entry (the others
                        wait for it, then find it there: one download among many processes)

An entry is only used when it is what this process would have written: a regular file (or a
tree of directories and regular files) owned by this user, writable by nobody else, never a
link. A directory or link planted at a digest's name (digests are public) is removed and the
entry made again; when it cannot be removed, the load fails saying where. The root and each
directory above it must not be writable by other users (unless sticky, like /tmp), or someone
could swap an entry between its check and its use: the cache then refuses to work, saying why.

Bounded by ``FLOWSTORE_CACHE_MAX_BYTES`` (default 1Gi): after an entry is added, and on
``flowstore cache prune``, the least recently used entries that have not been used for
``FLOWSTORE_CACHE_MIN_AGE`` (default 10m) are evicted until the cache fits; entries in use or
pinned are never evicted. A process pins what it runs (a bundle it imported, the revision a pull
step prepared) until it exits: the kernel drops its locks when it ends, however it ends.

Standard library only, no I/O at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from flowstore.artifacts import bundle as bundles

#: defaults of FLOWSTORE_CACHE_MAX_BYTES and FLOWSTORE_CACHE_MIN_AGE
DEFAULT_MAX_BYTES = 2**30
DEFAULT_MIN_AGE = 600.0
#: leftovers of a process that died while filling (staging files, trees being removed) go after this
STALE_SECONDS = 3600.0
_HEX = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class CacheError(Exception):
    """The cache cannot be used as it is configured or found; the message says what to do."""


# ---------------------------------------------------------------------- settings
def parse_size(text: str, *, what: str) -> int:
    """``1073741824``, ``1Gi``, ``500M``, ``64k``: bytes (decimal units, or binary with ``i``)."""
    match = _SIZE.match(text)
    if not match:
        raise CacheError(f"{what}={text!r} is not a size (e.g. 2Gi, 500M, 1048576)")
    number, unit, binary = match.groups()
    table = _BINARY if binary else _UNITS
    return int(float(number) * table[unit.lower()])


def parse_duration(text: str, *, what: str) -> float:
    """``600``, ``90s``, ``10m``, ``1h``, ``2d``: seconds."""
    match = _DURATION.match(text)
    if not match:
        raise CacheError(f"{what}={text!r} is not a duration (e.g. 10m, 1h, 90s, 600)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Settings:
    root: Path
    max_bytes: int = DEFAULT_MAX_BYTES
    min_age: float = DEFAULT_MIN_AGE

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """``FLOWSTORE_CACHE_DIR`` (else ``$XDG_CACHE_HOME/flowstore/agent``, else
        ``~/.cache/flowstore/agent``), ``FLOWSTORE_CACHE_MAX_BYTES``, ``FLOWSTORE_CACHE_MIN_AGE``."""
        env = os.environ if environ is None else environ
        configured = env.get("FLOWSTORE_CACHE_DIR")
        if configured is not None and not configured.strip():
            raise CacheError("FLOWSTORE_CACHE_DIR is set but empty; unset it (the default is "
                             "~/.cache/flowstore/agent) or name a directory")
        if configured:
            root = Path(configured).expanduser()
        else:
            base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            root = Path(base) / "flowstore" / "agent"
        max_bytes = parse_size(env["FLOWSTORE_CACHE_MAX_BYTES"], what="FLOWSTORE_CACHE_MAX_BYTES") \
            if env.get("FLOWSTORE_CACHE_MAX_BYTES") else DEFAULT_MAX_BYTES
        min_age = parse_duration(env["FLOWSTORE_CACHE_MIN_AGE"], what="FLOWSTORE_CACHE_MIN_AGE") \
            if env.get("FLOWSTORE_CACHE_MIN_AGE") else DEFAULT_MIN_AGE
        return cls(root=root.absolute(), max_bytes=max_bytes, min_age=min_age)


def hex_of(digest: str) -> str:
    """``sha256:<hex>`` (or the bare hex) -> hex; CacheError for anything else."""
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match:
        return match.group(1)
    if isinstance(digest, str) and _HEX.match(digest):
        return digest
    raise CacheError(f"not a sha256 digest: {str(digest)[:80]!r}")


# ---------------------------------------------------------------------- what ls and prune report
@dataclasses.dataclass(frozen=True)
class Entry:
    digest: str  # sha256:<hex>
    size: int  # bytes on disk: the artifact plus its extracted files
    last_used: float  # epoch seconds
    in_use: bool  # a process holds it (loading it, or pinned for its run)
    kinds: tuple[str, ...]  # "artifact", "bundle"


@dataclasses.dataclass(frozen=True)
class PruneResult:
    evicted: tuple[Entry, ...]
    kept: tuple[Entry, ...]
    freed: int
    total_after: int
    dry_run: bool


# ---------------------------------------------------------------------- the cache
#: use-locks this process holds for the rest of its life (pins), by lock path
_PINS: dict[str, int] = {}


class Cache:
    """One agent cache (see the module docstring). Cheap to make: nothing is touched until used."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_environment()
        self.root = self.settings.root
        self._checked = False
        #: subdirectories checked once: the root is private (no one else can swap them after)
        self._dirs: dict[str, Path] = {}

    # ------------------------------------------------------------------ artifacts
    def artifact(self, digest: str, fetch: Callable[[], bytes], *, size: int | None = None,
                 pin: bool = False) -> tuple[bytes, bool]:
        """The bytes of the artifact `digest`, and whether `fetch` was called for them. Cached
        bytes are used only if they hash to `digest` (and have `size`, when given); `fetch` must
        return bytes already verified, which are checked again before they are kept. `pin`: keep
        the entry from eviction until this process exits (or :meth:`release`)."""
        key = hex_of(digest)
        with self._using(key, pin=pin):
            data = self._read_artifact(key, size)
            if data is not None:
                return data, False
            with self._lock(key, "fill"):
                data = self._read_artifact(key, size)  # another process may have filled it meanwhile
                if data is not None:
                    return data, False
                data = fetch()
                if hashlib.sha256(data).hexdigest() != key:
                    raise CacheError(f"refusing to cache bytes that do not hash to sha256:{key}")
                self._write_artifact(key, data)
        self._prune_quietly()
        return data, True

    def _read_artifact(self, key: str, size: int | None) -> bytes | None:
        """The cached bytes, or None unless they are a regular file of this user's, of `size`
        bytes, hashing to `key` (whatever else is there is replaced when the entry is filled)."""
        path = self._dir("artifacts") / key
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # missing, or a link (ELOOP): not an entry
            return None
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not _own_file(info) or (size is not None and info.st_size != size):
                return None
            data = fh.read(info.st_size + 1)
        if len(data) != info.st_size or hashlib.sha256(data).hexdigest() != key:
            return None  # altered or truncated on disk: never served
        return data

    def _write_artifact(self, key: str, data: bytes) -> None:
        directory = self._dir("artifacts")
        fd, staging = tempfile.mkstemp(prefix=f".{key[:16]}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:  # no fsync: a file a crash left short is rehashed, dropped
                fh.write(data)
            os.chmod(staging, 0o400)
            self._discard(directory / key)  # whatever was planted there
            os.replace(staging, directory / key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)

    # ------------------------------------------------------------------ bundles
    def bundle(self, digest: str, unpacked: bundles.Bundle, *, pin: bool = True) -> Path:
        """The directory holding the files of bundle `digest` (whose verified contents are
        `unpacked`), checked against them now: extracted again unless every file is there, the
        same bytes, and nothing else is (``__pycache__`` of this user aside). Pinned by default:
        modules imported from it are read lazily, for as long as the process runs."""
        key = hex_of(digest)
        with self._using(key, pin=pin):
            target = self._dir("bundles") / key
            if self._tree_matches(target, unpacked):
                return target
            with self._lock(key, "fill"):
                if not self._tree_matches(target, unpacked):
                    self._extract(key, unpacked)
        self._prune_quietly()
        return target

    def _tree_matches(self, target: Path, unpacked: bundles.Bundle) -> bool:
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(info.st_mode) or not _own(info):
            return False  # planted, or not this user's: replaced when the entry is filled
        expected = unpacked.files
        seen: set[str] = set()
        for directory, dirnames, filenames in os.walk(target, followlinks=False):
            relative = os.path.relpath(directory, target)
            prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            cached = prefix.rstrip("/").split("/")[-1] == "__pycache__"
            for name in dirnames:
                if not stat.S_ISDIR((entry := os.lstat(os.path.join(directory, name))).st_mode) or not _own(entry):
                    return False
            for name in filenames:
                path = os.path.join(directory, name)
                entry = os.lstat(path)
                if not _own_file(entry):
                    return False
                if cached and name.endswith(".pyc"):  # Python's bytecode, written as this user (root)
                    continue
                relative_path = prefix + name
                content = expected.get(relative_path)
                if content is None or entry.st_size != len(content) or _read_file(path) != content:
                    return False
                seen.add(relative_path)
        return seen == set(expected)

    def _extract(self, key: str, unpacked: bundles.Bundle) -> None:
        directory = self._dir("bundles")
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=directory))
        try:
            bundles.extract(unpacked, str(staging))
            _make_read_only(staging)
            self._discard(directory / key)
            staging.rename(directory / key)
        except OSError as exc:
            raise CacheError(f"cannot extract the bundle sha256:{key} into {directory}: {exc.strerror or exc}") \
                from None
        finally:
            if staging.exists():
                _remove_tree(staging)

    # ------------------------------------------------------------------ pins
    @contextlib.contextmanager
    def use(self, digest: str) -> Iterator[None]:
        """Hold entry `digest` in use for the block: no prune evicts it meanwhile (a caller
        reading files of a bundle it did not pin)."""
        with self._using(hex_of(digest), pin=False):
            yield

    def release(self, digest: str) -> None:
        """Drop this process's pin on `digest` (a runner that moved on to another revision)."""
        fd = _PINS.pop(str(self._lock_path(hex_of(digest), "use")), None)
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ ls / prune
    def entries(self) -> list[Entry]:
        """Every entry, least recently used first."""
        if not self.root.exists():
            return []
        keys = {name for kind in ("artifacts", "bundles") for name in _listdir(self._dir(kind)) if _HEX.match(name)}
        found = [self._entry(key) for key in keys]
        return sorted((e for e in found if e is not None), key=lambda e: (e.last_used, e.digest))

    def _entry(self, key: str) -> Entry | None:
        size, kinds, times = 0, [], []
        artifact = self._dir("artifacts") / key
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(artifact)
            size += info.st_size
            kinds.append("artifact")
            times.append(info.st_mtime)
        tree = self._dir("bundles") / key
        with contextlib.suppress(FileNotFoundError):
            times.append(os.lstat(tree).st_mtime)
            size += _tree_size(tree)
            kinds.append("bundle")
        if not kinds:
            return None
        with contextlib.suppress(FileNotFoundError):
            times.append(os.stat(self._lock_path(key, "use")).st_mtime)  # touched on every use
        return Entry(digest=f"sha256:{key}", size=size, last_used=max(times), in_use=self._in_use(key),
                     kinds=tuple(kinds))

    def prune(self, *, dry_run: bool = False, max_bytes: int | None = None,
              min_age: float | None = None) -> PruneResult:
        """Evict least recently used entries unused for `min_age` until the cache holds at most
        `max_bytes` (defaults: the settings); never one in use. Also removes what processes that
        died mid-fill left behind. `dry_run`: only say what would go."""
        limit = self.settings.max_bytes if max_bytes is None else max_bytes
        age = self.settings.min_age if min_age is None else min_age
        if not dry_run:
            self._remove_leftovers()
        entries = self.entries()
        total = sum(e.size for e in entries)
        now = time.time()
        evicted: list[Entry] = []
        for entry in entries:
            if total <= limit or now - entry.last_used < age:
                break  # oldest first: every later entry is younger
            if entry.in_use:
                continue
            if dry_run or self._evict(hex_of(entry.digest)):
                evicted.append(entry)
                total -= entry.size
        gone = {e.digest for e in evicted}
        return PruneResult(evicted=tuple(evicted), kept=tuple(e for e in entries if e.digest not in gone),
                           freed=sum(e.size for e in evicted), total_after=total, dry_run=dry_run)

    def _evict(self, key: str) -> bool:
        """Remove entry `key` unless a process uses it (decided atomically: its use-lock is
        taken exclusively, without waiting, and held until the entry is gone)."""
        use = self._try_exclusive(key)
        if use is None:
            return False
        try:
            with self._lock(key, "fill"):
                self._discard(self._dir("artifacts") / key)
                self._discard(self._dir("bundles") / key)
                for kind in ("use", "fill"):  # holders of the old files notice and open the new ones
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._lock_path(key, kind))
        finally:
            os.close(use)
        return True

    def _prune_quietly(self) -> None:
        """After an entry was added: evict what the bound asks for; a failure here never fails
        the load that added it (``flowstore cache prune`` reports it). The sizes are summed
        first (a stat per file, no locks): the full prune runs only when the cache is over."""
        with contextlib.suppress(CacheError, OSError):
            if self._size_on_disk() > self.settings.max_bytes:
                self.prune()

    def _size_on_disk(self) -> int:
        total = 0
        with os.scandir(self._dir("artifacts")) as found:
            for entry in found:
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
        for name in _listdir(self._dir("bundles")):
            total += _tree_size(self._dir("bundles") / name)
        return total

    def _remove_leftovers(self) -> None:
        """What processes that died mid-fill left (staging files and trees, older than
        :data:`STALE_SECONDS`), and lock files of entries that are gone (unless in use)."""
        now = time.time()
        present: set[str] = set()
        for kind in ("artifacts", "bundles"):
            for name in _listdir(self._dir(kind)):
                if _HEX.match(name):
                    present.add(name)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - os.lstat(self._dir(kind) / name).st_mtime > STALE_SECONDS:
                        self._discard(self._dir(kind) / name)
        for key in {name.split(".")[0] for name in _listdir(self._dir("locks"))} - present:
            if _HEX.match(key):
                self._evict(key)  # takes the use-lock first: a process about to fill it keeps it

    # ------------------------------------------------------------------ locks
    def _lock_path(self, key: str, kind: str) -> Path:
        return self._dir("locks") / f"{key}.{kind}"

    @contextlib.contextmanager
    def _using(self, key: str, *, pin: bool) -> Iterator[None]:
        """Shared use of entry `key` for the block; with `pin`, for the rest of the process."""
        path = str(self._lock_path(key, "use"))
        if path in _PINS:
            os.utime(_PINS[path])
            yield
            return
        fd = self._acquire(Path(path), fcntl.LOCK_SH)
        os.utime(fd)  # the entry's last use
        try:
            yield
        except BaseException:
            os.close(fd)
            raise
        if pin:
            _PINS[path] = fd
        else:
            os.close(fd)

    @contextlib.contextmanager
    def _lock(self, key: str, kind: str) -> Iterator[None]:
        fd = self._acquire(self._lock_path(key, kind), fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)

    def _acquire(self, path: Path, operation: int) -> int:
        """An flock on the file at `path`, made if missing. Eviction unlinks lock files while
        holding them, so after the lock is granted the file must still be the one at `path`;
        otherwise try again with the new one."""
        self._dir("locks")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, operation)
                held = os.fstat(fd)
                try:
                    current = os.lstat(path)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                    if not _own_file(held):
                        raise CacheError(f"the lock file {path} belongs to another user; remove it")
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _try_exclusive(self, key: str) -> int | None:
        path = self._lock_path(key, "use")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        with contextlib.suppress(FileNotFoundError):
            current, held = os.lstat(path), os.fstat(fd)
            if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return fd
        os.close(fd)
        return None

    def _in_use(self, key: str) -> bool:
        path = self._lock_path(key, "use")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        return False

    # ------------------------------------------------------------------ directories
    def _dir(self, kind: str) -> Path:
        """`root`/`kind`, made private if missing; refuses what this user does not own or others
        may write (CacheError)."""
        if kind in self._dirs:
            return self._dirs[kind]
        if not self._checked:
            _check_root(self.root)
            self._checked = True
        path = self.root / kind
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(path)
        except OSError as exc:
            raise CacheError(f"cannot use the cache directory {path}: {exc.strerror or exc}; fix its permissions "
                             "or set FLOWSTORE_CACHE_DIR to another directory") from None
        if not stat.S_ISDIR(info.st_mode) or not _own(info):
            raise CacheError(f"{path} is not a directory of this user (uid {os.geteuid()}), or others may write it; "
                             "remove it, or set FLOWSTORE_CACHE_DIR to a directory of this user's")
        self._dirs[kind] = path
        return path

    def _discard(self, path: Path) -> None:
        """Remove whatever is at `path` (a file, a link, a tree), or say why it cannot go."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        try:
            if stat.S_ISDIR(info.st_mode):
                aside = path.with_name(f".gone-{uuid.uuid4().hex[:12]}")
                path.rename(aside)  # readers of the name stop finding it at once
                _remove_tree(aside)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CacheError(f"{path} in the agent cache is not this user's and cannot be removed "
                             f"({exc.strerror or exc}); remove it, or set FLOWSTORE_CACHE_DIR to a directory "
                             "of this user's") from None


# ---------------------------------------------------------------------- helpers
def _own(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & _WRITABLE_BY_OTHERS


def _own_file(info: os.stat_result) -> bool:
    return stat.S_ISREG(info.st_mode) and _own(info)


def _check_root(root: Path) -> None:
    """The root exists (made private if missing) and neither it nor any directory above it may
    be written by another user unless sticky: otherwise an entry could be swapped between its
    check and its use."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the agent cache {root}: {exc.strerror or exc}; set FLOWSTORE_CACHE_DIR "
                         "to a directory this user can create") from None
    real = Path(os.path.realpath(root))
    for directory in (real, *real.parents):
        info = os.stat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise CacheError(f"the agent cache {root}: {directory} is not a directory")
        foreign = info.st_uid not in (0, os.geteuid())
        open_to_others = info.st_mode & _WRITABLE_BY_OTHERS and not info.st_mode & stat.S_ISVTX
        if foreign or open_to_others:
            raise CacheError(
                f"the agent cache {root} is not private: {directory} "
                f"{'belongs to uid ' + str(info.st_uid) if foreign else 'may be written by other users'} "
                f"(mode {stat.S_IMODE(info.st_mode):04o}), so its entries could be swapped between their check and "
                "their use. Make it this user's and not writable by others (e.g. chmod 1777 a shared mount, or "
                "0755), or set FLOWSTORE_CACHE_DIR to a directory only this user can write")


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _read_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _tree_size(path: Path) -> int:
    total = 0
    for directory, _, filenames in os.walk(path, followlinks=False):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _make_read_only(tree: Path) -> None:
    """Files 0400 (0500 when executable), directories 0500: Python cannot drop bytecode there
    (this user may not write), so the tree stays exactly the bundle's files."""
    for directory, dirnames, filenames in os.walk(tree, topdown=False):
        for name in filenames:
            path = os.path.join(directory, name)
            os.chmod(path, 0o500 if os.stat(path).st_mode & 0o100 else 0o400)
        for name in dirnames:
            os.chmod(os.path.join(directory, name), 0o500)
    os.chmod(tree, 0o500)


def _remove_tree(path: Path) -> None:
    """rmtree for a read-only tree: directories are made writable again on the way down."""
    def writable_then_retry(function: Callable[..., object], failed: str, _: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(FileNotFoundError):
            function(failed)

    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for directory, dirnames, _ in os.walk(path, followlinks=False):
        for name in dirnames:
            with contextlib.suppress(OSError):
                target = os.path.join(directory, name)
                if not os.path.islink(target):
                    os.chmod(target, 0o700)
    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=writable_then_retry)
        else:
            shutil.rmtree(path, onerror=writable_then_retry)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
