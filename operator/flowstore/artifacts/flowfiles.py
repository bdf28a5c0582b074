"""The files of a flow of several files: which are left out (gitignore-style rules from a
``.flowstoreignore`` among them and from ``spec.source.ignore``) and the bundle they make.

The operator and agents both use this: an agent re-creates the bundle of a git-hosted
directory from the pinned commit with the same rules and the same entrypoint, and gets the same
bytes — the digest in status — because packing is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import pathspec

from flowstore.artifacts import bundle

#: the ignore file a flow of several files may carry (gitignore syntax); never part of the bundle
IGNORE_FILE = ".flowstoreignore"


class IgnoreError(ValueError):
    """An ignore pattern is not valid gitignore syntax."""


def _spec(patterns: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """The rules of `patterns`; a pattern pathspec or the regular-expression engine cannot take
    (``re.error`` is not a ValueError), or one that is not text, is an IgnoreError."""
    lines = list(patterns)
    if not all(isinstance(line, str) for line in lines):
        raise IgnoreError(f"an ignore pattern (spec.source.ignore or {IGNORE_FILE}) is not text")
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except (ValueError, TypeError, re.error, RecursionError) as exc:
        raise IgnoreError(f"an ignore pattern (spec.source.ignore or {IGNORE_FILE}) is not valid: "
                          f"{str(exc)[:200]}") from None


def keeper(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether to read a file at all, by `patterns` alone (the ignore file is always read: its
    own rules apply once it is)."""
    spec = _spec(patterns)
    return lambda path: path == IGNORE_FILE or not spec.match_file(path)


def select(files: Mapping[str, bytes], patterns: Iterable[str] = ()) -> dict[str, bytes]:
    """`files` without what the ignore file among them and `patterns` leave out, and without the
    ignore file itself."""
    kept = dict(files)
    rules = list(patterns)
    own = kept.pop(IGNORE_FILE, None)
    if own is not None:
        rules = own.decode("utf-8", "replace").splitlines() + rules
    if not rules:
        return kept
    ignored = set(_spec(rules).match_files(kept))
    return {path: data for path, data in kept.items() if path not in ignored}


def pack(files: Mapping[str, bytes], entrypoint: bundle.Entrypoint, patterns: Iterable[str] = ()) -> bytes:
    """The bundle of `files` (ignore rules applied) with `entrypoint`."""
    return bundle.pack(select(files, patterns), entrypoint)
