"""Step 2 for storages the operator writes to: the flow's source, from the StoredFlow
(``spec.source.inline``) or a ConfigMap — one key (one script), or every key / the listed
items (a flow of several files, packed into a bundle)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

from flowstore.api.constants import Reason
from flowstore.api.models import FlowSpec, SpecError
from flowstore.artifacts import bundle, flowfiles
from flowstore.reconcile.context import FlowContext
from flowstore.reconcile.failures import ReconcileError
from flowstore.reconcile.ports import Ports

#: the file name of an inline source (agents that need a file, e.g. Prefect 3, write it so)
INLINE_FILE_NAME = "flow.py"


def read_source(ctx: FlowContext, ports: Ports) -> None:
    """Fill ``ctx.source``. A missing ConfigMap or key stalls the StoredFlow until the ConfigMap
    changes (its watch wakes us)."""
    src = ctx.spec.source
    if src.inline is not None:
        ctx.set_script(src.inline.encode("utf-8"), INLINE_FILE_NAME)
        return
    assert src.config_map is not None  # FlowSpec.parse: exactly one source
    cm = ports.get_configmap(ctx.namespace, src.config_map)
    if cm is None:
        raise ReconcileError(
            Reason.SOURCE_NOT_FOUND,
            f"ConfigMap {src.config_map!r} (spec.source.configMapRef) was not found in namespace "
            f"{ctx.namespace!r}; create it or fix the reference.",
            stalled=True,
        )
    contents = _contents(cm)
    if src.config_map_key is not None:
        if src.config_map_key not in contents:
            raise ReconcileError(
                Reason.SOURCE_NOT_FOUND,
                f"ConfigMap {src.config_map!r} has no key {src.config_map_key!r} (it has: "
                f"{', '.join(sorted(contents)) or 'no keys'}); fix spec.source.configMapRef.key or the ConfigMap.",
                stalled=True,
            )
        ctx.set_script(contents[src.config_map_key], src.config_map_key)
        return
    if src.items:
        missing = sorted(key for key, _ in src.items if key not in contents)
        if missing:
            raise ReconcileError(
                Reason.SOURCE_NOT_FOUND,
                f"ConfigMap {src.config_map!r} has no key {', '.join(map(repr, missing))} (spec.source.configMapRef."
                f"items; it has: {', '.join(sorted(contents)) or 'no keys'}); fix the items or the ConfigMap.",
                stalled=True,
            )
        files = {path: contents[key] for key, path in src.items}
    else:
        files = dict(contents)
    if not files:
        raise ReconcileError(Reason.SOURCE_NOT_FOUND, f"ConfigMap {src.config_map!r} has no keys: the flow has no "
                             "files; add them to the ConfigMap.", stalled=True)
    ctx.set_bundle(*pack_files(files, ctx.spec, where=f"ConfigMap {src.config_map!r}"))


def pack_files(files: Mapping[str, bytes], spec: FlowSpec, *, where: str) -> tuple[bytes, bundle.Entrypoint, int]:
    """The bundle of a flow's files: ignore rules applied (the files' own .flowstoreignore and
    spec.source.ignore), the entrypoint decided. Returns (bundle bytes, entrypoint, file count).
    Raises SpecError saying what to change."""
    try:
        kept = flowfiles.select(files, spec.source.ignore)
        entrypoint = choose_entrypoint(kept, spec, where=where)
        return bundle.pack(kept, entrypoint), entrypoint, len(kept)
    except (bundle.BundleError, flowfiles.IgnoreError, re.error) as exc:  # pathspec lets some re.error out
        raise SpecError(f"the flow's files in {where} cannot be stored: {_ignore_message(exc)}") from None


def ignore_rules(spec: FlowSpec) -> Callable[[str], bool]:
    """Which files of a directory to read at all (spec.source.ignore); SpecError for a pattern
    that is not valid gitignore syntax (pathspec raises re.error for some, e.g. ``[z-a]``)."""
    try:
        return flowfiles.keeper(spec.source.ignore)
    except (flowfiles.IgnoreError, re.error) as exc:
        raise SpecError(f"spec.source.ignore cannot be used: {_ignore_message(exc)}") from None


def _ignore_message(exc: Exception) -> str:
    if isinstance(exc, re.error):
        return f"an ignore pattern (spec.source.ignore or {flowfiles.IGNORE_FILE}) is not valid: {exc}"
    return str(exc)


def choose_entrypoint(files: Mapping[str, bytes], spec: FlowSpec, *, where: str) -> bundle.Entrypoint:
    """spec.entrypoint, else the only .py file; its object part and spec.objectName must agree."""
    if spec.entrypoint:
        entrypoint = bundle.Entrypoint.parse(spec.entrypoint)
        if entrypoint.path not in files:
            raise SpecError(f"spec.entrypoint names {entrypoint.path}, which is not among the flow's files in {where} "
                            f"({_listing(files)})")
    else:
        modules = sorted(p for p in files if p.endswith(".py"))
        if len(modules) != 1:
            raise SpecError(f"the flow in {where} has {len(modules) or 'no'} Python files ({_listing(files)}); set "
                            "spec.entrypoint to the module holding the flow, e.g. etl/main.py:flow")
        entrypoint = bundle.Entrypoint(modules[0])
    if entrypoint.object_name and spec.object_name and entrypoint.object_name != spec.object_name:
        raise SpecError(f"spec.entrypoint names the object {entrypoint.object_name!r} and spec.objectName "
                        f"{spec.object_name!r}; keep one of them")
    if spec.object_name and not entrypoint.object_name:
        entrypoint = bundle.Entrypoint(entrypoint.path, spec.object_name)
    return entrypoint


def _listing(files: Mapping[str, bytes]) -> str:
    names = sorted(files)
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "no files"


def _contents(cm: Mapping[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's keys as file contents: data (UTF-8 text) and binaryData (base64)."""
    contents = {str(k): str(v).encode("utf-8") for k, v in (cm.get("data") or {}).items()}
    contents.update({str(k): base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return contents
