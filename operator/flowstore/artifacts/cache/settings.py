"""The agent cache's settings (from the environment), its error, and what ls and prune report."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_BYTES = 2**30
DEFAULT_MIN_AGE = 600.0
#: leftovers of a process that died while filling (staging files, trees being removed) go after this
STALE_SECONDS = 3600.0
HEX = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


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
    if isinstance(digest, str) and HEX.match(digest):
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


