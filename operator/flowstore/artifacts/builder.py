"""The builder: run a flow's source and pickle its flow object, in whatever Python runs it.

This is the only code that executes users' flow scripts at build time. It runs in a separate
process, never in the operator: the operator's build sandbox (``flowstore.sandbox``) starts it
with the operator's Python; a builder Job runs it with the flow's own runtime image, mounted
beside ``bundle.py``. So it imports only the standard library (and cloudpickle, which the image
must have): run as ``python builder.py`` it finds ``bundle.py`` next to itself.

Request (JSON): ``flow_name``, ``object_name`` and either ``source`` (one script, base64) or
``bundle`` (a flow bundle, base64: the entrypoint comes from its manifest). Reply: a JSON header
``{"ok": true, "size": N, "versions": {...}}`` followed by N bytes of ``cloudpickle.dumps(flow)``,
or ``{"ok": false, "reason": ..., "message": ...}``. ``versions`` are this interpreter's Python,
cloudpickle and, when installed, prefect: what the envelope records, so agents' version
warnings tell the truth.

A script is executed as the module ``__flowstore_flow__``, registered with cloudpickle to be
pickled by value (``if __name__ == "__main__":`` blocks do not run). A bundle is extracted to a
scratch directory put first on ``sys.path``, its entrypoint imported as a module, and the
bundle's own modules are registered to be pickled by value: an agent without the helper modules
loads and runs the flow; third-party imports stay by reference.
"""

from __future__ import annotations

import base64
import importlib
import linecache
import os
import sys
import tempfile
import traceback
import types
from collections.abc import Iterator
from typing import Any

if __name__ == "__main__":  # a builder Job: bundle.py is mounted beside this file (never the image's own)
    import bundle as bundles  # type: ignore[import-not-found,no-redef,unused-ignore]
else:
    from flowstore.artifacts import bundle as bundles

SCRIPT_FILENAME = "<flow script>"
#: objects a script defines get this __module__; agents exec stored scripts under the same name
MODULE_NAME = "__flowstore_flow__"
_DETAIL_CHARS = 1500


# --------------------------------------------------------------------------- finding the flow
class FlowObjectError(LookupError):
    """No flow object, or several, in a script's globals."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def find_flow_object(namespace: dict[str, Any], *, flow_name: str | None, object_name: str | None) -> Any:
    """`object_name` if given; else the one global whose ``name`` attribute equals `flow_name`."""
    if object_name:
        if object_name not in namespace:
            raise FlowObjectError(f"the script defines no object named {object_name!r} (spec.objectName)")
        return namespace[object_name]
    matches = [
        var for var, value in namespace.items()
        if not var.startswith("__") and isinstance(getattr(value, "name", None), str)
        and getattr(value, "name", None) == flow_name and not isinstance(value, type)
    ]
    if not matches:
        raise FlowObjectError(
            f"the script defines no object whose name is {flow_name!r}; set spec.objectName to the "
            "variable holding the flow, or make the flow's name equal spec.flowName"
        )
    if len(matches) > 1:
        raise FlowObjectError(
            f"several objects are named {flow_name!r} ({', '.join(sorted(matches))}); set spec.objectName "
            "to choose one",
            ambiguous=True,
        )
    return namespace[matches[0]]


def syntax_message(err: SyntaxError | ValueError | RecursionError | MemoryError) -> str:
    """`syntax error at line 3, column 8: invalid syntax` plus the offending line, for people."""
    if not isinstance(err, SyntaxError):
        return f"the script cannot be compiled: {err or type(err).__name__}"
    where = f"syntax error at line {err.lineno}" + (f", column {err.offset}" if err.offset else "")
    if err.filename and err.filename not in (SCRIPT_FILENAME, "<unknown>"):
        where += f" of {err.filename}"
    text = f"{where}: {err.msg}"
    if err.text:
        line = err.text.rstrip("\n")
        stripped = line.lstrip()
        text += f"\n    {stripped}"
        if err.offset and err.offset > len(line) - len(stripped):
            text += "\n    " + " " * (err.offset - 1 - (len(line) - len(stripped))) + "^"
    return text


def versions() -> dict[str, str]:
    """This interpreter's Python and cloudpickle, and prefect's version when it is installed."""
    from importlib import metadata

    import cloudpickle

    found = {"python": "{}.{}.{}".format(*sys.version_info[:3]), "cloudpickle": cloudpickle.__version__}
    try:
        found["prefect"] = metadata.version("prefect")
    except metadata.PackageNotFoundError:
        pass
    return found


# --------------------------------------------------------------------------- naming the unpicklable part
def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    """What cloudpickle would pickle along with `obj` (roughly), to name an unpicklable part."""
    if isinstance(obj, types.FunctionType):
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
            try:
                yield name, cell.cell_contents
            except ValueError:  # an empty cell
                continue
        yield from ((n, obj.__globals__[n]) for n in obj.__code__.co_names if n in obj.__globals__)
    elif isinstance(obj, list | tuple):
        yield from ((f"[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, dict):
        yield from ((f"[{k!r}]", v) for k, v in obj.items())
    elif hasattr(obj, "__dict__") and not isinstance(obj, type | types.ModuleType):
        yield from vars(obj).items()


def _culprit(obj: Any, path: str, dumps: Any, depth: int = 4) -> str:
    if depth:
        for name, child in _children(obj):
            try:
                dumps(child)
            except Exception:  # any failure marks the culprit
                sep = "" if name.startswith("[") else "."
                return _culprit(child, f"{path}{sep}{name}", dumps, depth - 1)
    return path


# --------------------------------------------------------------------------- building
Reply = tuple[dict[str, Any], bytes]


class _Failed(Exception):
    """A build failure a person can act on: a condition reason and a message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _script_failure(exc: BaseException) -> _Failed:
    if isinstance(exc, MemoryError):
        return _Failed("BuildOutOfMemory", "MemoryError")
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None))
    detail = tb if len(tb) <= _DETAIL_CHARS else "…" + tb[-_DETAIL_CHARS:]
    return _Failed("ScriptFailed", f"{type(exc).__name__}: {exc}\n{detail}".rstrip())


