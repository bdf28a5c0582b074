"""Build a flow's pickle from its script in a separate, constrained Python process.

The operator never runs user code in its own process. `build_pickle` starts
``python -I -B _runner.py`` (same interpreter) with:

* a scrubbed environment (PATH, LANG/LC_ALL, HOME = a fresh temp dir, MALLOC_ARENA_MAX; no
  cloud or Kubernetes variables), a fresh temp dir as cwd, and its own session, so the whole
  process group is killed when the build ends or times out;
* ``sys.path`` passed in the JSON request (``-I`` ignores PYTHONPATH and the script's dir), so
  the child imports the same flowstore and cloudpickle as the operator;
* rlimits the child sets on itself before reading anything: address space, CPU time, open
  files, no core dumps (setting them here with preexec_fn is unsafe in a threaded operator).

It does not hide files: a pod's service account token (/var/run/secrets/kubernetes.io/...) is
readable by the child if it is readable by the operator. Disable
``automountServiceAccountToken`` or use a projected token the operator mounts elsewhere.
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
from pathlib import Path
from typing import IO

import cloudpickle

import flowstore
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
_CHILD_REASONS = BUILDER_REASONS - {Reason.BUILD_IMAGE_UNUSABLE}
#: characters of a builder's failure message kept (its start and its end)
MAX_REPLY_MESSAGE = 6000
_MAX_VERSIONS, _MAX_VERSION_CHARS = 16, 100
_OOM_SIGNALS = {-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS}


@dataclasses.dataclass(frozen=True)
class Built:
    """A flow object pickled by the builder, and the versions of what pickled it (the Python
    and cloudpickle the builder ran with, and prefect when installed): the envelope records them."""

    pickle: bytes
    versions: dict[str, str]


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
    text = message if isinstance(message, str) else "the build failed"
    if len(text) > MAX_REPLY_MESSAGE:
        half = MAX_REPLY_MESSAGE // 2
        text = f"{text[:half]}\n…\n{text[-half:]}"
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
) -> Built:
    """Run `source` (one script) or `bundle` (a flow bundle: its entrypoint is imported) in a
    sandboxed child and return ``cloudpickle.dumps(flow object)`` with the child's versions.

    The flow is the entrypoint's object, else `object_name` if given, else the one global whose
    ``name`` is `flow_name`. Objects the flow's own files define are pickled by value. Raises
    BuildError.
    """
    if (source is None) == (bundle is None):
        raise ValueError("build_pickle needs exactly one of source and bundle")
    request = json.dumps({
        **({"source": base64.b64encode(source).decode("ascii")} if source is not None
           else {"bundle": base64.b64encode(bundle or b"").decode("ascii")}),
        "flow_name": flow_name,
        "object_name": object_name,
        "sys_path": _child_sys_path(),
    }).encode("utf-8")
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
            threading.Thread(target=_write, args=(proc.stdin, request), daemon=True),
            threading.Thread(target=_read, args=(proc.stdout, out, None), daemon=True),
            threading.Thread(target=_read, args=(proc.stderr, err, _STDERR_TAIL), daemon=True),
        ]
        for thread in threads:
            thread.start()
        exited = _wait_unreaped(proc.pid, timeout)
        # The child is a zombie or still running, so its process group id cannot be reused
        # yet: kill the group (the script's leftover subprocesses too), then reap.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = proc.wait()
        for thread in threads:
            thread.join(_JOIN_SECONDS)
    stderr = err.decode("utf-8", "replace")
    return _result(code, bytes(out), stderr, timed_out=not exited, timeout=timeout, memory=memory_limit_bytes)


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


_warned = threading.Event()


def _warn_unconfined() -> None:
    if not _warned.is_set():
        _warned.set()
        logging.getLogger(__name__).warning(
            "Landlock is unavailable on this kernel: flow builds run without file and network "
            "confinement (the other sandbox limits still apply)")


def _result(code: int, out: bytes, stderr: str, *, timed_out: bool, timeout: float, memory: int) -> Built:
    header_line, _, payload = out.partition(b"\n")
    try:
        header = json.loads(header_line) if code == 0 else None
    except ValueError:
        header = None
    if isinstance(header, dict) and header.get("confined") is False:
        _warn_unconfined()
    if isinstance(header, dict) and header.get("ok") is True and header.get("size") == len(payload):
        try:
            return Built(payload, reply_versions(header))
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
