"""A flow of several files as one artifact: a deterministic tar.gz with a manifest.

The same files give the same bytes — and so the same digest — on any machine, after any
restart: members sorted by path, every mtime 0, uid/gid 0 with no names, modes normalized
(0644, or 0755 for files that were executable; directories 0755), PAX format, and a gzip header
with neither time nor file name. The first member, ``.flowstore-bundle.json``, is the manifest:
the format, the entrypoint, and each file's sha256; unpacking checks every file against it.

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
from collections.abc import Mapping
from dataclasses import dataclass

MANIFEST = ".flowstore-bundle.json"
FORMAT = "flowstore-bundle/1"
#: a bundle holds at most this many files and this many bytes (before compression)
MAX_FILES = 1000
MAX_BYTES = 32 * 1024 * 1024
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


def check_path(path: str) -> str:
    """A relative POSIX path inside the bundle, normalized; refuses absolute paths and ``..``."""
    if not path or "\x00" in path or "\\" in path:
        raise BundleError(f"{path!r} is not a file path inside the flow's directory")
    if path.startswith("/"):
        raise BundleError(f"{path!r} is an absolute path; paths in a flow are relative to its directory")
    normal = posixpath.normpath(path)
    if normal == "." or normal.startswith("../") or normal == ".." or "/../" in f"/{path}/":
        raise BundleError(f"{path!r} escapes the flow's directory")
    if normal == MANIFEST:
        raise BundleError(f"{MANIFEST} is the bundle's own manifest; rename the file")
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
    total = sum(len(d) for d in files.values())
    if total > MAX_BYTES:
        raise BundleError(f"the flow's files hold {total} bytes, more than {MAX_BYTES} ({MAX_BYTES // 2**20} MiB); "
                          "leave out what it does not need (spec.source.ignore, a .flowstoreignore file)")


def is_bundle(data: bytes) -> bool:
    """Whether `data` looks like a bundle (a gzip stream whose first member is the manifest)."""
    if data[:2] != b"\x1f\x8b":
        return False
    try:
        unpack(data)
    except BundleError:
        return False
    return True


def unpack(data: bytes) -> Bundle:
    """The files of a bundle, each checked against the manifest. Refuses anything but regular
    files and directories, and paths outside the bundle (a tar made to escape)."""
    try:
        raw = gzip.decompress(data)
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BundleError(f"not a flow bundle (a tar.gz): {exc}") from None
    files: dict[str, bytes] = {}
    executables: set[str] = set()
    manifest: dict[str, object] | None = None
    total = 0
    with tar:
        for member in tar:
            if member.isdir():
                check_path(member.name)
                continue
            if not member.isfile():
                raise BundleError(f"{member.name!r} in the bundle is not a regular file; refusing it")
            extracted = tar.extractfile(member)
            content = extracted.read() if extracted is not None else b""
            total += len(content)
            if total > MAX_BYTES + 2**20:
                raise BundleError("the bundle holds more bytes than a flow may have")
            if member.name == MANIFEST and manifest is None and not files:
                manifest = json.loads(content.decode("utf-8"))
                continue
            path = check_path(member.name)
            if path in files:
                raise BundleError(f"{path!r} appears twice in the bundle")
            files[path] = content
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
    return Bundle(files=files, entrypoint=Entrypoint.parse(str(manifest.get("entrypoint", ""))),
                  executables=frozenset(executables))


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