def _compile(source: bytes, filename: str) -> types.CodeType:
    try:
        return compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise _Failed("ScriptSyntaxError", syntax_message(err)) from None


def _load_script(source: bytes) -> dict[str, Any]:
    """Run one script as the by-value module __flowstore_flow__; returns its globals."""
    code = _compile(source, SCRIPT_FILENAME)
    lines = source.decode("utf-8", "replace").splitlines(keepends=True)
    linecache.cache[SCRIPT_FILENAME] = (len(source), None, lines, SCRIPT_FILENAME)
    import cloudpickle

    module = types.ModuleType(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        exec(code, module.__dict__)  # noqa: S102 - this process exists to run the untrusted script
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are script failures too
        raise _script_failure(exc) from None
    return module.__dict__


def _load_bundle(data: bytes, scratch: str) -> tuple[dict[str, Any], str | None]:
    """Extract a bundle and import its entrypoint: (the module's globals, the entrypoint's
    object name). The bundle's own modules are then registered to be pickled by value."""
    try:
        bundle = bundles.unpack(data)
        root = os.path.realpath(tempfile.mkdtemp(prefix="bundle-", dir=scratch))
        bundles.extract(bundle, root)
        module_name = bundle.entrypoint.module
    except bundles.BundleError as exc:
        raise _Failed("InvalidSpec", str(exc)) from None
    for path, content in sorted(bundle.files.items()):  # every module compiles: say which does not
        if path.endswith(".py"):
            _compile(content, path)
    import cloudpickle

    sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        raise _script_failure(exc) from None
    top_level = {p.split("/")[0].removesuffix(".py") for p in bundle.files}
    for name in sorted(top_level):
        loaded = sys.modules.get(name)
        where = getattr(loaded, "__file__", None) or next(iter(getattr(loaded, "__path__", []) or []), "")
        if loaded is not None and os.path.realpath(where).startswith(root + os.sep):
            cloudpickle.register_pickle_by_value(loaded)
    return module.__dict__, bundle.entrypoint.object_name


def build(request: dict[str, Any], scratch: str) -> Reply:
    """Build the flow object `request` describes and pickle it. Never raises for a user error;
    prints of the flow's code go wherever ``sys.stdout`` points (the caller redirects it)."""
    try:
        object_name = request.get("object_name")
        if request.get("bundle") is not None:
            namespace, entry_object = _load_bundle(base64.b64decode(request["bundle"]), scratch)
            object_name = entry_object or object_name
        else:
            namespace = _load_script(base64.b64decode(request["source"]))
        try:
            flow = find_flow_object(namespace, flow_name=request.get("flow_name"), object_name=object_name)
        except FlowObjectError as err:
            raise _Failed("FlowAmbiguous" if err.ambiguous else "FlowNotFound", str(err)) from None
        import cloudpickle

        var = next((k for k, v in namespace.items() if v is flow), object_name or "?")
        try:
            pickled = cloudpickle.dumps(flow)
        except MemoryError:
            raise _Failed("BuildOutOfMemory", "MemoryError while pickling") from None
        except Exception as exc:
            where = _culprit(flow, var, cloudpickle.dumps)
            message = f"the flow object {var!r} ({type(flow).__name__}) cannot be pickled: {exc}"
            if where != var:
                message += f" (the unpicklable part is {where})"
            raise _Failed("Unpicklable", message) from None
    except _Failed as failed:
        return {"ok": False, "reason": failed.reason, "message": failed.message}, b""
    return {"ok": True, "versions": versions()}, pickled


# --------------------------------------------------------------------------- run as a program (builder Jobs)
#: the frame around the result in the Job's log: ``BEGIN <nonce>``, the JSON header (``ok``,
#: ``size``, ``sha256``, ``versions`` or ``reason``/``message``), the payload in base64 lines,
#: ``END <nonce>``. The nonce comes with the request, so the frame cannot be mistaken for output.
FRAME_BEGIN, FRAME_END = "==== flowstore build result BEGIN", "==== flowstore build result END"
_LINE = 76


def frame(header: dict[str, Any], payload: bytes, nonce: str) -> str:
    import hashlib
    import json

    header = {**header, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    encoded = base64.b64encode(payload).decode("ascii")
    lines = [f"{FRAME_BEGIN} {nonce}", json.dumps(header, sort_keys=True)]
    lines += [encoded[i:i + _LINE] for i in range(0, len(encoded), _LINE)]
    lines.append(f"{FRAME_END} {nonce}")
    return "\n".join(lines) + "\n"


def unframe(log: str, nonce: str) -> tuple[dict[str, Any], bytes] | None:
    """The (header, payload) framed in `log` with `nonce`, checked against the header's size
    and sha256; None when there is no complete frame. Raises ValueError on a damaged one."""
    import hashlib
    import json

    lines = log.splitlines()
    begin, end = f"{FRAME_BEGIN} {nonce}", f"{FRAME_END} {nonce}"
    try:
        first = max(i for i, line in enumerate(lines) if line.strip() == begin)
        last = next(i for i in range(first, len(lines)) if lines[i].strip() == end)
    except (ValueError, StopIteration):
        return None
    try:
        header = json.loads(lines[first + 1])
    except RecursionError:
        raise ValueError("the build result's header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError(f"the build result's header is a JSON {type(header).__name__}, not an object")
    payload = base64.b64decode("".join(line.strip() for line in lines[first + 2:last]), validate=True)
    if len(payload) != header.get("size") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise ValueError(f"the build result is damaged: {len(payload)} bytes, the builder said {header.get('size')}")
    return header, payload


def main(argv: list[str]) -> int:
    """``python builder.py REQUEST.json``: build, then print the framed result on stdout. The
    flow's own output goes to stderr meanwhile. Exit status 0 whenever a result was printed
    (a failing flow is a result); the Job fails only when this process cannot finish."""
    import json
    import signal

    # PID 1 of its container: without a handler SIGTERM is ignored, and a Job deleted mid-build
    # (its flow changed) would run on until the grace period's SIGKILL
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    with open(argv[1], "rb") as fh:
        request = json.loads(fh.read())
    stdout = sys.stdout
    sys.stdout = sys.stderr  # the flow's prints stay out of the frame
    scratch = tempfile.mkdtemp(prefix="flowstore-build-")
    try:
        import cloudpickle  # noqa: F401 - say so now if the image lacks it
    except ImportError as exc:
        header, payload = {"ok": False, "reason": "BuildImageUnusable",
                           "message": f"the build image's Python ({sys.executable}, {sys.version.split()[0]}) cannot "
                           f"import cloudpickle ({exc}); install it in the image (pip install cloudpickle)"}, b""
    else:
        try:
            header, payload = build(request, scratch)
        except MemoryError:
            header, payload = {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError"}, b""
    sys.stderr.flush()
    sys.stdout = stdout
    sys.stdout.write(frame(header, payload, str(request.get("nonce", ""))))
    sys.stdout.flush()
    os._exit(0)  # not the flow's atexit handlers nor its threads


if __name__ == "__main__":
    sys.exit(main(sys.argv))
