"""Build a flow's pickle from its script in a separate, confined Python process.

The operator never runs user code in its own process. `build_pickle` starts
``python -I -B _runner.py`` (same interpreter) with:

* a scrubbed environment (PATH, LANG/LC_ALL, HOME = a fresh temp dir, MALLOC_ARENA_MAX; no
  cloud or Kubernetes variables), a fresh temp dir as cwd, and its own session;
* ``sys.path`` passed in the JSON request (``-I`` ignores PYTHONPATH and the script's dir), so
  the child imports the same flowstore and cloudpickle as the operator;
* rlimits the child sets on itself before reading anything: address space, CPU time, open
  files, no core dumps (setting them here with preexec_fn is unsafe in a threaded operator).

The child is a supervisor (a child subreaper) that forks the build and outlives it: the build
confines itself (Landlock: only Python and its scratch directory readable, no TCP, no signals
out; seccomp: no socket of any family) and every process it starts ends with it, however it
tried to leave (``setsid()``, a double fork). See ``_runner.py``, ``_confine.py``,
``_seccomp.py``. When the kernel gives less than all of that the build is refused
(``SandboxUnavailable``) unless :class:`SandboxPolicy` allows unconfined builds (the operator's
``--allow-unconfined-builds``); :func:`probe` tells what this kernel gives, so the operator can
say so at start, in its log and its metrics.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import cloudpickle

import flowstore
from flowstore.api.conditions import bounded
from flowstore.api.constants import Reason
from flowstore.artifacts import builder
from flowstore.sandbox import _runner

_RUNNER = Path(_runner.__file__).resolve()
_STDERR_TAIL = 2048
_JOIN_SECONDS = 5.0
#: the failures a builder (the sandbox's child, a builder Job) may report; its reply is written
#: by the process that runs the flow's code, so anything else is refused, never copied to status
BUILDER_REASONS = frozenset({
    Reason.SCRIPT_SYNTAX_ERROR, Reason.SCRIPT_FAILED, Reason.FLOW_NOT_FOUND, Reason.FLOW_AMBIGUOUS,
    Reason.UNPICKLABLE, Reason.BUILD_OUT_OF_MEMORY, Reason.INVALID_SPEC, Reason.BUILD_IMAGE_UNUSABLE,
})
#: the sandbox's own child also reports that it refused to run the flow's code
_CHILD_REASONS = (BUILDER_REASONS - {Reason.BUILD_IMAGE_UNUSABLE}) | {Reason.SANDBOX_UNAVAILABLE}
#: what a fully confined build has (see _runner.py); any False one is what the kernel lacks
CONFINEMENT_FEATURES = ("filesystem", "network", "signals", "processes")
#: seconds the operator waits beyond a build's timeout for its supervisor to end it
_GRACE_SECONDS = 5.0
#: characters of a builder's failure message kept (its start and its end)
MAX_REPLY_MESSAGE = 6000
_MAX_VERSIONS, _MAX_VERSION_CHARS = 16, 100
_OOM_SIGNALS = {-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS}


@dataclasses.dataclass(frozen=True)
class Built:
    """A flow object pickled by the builder, and the versions of what pickled it (the Python
    and cloudpickle the builder ran with, and prefect when installed): the envelope records them.
    `confinement`: what the sandbox could apply (CONFINEMENT_FEATURES -> bool; None for a builder
    Job, which the Pod's own securityContext confines)."""

    pickle: bytes
    versions: dict[str, str]
    confinement: dict[str, bool] | None = None


@dataclasses.dataclass(frozen=True)
class SandboxPolicy:
    """What the operator allows its sandbox. `allow_unconfined`: build even where the kernel
    gives less than full confinement (``--allow-unconfined-builds``). `landlock_abi_max`: apply
    no more than this Landlock ABI (shows what an older kernel would leave out; for tests)."""

    allow_unconfined: bool = False
    landlock_abi_max: int | None = None
    seccomp: bool = True

    def request(self) -> dict[str, object]:
        return {"allow_unconfined": self.allow_unconfined, "landlock_abi_max": self.landlock_abi_max,
                "seccomp": self.seccomp}


class BuildError(Exception):
    """A flow could not be built; `reason` is a `Reason` name, `message` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class MalformedReply(ValueError):
    """A builder's reply header is not what builders write (the flow's code can write it too)."""


def reply_header(value: object) -> dict[str, object]:
    """A builder's reply header, checked: an object with a boolean ``ok``."""
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        raise MalformedReply(f"the builder's reply header is not an object with a boolean 'ok' "
                             f"({type(value).__name__})")
    return value


