"""The build sandbox's child process: run one flow script, reply with its pickled flow object.

Started by :mod:`flowstore.sandbox` as ``python -I _runner.py MEMORY_BYTES CPU_SECONDS``
in a scrubbed environment. It limits itself first, then reads a JSON request from stdin
(``source`` base64, ``flow_name``, ``object_name``, ``sys_path``) and writes to its original
stdout one JSON header line, ``{"ok": true, "size": N}`` followed by N pickle bytes, or
``{"ok": false, "reason": ..., "message": ...}``. Everything the script prints goes to stderr.

Only the standard library is imported before ``sys.path`` is set from the request, so this
file also serves as a plain module (`syntax_message` is shared with the parent).
"""

from __future__ import annotations

import base64
import json
import linecache
import os
import resource
import sys
import traceback
import types
from collections.abc import Iterator
from typing import Any

SCRIPT_FILENAME = "<flow script>"
# Objects the script defines get this __module__; it is registered with cloudpickle as
# "pickle by value", like __main__, but `if __name__ == "__main__":` blocks do not run at
# build time. Agents exec stored scripts under the same name (envelope.flow_from_script).
MODULE_NAME = "__flowstore_flow__"
_DETAIL_CHARS = 1500


def syntax_message(err: SyntaxError | ValueError | RecursionError | MemoryError) -> str:
    """`syntax error at line 3, column 8: invalid syntax` plus the offending line, for people."""
    if not isinstance(err, SyntaxError):
        return f"the script cannot be compiled: {err or type(err).__name__}"
    where = f"syntax error at line {err.lineno}" + (f", column {err.offset}" if err.offset else "")
    text = f"{where}: {err.msg}"
    if err.text:
        line = err.text.rstrip("\n")
        stripped = line.lstrip()
        text += f"\n    {stripped}"
        if err.offset and err.offset > len(line) - len(stripped):
            text += "\n    " + " " * (err.offset - 1 - (len(line) - len(stripped))) + "^"
    return text


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    for which, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_NOFILE, 256),
        (resource.RLIMIT_CORE, 0),
    ):
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # CPU: the soft limit sends SIGXCPU, the hard one (a second later) SIGKILL.
        new_hard = value + 1 if which == resource.RLIMIT_CPU and hard == resource.RLIM_INFINITY else value
        resource.setrlimit(which, (value, new_hard))


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


def _confine_self() -> bool:
    """Import what the build needs, then give up every file outside Python and a scratch
    directory, and the network (see _confine.py). Best effort where Landlock is missing."""
    import cloudpickle

    import flowstore
    from flowstore import flow  # noqa: F401 - scripts commonly import it
    from flowstore.artifacts import envelope  # noqa: F401 - imported before confinement
    from flowstore.sandbox import _confine

    package_dir = os.path.dirname(os.path.realpath(flowstore.__file__))
    read = [*_confine.python_dirs(cloudpickle.__file__), package_dir, *_confine.SYSTEM_DIRS]
    # The scratch root holds only this build's HOME and working directory.
    return _confine.confine(read_dirs=read, write_dirs=[os.path.dirname(os.getcwd())])


def _build(request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    source = base64.b64decode(request["source"])
    try:
        code = compile(source, SCRIPT_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        return {"ok": False, "reason": "ScriptSyntaxError", "message": syntax_message(err)}, b""
    lines = source.decode("utf-8", "replace").splitlines(keepends=True)
    linecache.cache[SCRIPT_FILENAME] = (len(source), None, lines, SCRIPT_FILENAME)

    import cloudpickle

    from flowstore.artifacts.envelope import FlowObjectError, find_flow_object

    module = types.ModuleType(MODULE_NAME)
    sys.modules[MODULE_NAME] = module
    cloudpickle.register_pickle_by_value(module)
    ns = module.__dict__
    sys.stdout = sys.stderr
    try:
        exec(code, ns)  # noqa: S102 - this process exists to run the untrusted script
    except MemoryError:
        return {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError"}, b""
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are script failures too
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))  # type: ignore[union-attr]
        detail = tb if len(tb) <= _DETAIL_CHARS else "…" + tb[-_DETAIL_CHARS:]
        message = f"{type(exc).__name__}: {exc}\n{detail}".rstrip()
        return {"ok": False, "reason": "ScriptFailed", "message": message}, b""
    finally:
        sys.stdout = sys.__stdout__
    try:
        flow = find_flow_object(ns, flow_name=request["flow_name"], object_name=request["object_name"])
    except FlowObjectError as err:
        reason = "FlowAmbiguous" if err.ambiguous else "FlowNotFound"
        return {"ok": False, "reason": reason, "message": str(err)}, b""
    var = next((k for k, v in ns.items() if v is flow), request["object_name"] or "?")
    try:
        return {"ok": True}, cloudpickle.dumps(flow)
    except MemoryError:
        return {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError while pickling"}, b""
    except Exception as exc:
        where = _culprit(flow, var, cloudpickle.dumps)
        message = f"the flow object {var!r} ({type(flow).__name__}) cannot be pickled: {exc}"
        if where != var:
            message += f" (the unpicklable part is {where})"
        return {"ok": False, "reason": "Unpicklable", "message": message}, b""


def main() -> None:
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    request = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    reply_fd = os.dup(1)  # not inheritable: subprocesses of the script cannot write replies
    os.dup2(2, 1)  # prints, even os.write(1, ...) and subprocesses' output, go to stderr
    sys.path[:] = request["sys_path"] + [p for p in sys.path if p not in request["sys_path"]]
    confined = _confine_self()
    try:
        header, payload = _build(request)
    except MemoryError:
        header, payload = {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError"}, b""
    except BaseException as exc:  # e.g. a `name` property of a script's object that raises
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-_DETAIL_CHARS:]}"
        header, payload = {"ok": False, "reason": "ScriptFailed", "message": message}, b""
    header["size"] = len(payload)
    header["confined"] = confined
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110 - the script may have closed or replaced them
            pass
    with os.fdopen(reply_fd, "wb") as reply:
        reply.write(json.dumps(header).encode("utf-8") + b"\n" + payload)
    # Skip atexit handlers and joining the script's non-daemon threads.
    os._exit(0)


if __name__ == "__main__":
    main()
