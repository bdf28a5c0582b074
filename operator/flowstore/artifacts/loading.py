"""Agent side: turn verified artifact bytes into the flow object, whatever their format.

- ``pickle``: unpickle the envelope (the flow's own modules were pickled by value);
- ``script``: run the script in this process (the agent's job, as in the seed);
- ``bundle``: extract the files once into a cache directory keyed by the artifact's digest, put
  it first on ``sys.path`` and import the entrypoint from there.

Callers verify the digest before calling anything here. The cache (``$FLOWSTORE_CACHE_DIR``,
else ``$XDG_CACHE_HOME/flowstore/bundles``, else ``~/.cache/flowstore/bundles``) is filled by
extracting into a private temporary directory and renaming it into place: several processes
loading the same flow at once each see a whole directory or none, and one of them wins.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from flowstore.artifacts import bundle as bundles
from flowstore.artifacts import envelope
from flowstore.artifacts.builder import find_flow_object

FORMATS = ("pickle", "script", "bundle")


def cache_root() -> Path:
    configured = os.environ.get("FLOWSTORE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowstore" / "bundles"


class FlowNeedsModule(ModuleNotFoundError):
    """The flow imports a module this Python does not have (its workflow engine, its libraries):
    the flow's own dependency, not flowstore's."""


def load(data: bytes, fmt: str, *, flow_name: str | None, object_name: str | None = None,
         cache_dir: Path | None = None) -> Any:
    """The flow object in `data` (already verified) of format `fmt`. A module the flow needs and
    this Python lacks is :class:`FlowNeedsModule`."""
    try:
        if fmt == "bundle":
            return flow_from_bundle(data, flow_name=flow_name, cache_dir=cache_dir)
        if fmt == "script":
            return envelope.flow_from_script(data, flow_name=flow_name, object_name=object_name)
        if fmt == "pickle":
            return envelope.loads(data)
    except FlowNeedsModule:
        raise
    except ModuleNotFoundError as exc:
        raise FlowNeedsModule(f"the flow needs the module {exc.name!r}, which is not installed here",
                              name=exc.name) from exc
    raise ValueError(f"unknown artifact format {fmt!r} (known: {', '.join(FORMATS)}); upgrade flowstore")


def extract(data: bytes, cache_dir: Path | None = None) -> Path:
    """The directory holding the bundle's files, extracted on first use (checked against the
    bundle's manifest); the same directory for the same bytes, in every process."""
    root = cache_dir or cache_root()
    target = root / hashlib.sha256(data).hexdigest()
    if target.is_dir():
        return target
    unpacked = bundles.unpack(data)  # raises BundleError on anything unsafe or altered
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        bundles.extract(unpacked, str(staging))
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another process put the same files there first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def flow_from_bundle(data: bytes, *, flow_name: str | None, cache_dir: Path | None = None) -> Any:
    """Extract (once) and import the bundle's entrypoint; the flow object it names (or the one
    named `flow_name`)."""
    directory = extract(data, cache_dir)
    unpacked = bundles.unpack(data)
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
