"""The build sandbox's child process: limit and confine itself, then run the builder.

Started by :mod:`flowstore.sandbox` as ``python -I _runner.py MEMORY_BYTES CPU_SECONDS`` in a
scrubbed environment, in a fresh working directory. It limits itself first, then reads a JSON
request from stdin (the builder's request, :mod:`flowstore.artifacts.builder`, plus
``sys_path``) and writes to its original stdout one JSON header line (the builder's, with
``size`` and ``confined``) followed by `size` pickle bytes. Everything the flow's code prints
goes to stderr.

Only the standard library is imported before ``sys.path`` is set from the request.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback


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


def _confine_self() -> bool:
    """Import what the build needs, then give up every file outside Python and a scratch
    directory, and the network (see _confine.py). Best effort where Landlock is missing."""
    import cloudpickle

    import flowstore
    from flowstore import flow  # noqa: F401 - scripts commonly import it
    from flowstore.artifacts import builder, bundle  # noqa: F401 - imported before confinement
    from flowstore.sandbox import _confine

    package_dir = os.path.dirname(os.path.realpath(flowstore.__file__))
    read = [*_confine.python_dirs(cloudpickle.__file__), package_dir, *_confine.SYSTEM_DIRS]
    # The scratch root holds only this build's HOME and working directory.
    return _confine.confine(read_dirs=read, write_dirs=[os.path.dirname(os.getcwd())])


def main() -> None:
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    request = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    reply_fd = os.dup(1)  # not inheritable: subprocesses of the script cannot write replies
    os.dup2(2, 1)  # prints, even os.write(1, ...) and subprocesses' output, go to stderr
    sys.path[:] = request["sys_path"] + [p for p in sys.path if p not in request["sys_path"]]
    confined = _confine_self()
    from flowstore.artifacts import builder

    try:
        header, payload = builder.build(request, os.getcwd())
    except MemoryError:
        header, payload = {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError"}, b""
    except BaseException as exc:  # e.g. a `name` property of a script's object that raises
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
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
