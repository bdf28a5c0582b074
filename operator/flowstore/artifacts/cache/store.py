"""The agent cache itself (see the package docstring): entries used, filled, pinned, listed and
evicted under per-entry flocks."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from flowstore.artifacts import bundle as bundles
from flowstore.artifacts.cache import disk
from flowstore.artifacts.cache.settings import HEX, STALE_SECONDS, CacheError, Entry, PruneResult, Settings, hex_of

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
            if not disk.own_file(info) or (size is not None and info.st_size != size):
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
        if not stat.S_ISDIR(info.st_mode) or not disk.own(info):
            return False  # planted, or not this user's: replaced when the entry is filled
        expected = unpacked.files
        seen: set[str] = set()
        for directory, dirnames, filenames in os.walk(target, followlinks=False):
            relative = os.path.relpath(directory, target)
            prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            cached = prefix.rstrip("/").split("/")[-1] == "__pycache__"
            for name in dirnames:
                if not stat.S_ISDIR((entry := os.lstat(os.path.join(directory, name))).st_mode) or not disk.own(entry):
                    return False
            for name in filenames:
                path = os.path.join(directory, name)
                entry = os.lstat(path)
                if not disk.own_file(entry):
                    return False
                if cached and name.endswith(".pyc"):  # Python's bytecode, written as this user (root)
                    continue
                relative_path = prefix + name
                content = expected.get(relative_path)
                if content is None or entry.st_size != len(content) or disk.read_file(path) != content:
                    return False
                seen.add(relative_path)
        return seen == set(expected)

    def _extract(self, key: str, unpacked: bundles.Bundle) -> None:
        directory = self._dir("bundles")
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=directory))
        try:
            bundles.extract(unpacked, str(staging))
            disk.make_read_only(staging)
            self._discard(directory / key)
            staging.rename(directory / key)
        except OSError as exc:
            raise CacheError(f"cannot extract the bundle sha256:{key} into {directory}: {exc.strerror or exc}") \
                from None
        finally:
            if staging.exists():
                disk.remove_tree(staging)

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
        keys = {name for kind in ("artifacts", "bundles") for name in disk.listdir(self._dir(kind)) if HEX.match(name)}
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
            size += disk.tree_size(tree)
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
        for name in disk.listdir(self._dir("bundles")):
            total += disk.tree_size(self._dir("bundles") / name)
        return total

    def _remove_leftovers(self) -> None:
        """What processes that died mid-fill left (staging files and trees, older than
        :data:`STALE_SECONDS`), and lock files of entries that are gone (unless in use)."""
        now = time.time()
        present: set[str] = set()
        for kind in ("artifacts", "bundles"):
            for name in disk.listdir(self._dir(kind)):
                if HEX.match(name):
                    present.add(name)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - os.lstat(self._dir(kind) / name).st_mtime > STALE_SECONDS:
                        self._discard(self._dir(kind) / name)
        for key in {name.split(".")[0] for name in disk.listdir(self._dir("locks"))} - present:
            if HEX.match(key):
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
                    if not disk.own_file(held):
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
            disk.check_root(self.root)
            self._checked = True
        path = self.root / kind
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(path)
        except OSError as exc:
            raise CacheError(f"cannot use the cache directory {path}: {exc.strerror or exc}; fix its permissions "
                             "or set FLOWSTORE_CACHE_DIR to another directory") from None
        if not stat.S_ISDIR(info.st_mode) or not disk.own(info):
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
                disk.remove_tree(aside)
            else:
                path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CacheError(f"{path} in the agent cache is not this user's and cannot be removed "
                             f"({exc.strerror or exc}); remove it, or set FLOWSTORE_CACHE_DIR to a directory "
                             "of this user's") from None

