"""A flow of several files as one artifact: a deterministic tar.gz with a manifest.

The same files give the same bytes — and so the same digest — on any machine, after any
restart: members sorted by path, every mtime 0, uid/gid 0 with no names, modes normalized
(0644, or 0755 for files that were executable; directories 0755), PAX format, and a gzip header
with neither time nor file name. The first member, ``.flowstore-bundle.json``, is the manifest:
the format, the entrypoint, and each file's sha256; unpacking checks every file against it.

Unpacking reads bytes someone else may have written (a bucket, a cache, a status that points
elsewhere), so it is bounded before it is trusted: the gzip stream is inflated as it is read
and never past :data:`MAX_BYTES` plus the tar headers of :data:`MAX_FILES` files; members,
paths (length, depth, each name) and the manifest are bounded too; and whatever is wrong with
the bytes — a deflate error, a broken tar, a manifest that is not JSON or nests too deep — is a
:class:`BundleError` saying so, never an error of the library that noticed.

Standard library only: the builder program (``builder.py``) runs this module in images that
have nothing but Python and cloudpickle.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

MANIFEST = ".flowstore-bundle.json"
FORMAT = "flowstore-bundle/1"
#: a bundle holds at most this many files and this many bytes (before compression)
MAX_FILES = 1000
MAX_BYTES = 32 * 1024 * 1024
#: directories a bundle may hold (each file's parents; far more than any real flow has)
MAX_DIRECTORIES = 2 * MAX_FILES
#: a path inside a bundle: at most this many bytes (UTF-8) in all, per name, and names deep
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
MAX_DEPTH = 32
#: the manifest names every file and its digest: bounded by what MAX_FILES paths need
MAX_MANIFEST_BYTES = MAX_FILES * (MAX_PATH_BYTES + 128) + 4096
#: what the tar stream may hold besides the files' bytes: a header (and a PAX header, for long
#: names) per member, the manifest, padding to 512 bytes, the end-of-archive blocks
_TAR_OVERHEAD = (1 + MAX_FILES + MAX_DIRECTORIES) * 4 * 512 + MAX_MANIFEST_BYTES + 10 * 512
_EXECUTABLE = 0o111


class BundleError(ValueError):
    """The files cannot make a bundle, or the bytes are not one; the message says why."""


@dataclass(frozen=True)
class Entrypoint:
    """``path/to/file.py:object`` (the form Prefect 2/3 use): the module file and, optionally,
    the variable holding the flow (without it, the object whose ``name`` is the flow name)."""

    path: str
    object_name: str | None = None

    @classmethod
    def parse(cls, text: str) -> Entrypoint:
        path, sep, obj = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
        path = check_path(path)
        if not path.endswith(".py"):
            raise BundleError(f"entrypoint {text!r}: the module must be a .py file (e.g. etl/main.py:flow)")
        if sep and not obj.isidentifier():
            raise BundleError(f"entrypoint {text!r}: {obj!r} is not a Python variable name")
        return cls(path, obj or None)

    @property
    def module(self) -> str:
        """The dotted module name the file is imported as (``etl/main.py`` -> ``etl.main``)."""
        parts = self.path.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or not all(p.isidentifier() for p in parts):
            raise BundleError(f"entrypoint {self.path!r} cannot be imported: every directory and the file name "
                              "must be a Python identifier (letters, digits, _)")
        return ".".join(parts)

    def __str__(self) -> str:
        return f"{self.path}:{self.object_name}" if self.object_name else self.path


@dataclass(frozen=True)
class Bundle:
    files: dict[str, bytes]
    entrypoint: Entrypoint
    executables: frozenset[str] = frozenset()

    @property
    def manifest(self) -> dict[str, str]:
        """Each file's sha256 (``sha256:<hex>``), as the manifest records it."""
        return {path: _sha256(content) for path, content in self.files.items()}