def reply_versions(header: dict[str, object]) -> dict[str, str]:
    """The versions a successful reply names: a small object of short strings, else MalformedReply."""
    versions = header.get("versions") or {}
    if (not isinstance(versions, dict) or len(versions) > _MAX_VERSIONS
            or not all(isinstance(k, str) and isinstance(v, str) and len(k) <= _MAX_VERSION_CHARS
                       and len(v) <= _MAX_VERSION_CHARS for k, v in versions.items())):
        raise MalformedReply("the builder's reply names its versions as something other than an object of short "
                             "strings")
    return dict(versions)


def reply_failure(header: dict[str, object], allowed: frozenset[str] = BUILDER_REASONS) -> tuple[str, str]:
    """(reason, message) of a failed reply: a reason builders report (anything else becomes
    ScriptFailed, naming what was reported), a message of bounded length."""
    message = header.get("message")
    text = bounded(message if isinstance(message, str) else "the build failed", MAX_REPLY_MESSAGE)
    reason = header.get("reason")
    if isinstance(reason, str) and reason in allowed:
        return reason, text
    shown = repr(reason)[:80]
    return Reason.SCRIPT_FAILED, f"the build failed with a reason builders do not report ({shown}): {text}"


def check_script(source: bytes, filename: str = "<flow script>") -> None:
    """Compile `source` as a script, never running it; raise BuildError(ScriptSyntaxError)."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise BuildError(Reason.SCRIPT_SYNTAX_ERROR, builder.syntax_message(err)) from None


def build_pickle(
    source: bytes | None = None,
    *,
    bundle: bytes | None = None,
    flow_name: str,
    object_name: str | None,
    timeout: float = 60.0,
    memory_limit_bytes: int = 512 * 2**20,
    policy: SandboxPolicy | None = None,
) -> Built:
    """Run `source` (one script) or `bundle` (a flow bundle: its entrypoint is imported) in a
    sandboxed child and return ``cloudpickle.dumps(flow object)`` with the child's versions.

    The flow is the entrypoint's object, else `object_name` if given, else the one global whose
    ``name`` is `flow_name`. Objects the flow's own files define are pickled by value. Raises
    BuildError (``SandboxUnavailable`` when the kernel cannot confine the build and `policy`
    does not allow that).
    """
    if (source is None) == (bundle is None):
        raise ValueError("build_pickle needs exactly one of source and bundle")
    request = {
        **({"source": base64.b64encode(source).decode("ascii")} if source is not None
           else {"bundle": base64.b64encode(bundle or b"").decode("ascii")}),
        "flow_name": flow_name,
        "object_name": object_name,
    }
    code, out, stderr, exited = _run(request, policy or SandboxPolicy(), timeout, memory_limit_bytes)
    return _result(code, out, stderr, timed_out=not exited or code == _runner.TIMED_OUT, timeout=timeout,
                   memory=memory_limit_bytes)


def probe(policy: SandboxPolicy | None = None) -> dict[str, object]:
    """What this kernel gives a build (``landlockABI`` and CONFINEMENT_FEATURES), found the way a
    build finds it: a child confines itself and reports, running no flow code."""
    code, out, stderr, _ = _run({"probe": True}, policy or SandboxPolicy(), 30.0, 512 * 2**20)
    try:
        header = json.loads(out.partition(b"\n")[0])
        confinement = dict(header["confinement"])
    except (ValueError, KeyError, TypeError):
        raise BuildError(Reason.SANDBOX_UNAVAILABLE, f"the sandbox's probe ended with status {code} without a "
                         f"report{_output_tail(stderr)}") from None
    return confinement


def _run(request: Mapping[str, object], policy: SandboxPolicy, timeout: float,
         memory_limit_bytes: int) -> tuple[int, bytes, str, bool]:
    """Start the supervisor with `request`; (exit code, stdout, stderr tail, exited in time)."""
    data = json.dumps({**request, "sys_path": _child_sys_path(), "timeout": timeout,
                       "sandbox": policy.request()}).encode("utf-8")
    out, err = bytearray(), bytearray()
    with tempfile.TemporaryDirectory(prefix="flowstore-build-", ignore_cleanup_errors=True) as tmp:
        home, work = os.path.join(tmp, "home"), os.path.join(tmp, "work")
        os.mkdir(home, 0o700)
        os.mkdir(work, 0o700)
        cmd = [sys.executable, "-I", "-B", str(_RUNNER), str(memory_limit_bytes), str(math.ceil(timeout) + 1)]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=work, env=_child_env(home), start_new_session=True,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        threads = [
            threading.Thread(target=_write, args=(proc.stdin, data), daemon=True),
            threading.Thread(target=_read, args=(proc.stdout, out, None), daemon=True),
            threading.Thread(target=_read, args=(proc.stderr, err, _STDERR_TAIL), daemon=True),
        ]
        for thread in threads:
            thread.start()
        # the supervisor ends the build at `timeout` and everything below it; this is the backstop
        exited = _wait_unreaped(proc.pid, timeout + _GRACE_SECONDS)
        # The child is a zombie or still running, so its process group id cannot be reused
        # yet: kill the group (whatever of it is left), then reap.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = proc.wait()
        for thread in threads:
            thread.join(_JOIN_SECONDS)
    return code, bytes(out), err.decode("utf-8", "replace"), exited


def _child_sys_path() -> list[str]:
    """The operator's absolute sys.path entries, plus where flowstore and cloudpickle live."""
    roots = [str(Path(m.__file__ or ".").resolve().parent.parent) for m in (flowstore, cloudpickle)]
    paths = [p for p in sys.path if p and os.path.isabs(p)] + roots
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _child_env(home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH") or os.defpath,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        # glibc reserves 64 MiB of address space per thread arena; keep RLIMIT_AS meaningful.
        "MALLOC_ARENA_MAX": "2",
    }


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for `pid` to exit without reaping it; False if it is still running."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    return True


