"""The build sandbox's child process: a supervisor, and the build it forks and outlives.

Started by :mod:`flowstore.sandbox` as ``python -I _runner.py MEMORY_BYTES CPU_SECONDS`` in a
scrubbed environment, in a fresh working directory, in a session of its own. It limits itself
(rlimits, inherited by everything below), reads a JSON request from stdin (the builder's request,
:mod:`flowstore.artifacts.builder`, plus ``sys_path``, ``timeout`` and ``sandbox``: what the
operator's policy allows), imports what the build needs, then:

* becomes a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): every process the build starts, even
  one that ``setsid()``s and whose parent exits, is re-parented to this supervisor, never to the
  operator or init;
* forks the build. The build confines itself for good (Landlock: files, TCP, signals and
  abstract sockets outside its domain; seccomp: no socket of any family, no io_uring), refuses to
  run the flow's code if the kernel gives less than the policy requires, and writes to its
  original stdout one JSON header line (the builder's, with ``size`` and ``confinement``)
  followed by `size` pickle bytes. Everything the flow's code prints goes to stderr;
* waits for the build (at most ``timeout`` seconds: then kills it), then kills every process
  left below it, reaps them all, and exits as the build did (its exit status, or the signal that
  ended it; 124 when the timeout ended it). The build cannot signal this supervisor (Landlock
  ABI >= 6 scopes signals), so nothing it starts outlives it.

Only the standard library is imported before ``sys.path`` is set from the request.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
#: exit status of a build the supervisor stopped at its deadline (as timeout(1) has it)
TIMED_OUT = 124
#: how long the supervisor tries to kill and reap what is left before it gives up
_CLEANUP_SECONDS = 10.0


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


def _imports() -> None:
    """What the build needs, imported once here (before the fork and before confinement)."""
    import cloudpickle  # noqa: F401

    import flowstore  # noqa: F401
    from flowstore import flow  # noqa: F401 - scripts commonly import it
    from flowstore.artifacts import builder, bundle  # noqa: F401
    from flowstore.sandbox import _confine, _seccomp  # noqa: F401


def _confine_self(policy: dict[str, Any], reaped: bool) -> dict[str, Any]:
    """Give up every file outside Python and a scratch directory, every socket, and signals
    outside the build; report what the kernel gave (see _confine.py and _seccomp.py)."""
    import cloudpickle

    import flowstore
    from flowstore.sandbox import _confine, _seccomp

    package_dir = os.path.dirname(os.path.realpath(flowstore.__file__))
    read = [*_confine.python_dirs(cloudpickle.__file__), package_dir, *_confine.SYSTEM_DIRS]
    cap = policy.get("landlock_abi_max")
    # The scratch root holds only this build's HOME and working directory.
    abi = _confine.confine(read_dirs=read, write_dirs=[os.path.dirname(os.getcwd())],
                           max_abi=cap if isinstance(cap, int) else None)
    network = bool(policy.get("seccomp", True)) and _seccomp.install()
    return {"landlockABI": abi, "filesystem": abi >= 1, "network": network, "signals": abi >= 6,
            "processes": reaped}


def _refusal(confinement: dict[str, Any]) -> str | None:
    """What the kernel did not give, for people; None when the build is fully confined."""
    missing = [text for key, text in (
        ("filesystem", "file confinement (Landlock, Linux >= 5.13)"),
        ("network", "no network (a seccomp filter on socket(), x86_64 or aarch64)"),
        ("signals", "signal and abstract-socket scoping (Landlock ABI >= 6, Linux >= 6.12)"),
        ("processes", "reaping every process of the build (PR_SET_CHILD_SUBREAPER)"),
    ) if not confinement.get(key)]
    return ", ".join(missing) if missing else None


def _build(request: dict[str, Any], reply_fd: int, reaped: bool) -> None:
    """The forked build: confine, then run the builder (unless the policy refuses), reply, exit."""
    policy = dict(request.get("sandbox") or {})
    confinement = _confine_self(policy, reaped)
    missing = _refusal(confinement)
    header: dict[str, Any]
    payload = b""
    if request.get("probe"):
        header = {"ok": True}
    elif missing and not policy.get("allow_unconfined"):
        header = {"ok": False, "reason": "SandboxUnavailable", "message": (
            f"this kernel cannot confine a build fully: it lacks {missing} (Landlock ABI "
            f"{confinement['landlockABI']}), so the flow's code was not run. Build it in its own image "
            "(spec.build), or run the operator on a kernel that has it; only if you accept the risk, start "
            "the operator with --allow-unconfined-builds (chart value sandbox.allowUnconfined)")}
    else:
        from flowstore.artifacts import builder

        try:
            header, payload = builder.build(request, os.getcwd())
        except MemoryError:
            header, payload = {"ok": False, "reason": "BuildOutOfMemory", "message": "MemoryError"}, b""
        except BaseException as exc:  # e.g. a `name` property of a script's object that raises
            message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
            header, payload = {"ok": False, "reason": "ScriptFailed", "message": message}, b""
    header["size"] = len(payload)
    header["confinement"] = confinement
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110 - the script may have closed or replaced them
            pass
    with os.fdopen(reply_fd, "wb") as reply:
        reply.write(json.dumps(header).encode("utf-8") + b"\n" + payload)
    # Skip atexit handlers and joining the script's non-daemon threads.
    os._exit(0)


class _Deadline(Exception):
    pass


def _on_alarm(signum: int, frame: object) -> None:
    raise _Deadline


def _children() -> list[int]:
    """This process's children (the build's orphans are re-parented here)."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as fh:
            return [int(pid) for pid in fh.read().split()]
    except OSError:  # no CONFIG_PROC_CHILDREN: scan every process's parent
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == me:
                            found.append(int(name))
                except (OSError, IndexError, ValueError):
                    continue
        return found


def _reap_everything() -> None:
    """Kill and reap every process below this one until none is left (or a bound passes)."""
    deadline = time.monotonic() + _CLEANUP_SECONDS
    while time.monotonic() < deadline:
        children = _children()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return  # none left
        time.sleep(0.002)


def _supervise(child: int, timeout: float) -> None:
    """Wait for the build (reaping orphans as they come), then end everything below; exit as
    the build did."""
    status: int | None = None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
    try:
        while status is None:
            pid, code = os.waitpid(-1, 0)
            if pid == child:
                status = code
    except _Deadline:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    if status is None:
        os.kill(child, signal.SIGKILL)
    _reap_everything()
    if status is None:
        os._exit(TIMED_OUT)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    _limit(int(sys.argv[1]), int(sys.argv[2]))
    request = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    reply_fd = os.dup(1)  # not inheritable: subprocesses of the script cannot write replies
    os.dup2(2, 1)  # prints, even os.write(1, ...) and subprocesses' output, go to stderr
    sys.path[:] = request["sys_path"] + [p for p in sys.path if p not in request["sys_path"]]
    _imports()
    libc = ctypes.CDLL(None, use_errno=True)
    reaped = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    child = os.fork()
    if child == 0:
        _build(request, reply_fd, reaped)
    os.close(reply_fd)
    _supervise(child, float(request.get("timeout") or 60.0))


if __name__ == "__main__":
    main()