def check_path(path: str) -> str:
    """A relative POSIX path inside the bundle, normalized; refuses absolute paths, ``..``, and
    paths longer or deeper than a flow's may be (:data:`MAX_PATH_BYTES`, :data:`MAX_NAME_BYTES`,
    :data:`MAX_DEPTH`)."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise BundleError(f"{path!r} is not a file path inside the flow's directory")
    if path.startswith("/"):
        raise BundleError(f"{path!r} is an absolute path; paths in a flow are relative to its directory")
    try:
        encoded = path.encode("utf-8")
    except UnicodeError:  # a lone surrogate: no file system would take it
        raise BundleError(f"{path!r} is not a valid UTF-8 file name") from None
    normal = posixpath.normpath(path)
    if normal == "." or normal.startswith("../") or normal == ".." or "/../" in f"/{path}/":
        raise BundleError(f"{path!r} escapes the flow's directory")
    if normal == MANIFEST:
        raise BundleError(f"{MANIFEST} is the bundle's own manifest; rename the file")
    names = normal.split("/")
    if (len(encoded) > MAX_PATH_BYTES or len(names) > MAX_DEPTH
            or any(len(name.encode("utf-8")) > MAX_NAME_BYTES for name in names)):
        raise BundleError(f"{path[:80]!r}{'…' if len(path) > 80 else ''} is too long or too deep for a flow's file "
                          f"(at most {MAX_PATH_BYTES} bytes, {MAX_DEPTH} directories deep, {MAX_NAME_BYTES} bytes a "
                          "name)")
    return normal


def pack(files: Mapping[str, bytes], entrypoint: Entrypoint, *, executables: frozenset[str] = frozenset()) -> bytes:
    """The deterministic tar.gz of `files` (path -> content) with its manifest."""
    normal = {check_path(p): bytes(d) for p, d in files.items()}
    if len(normal) != len(files):
        raise BundleError("two files of the flow have the same path once normalized")
    check_limits(normal)
    if entrypoint.path not in normal:
        raise BundleError(f"the entrypoint {entrypoint.path} is not among the flow's files "
                          f"({', '.join(sorted(normal)[:10])}{', …' if len(normal) > 10 else ''})")
    manifest = json.dumps({"format": FORMAT, "entrypoint": str(entrypoint),
                           "files": {p: _sha256(d) for p, d in sorted(normal.items())}},
                          sort_keys=True, separators=(",", ":")).encode("utf-8")
    directories = sorted({parent for p in normal for parent in _parents(p)})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST, manifest, 0o644)
        for directory in directories:
            info = _info(directory, tarfile.DIRTYPE, 0o755)
            tar.addfile(info)
        for path in sorted(normal):
            _add(tar, path, normal[path], 0o755 if path in executables else 0o644)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def check_limits(files: Mapping[str, bytes]) -> None:
    if len(files) > MAX_FILES:
        raise BundleError(f"the flow has {len(files)} files, more than {MAX_FILES}; leave out what it does not need "
                          "(spec.source.ignore, a .flowstoreignore file)")
    directories = {parent for path in files for parent in _parents(path)}
    if len(directories) > MAX_DIRECTORIES:
        raise BundleError(f"the flow's files are in {len(directories)} directories, more than {MAX_DIRECTORIES}; "
                          "leave out what it does not need (spec.source.ignore, a .flowstoreignore file)")
    total = sum(len(d) for d in files.values())
    if total > MAX_BYTES:
        raise BundleError(f"the flow's files hold {total} bytes, more than {MAX_BYTES} ({MAX_BYTES // 2**20} MiB); "
                          "leave out what it does not need (spec.source.ignore, a .flowstoreignore file)")


def is_bundle(data: bytes) -> bool:
    """Whether `data` is a bundle (a gzip stream whose first member is the manifest, every file
    matching it). Never raises: anything that is not a whole, valid bundle is False."""
    if not isinstance(data, bytes | bytearray | memoryview) or bytes(data[:2]) != b"\x1f\x8b":
        return False
    try:
        unpack(bytes(data))
    except BundleError:
        return False
    return True


class _Bounded(io.RawIOBase):
    """A readable stream of at most `limit` bytes of `inner` (the inflating gzip reader): one
    byte more is a BundleError, so a small gzip that expands to gigabytes is refused after
    `limit` bytes were inflated, not after all of them."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner, self._left = inner, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        data = self._inner.read(min(len(view), self._left + 1))
        if len(data) > self._left:
            raise BundleError("the bundle expands to more than a flow may hold "
                              f"({MAX_FILES} files, {MAX_BYTES // 2**20} MiB); refusing it")
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)