def _write(stream: IO[bytes], data: bytes) -> None:
    try:
        with stream:
            stream.write(data)
    except OSError:  # the child died before reading; its exit status says why
        pass


def _read(stream: IO[bytes], into: bytearray, keep: int | None) -> None:
    with stream:
        while chunk := os.read(stream.fileno(), 1 << 16):
            into += chunk
            if keep is not None and len(into) > keep:
                del into[:-keep]


_warned: set[tuple[str, ...]] = set()
_warned_lock = threading.Lock()


def missing_features(confinement: object) -> tuple[str, ...]:
    """The CONFINEMENT_FEATURES a build's reported confinement lacks (all, if it is malformed)."""
    if not isinstance(confinement, dict):
        return CONFINEMENT_FEATURES
    return tuple(f for f in CONFINEMENT_FEATURES if confinement.get(f) is not True)


def _warn_unconfined(missing: tuple[str, ...]) -> None:
    with _warned_lock:
        if missing in _warned:
            return
        _warned.add(missing)
    logging.getLogger(__name__).warning(
        "flow builds in the sandbox run without %s: this kernel cannot give them, and the operator was "
        "started with --allow-unconfined-builds (docs/security.md, \"What the kernel must provide\")",
        ", ".join(missing))


def _result(code: int, out: bytes, stderr: str, *, timed_out: bool, timeout: float, memory: int) -> Built:
    header_line, _, payload = out.partition(b"\n")
    try:
        header = json.loads(header_line) if code == 0 else None
    except ValueError:
        header = None
    confinement = header.get("confinement") if isinstance(header, dict) else None
    if isinstance(header, dict) and header.get("ok") is True and missing_features(confinement):
        _warn_unconfined(missing_features(confinement))
    if isinstance(header, dict) and header.get("ok") is True and header.get("size") == len(payload):
        try:
            reported = {f: confinement.get(f) is True for f in CONFINEMENT_FEATURES} \
                if isinstance(confinement, dict) else None
            return Built(payload, reply_versions(header), reported)
        except MalformedReply as exc:
            raise BuildError(Reason.SCRIPT_FAILED, f"{exc}; the flow's code may have written to it") from None
    limit = f"{memory / 2**20:g} MiB"
    oom = (
        f"building the flow ran out of memory (limit {limit}); make the script use less memory "
        "when it is loaded, or raise the build memory limit"
    )
    if isinstance(header, dict) and header.get("ok") is False:
        reason, message = reply_failure(header, _CHILD_REASONS)
        if reason == Reason.BUILD_OUT_OF_MEMORY:
            raise BuildError(reason, oom)
        if reason == Reason.SCRIPT_FAILED:
            message += _output_tail(stderr)
        raise BuildError(reason, message)
    if timed_out or code == -signal.SIGXCPU:
        raise BuildError(Reason.BUILD_TIMEOUT, (
            f"building the flow did not finish within {timeout:g} s and was stopped; make the script "
            "only define the flow when it is loaded (not run it), or raise the build timeout"
        ))
    if code in _OOM_SIGNALS:
        raise BuildError(Reason.BUILD_OUT_OF_MEMORY, f"{oom} (the build process was killed by "
                         f"{signal.strsignal(-code)})")
    status = f"signal {signal.strsignal(-code) or -code}" if code < 0 else f"status {code}"
    raise BuildError(Reason.SCRIPT_FAILED,
                     f"the build process ended with {status} without a result" + _output_tail(stderr))


def _output_tail(stderr: str) -> str:
    stderr = stderr.strip()
    return f"\n--- script output (last {_STDERR_TAIL} bytes) ---\n{stderr}" if stderr else ""
