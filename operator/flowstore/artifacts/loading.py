"""Agent side: turn verified artifact bytes into the flow object, whatever their format.

- ``pickle``: unpickle the envelope (the flow's own modules were pickled by value);
- ``script``: run the script in this process (the agent's job, as in the seed);
- ``bundle``: take the bundle's files from the agent cache (``flowstore.artifacts.cache``:
  extracted once per digest, checked against the bundle's manifest on every use, pinned while
  this process runs), put that directory first on ``sys.path`` and import the entrypoint.

Callers verify the digest before calling anything here.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from flowstore.artifacts import bundle as bundles
from flowstore.artifacts import envelope
from flowstore.artifacts.builder import find_flow_object
from flowstore.artifacts.cache import Cache, Settings

FORMATS = ("pickle", "script", "bundle")
_GZIP, _PICKLE = b"\x1f\x8b", b"\x80"


class ArtifactFormatError(ValueError):
    """The bytes are not what their recorded format says (a script that is not Python source, a
    pickle that is not an envelope), or the format is unknown. Nothing of them was run."""


class FlowNeedsModule(ModuleNotFoundError):
    """The flow imports a module this Python does not have (its workflow engine, its libraries):
    the flow's own dependency, not flowstore's."""


def load(data: bytes, fmt: str, *, flow_name: str | None, object_name: str | None = None,
         cache: Cache | None = None, cache_dir: Path | None = None) -> Any:
    """The flow object in `data` (already verified) of format `fmt`. Bundles use `cache` (or
    one rooted at `cache_dir`, else the environment's: ``FLOWSTORE_CACHE_DIR``). Bytes that are
    not of `fmt` are an ArtifactFormatError before anything of them runs; a module the flow needs
    and this Python lacks is :class:`FlowNeedsModule`; the flow's own code may raise what it
    raises."""
    try:
        return _load(data, fmt, flow_name=flow_name, object_name=object_name, cache=cache, cache_dir=cache_dir)
    except FlowNeedsModule:
        raise
    except ModuleNotFoundError as exc:
        raise FlowNeedsModule(f"the flow needs the module {exc.name!r}, which is not installed here",
                              name=exc.name) from exc


def _load(data: bytes, fmt: str, *, flow_name: str | None, object_name: str | None, cache: Cache | None,
          cache_dir: Path | None) -> Any:
    if fmt == "bundle":
        if cache is None:
            cache = Cache(Settings(root=cache_dir)) if cache_dir is not None else Cache()
        return flow_from_bundle(data, flow_name=flow_name, cache=cache)
    if fmt == "script":
        return envelope.flow_from_compiled(_compiled_script(data), flow_name=flow_name, object_name=object_name)
    if fmt == "pickle":
        try:
            envelope.unwrap(data)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise ArtifactFormatError(f"the artifact is recorded as a pickle but is not a flow envelope: {exc}") \
                from None
        try:
            return envelope.loads(data)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise ArtifactFormatError(f"the artifact is recorded as a pickle but does not unpickle: {exc}") from None
    raise ArtifactFormatError(f"unknown artifact format {str(fmt)[:40]!r} (known: {', '.join(FORMATS)}); "
                              "upgrade flowstore")


def _compiled_script(data: bytes) -> Any:
    """The script's code object; ArtifactFormatError when the bytes are no Python source (a
    bundle or a pickle recorded as a script), before anything runs."""
    if data[:2] == _GZIP or data[:1] == _PICKLE:
        raise ArtifactFormatError("the artifact is recorded as a script but is a bundle or a pickle; "
                                  "the status was edited, or written by an incompatible version")
    try:
        return compile(data, "<stored flow>", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ArtifactFormatError(f"the artifact is recorded as a script but does not compile here: {exc}") from None


def flow_from_bundle(data: bytes, *, flow_name: str | None, cache: Cache) -> Any:
    """Import the bundle's entrypoint from its files in `cache` (extracted, or checked, now);
    the flow object it names (or the one named `flow_name`)."""
    unpacked = bundles.unpack(data)  # bounded; every file checked against the manifest
    directory = cache.bundle("sha256:" + hashlib.sha256(data).hexdigest(), unpacked)
    entrypoint = unpacked.entrypoint
    _forget_other_bundles(str(directory))
    _forget_shadowed({p.split("/")[0].removesuffix(".py") for p in unpacked.files}, str(directory))
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    _IMPORTED_FROM.add(str(directory))
    importlib.invalidate_caches()
    module = importlib.import_module(entrypoint.module)
    return find_flow_object(dict(vars(module)), flow_name=flow_name, object_name=entrypoint.object_name)


def _forget_shadowed(names: set[str], directory: str) -> None:
    """A module already imported under the name of one of this bundle's own top-level modules
    (and its submodules), from anywhere else, would be used instead of the bundle's: it goes
    from ``sys.modules`` (modules that imported it keep their reference). The standard library
    is left alone."""
    inside = directory + os.sep
    names = names - set(sys.stdlib_module_names)  # never pull the standard library from under the agent
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in names:
            continue
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), "")
        if not str(where).startswith(inside):
            del sys.modules[name]


#: the bundle directories this process imported flows from
_IMPORTED_FROM: set[str] = set()


def _forget_other_bundles(directory: str) -> None:
    """Modules this process imported from another bundle's directory go from ``sys.modules``
    (and that directory from ``sys.path``), so this bundle's modules of the same names (a
    ``helpers`` of each flow, say) are its own."""
    others = tuple(d + os.sep for d in _IMPORTED_FROM if d != directory)
    if not others:
        return
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or []), "")
        if where and str(where).startswith(others):
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p + os.sep not in others]