#: what reading broken bytes raises in gzip, zlib, tarfile and json: each becomes a BundleError
_READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, ValueError, UnicodeError, RecursionError,
                MemoryError, OverflowError)


def unpack(data: bytes) -> Bundle:
    """The files of a bundle, each checked against the manifest. Refuses anything but regular
    files and directories, paths outside the bundle (a tar made to escape), more than
    :data:`MAX_FILES` files or :data:`MAX_BYTES` bytes (counted while inflating, so nothing past
    the bound is ever in memory), a manifest that does not describe exactly these files, and an
    entrypoint that is not one of them. Every failure is a :class:`BundleError`."""
    try:
        return _unpack(data)
    except BundleError:
        raise
    except _READ_ERRORS as exc:
        raise BundleError(f"not a flow bundle (a tar.gz): {type(exc).__name__}: {str(exc)[:200]}") from None


def _unpack(data: bytes) -> Bundle:
    stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"),
                                        MAX_BYTES + _TAR_OVERHEAD))
    files: dict[str, bytes] = {}
    executables: set[str] = set()
    manifest: object = None
    total = directories = 0
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isdir():
                check_path(member.name)
                directories += 1
                if directories > MAX_DIRECTORIES:
                    raise BundleError(f"the bundle holds more than {MAX_DIRECTORIES} directories; refusing it")
                continue
            if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):  # no links, devices, sparse files
                raise BundleError(f"{member.name[:200]!r} in the bundle is not a regular file; refusing it")
            if member.name == MANIFEST and manifest is None and not files:
                if member.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"the bundle's manifest is larger than {MAX_MANIFEST_BYTES} bytes")
                manifest = json.loads(_read(tar, member).decode("utf-8"))
                continue
            path = check_path(member.name)
            if path in files:
                raise BundleError(f"{path!r} appears twice in the bundle")
            if len(files) >= MAX_FILES:
                raise BundleError(f"the bundle holds more than {MAX_FILES} files; refusing it")
            total += member.size
            if total > MAX_BYTES:
                raise BundleError(f"the bundle's files hold more than {MAX_BYTES} bytes; refusing it")
            files[path] = _read(tar, member)
            if member.mode & _EXECUTABLE:
                executables.add(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"the bundle has no {FORMAT} manifest as its first member")
    recorded = manifest.get("files")
    if not isinstance(recorded, dict) or set(recorded) != set(files):
        raise BundleError("the bundle's files differ from its manifest")
    for path, content in files.items():
        if recorded[path] != _sha256(content):
            raise BundleError(f"{path} in the bundle does not match its manifest digest; refusing it")
    text = manifest.get("entrypoint")
    if not isinstance(text, str):
        raise BundleError("the bundle's manifest names no entrypoint")
    entrypoint = Entrypoint.parse(text)
    if entrypoint.path not in files:
        raise BundleError(f"the bundle's entrypoint {entrypoint.path} is not one of its files; refusing it")
    return Bundle(files=files, entrypoint=entrypoint, executables=frozenset(executables))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A member's bytes, all of them (a short read is a truncated bundle)."""
    extracted = tar.extractfile(member)
    content = extracted.read() if extracted is not None else b""
    if len(content) != member.size:
        raise BundleError(f"{member.name[:200]!r} in the bundle is truncated")
    return content


def extract(bundle: Bundle, directory: str) -> None:
    """Write the bundle's files under `directory` (which must exist and be empty)."""
    for path, content in sorted(bundle.files.items()):
        target = os.path.join(directory, *path.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "xb") as fh:
            fh.write(content)
        os.chmod(target, 0o755 if path in bundle.executables else 0o644)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = _info(name, tarfile.REGTYPE, mode)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))
