"""Ports, processes, logs, and the HTTP probe every readiness check uses (all on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from .cloud import Cloud

STOP_GRACE = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like Go and Python servers do, so TIME_WAIT leftovers of a stopped server don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None, exe_hint: str | None = None) -> bool:
    """True if pid runs (not a zombie) and, given a hint, its command line mentions it."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if exe_hint:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if exe_hint not in cmdline:
                return False  # pid reused by something else
    except (FileNotFoundError, IndexError):
        return False
    return True


def spawn(cloud: Cloud, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a server in its own session, its output appended to logs/<name>.log; returns its pid."""
    cloud.logs.mkdir(parents=True, exist_ok=True)
    with open(cloud.logs / f"{name}.log", "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cloud.state_dir,
            env=env,
            close_fds=True,
        )
    return proc.pid


def log_tail(cloud: Cloud, name: str, lines: int = 30) -> str:
    try:
        text = (cloud.logs / f"{name}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def terminate(pid: int | None, exe_hint: str | None) -> None:
    """SIGTERM, then SIGKILL after a grace period: only the pid we started (checked by its hint)."""
    if not pid or not pid_alive(pid, exe_hint):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        if not pid_alive(pid, exe_hint):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid, exe_hint):
        time.sleep(0.05)


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET to one of our own servers; TLS unverified (self-signed, 127.0.0.1).
    Connection errors raise OSError (urllib.error.URLError and ssl.SSLError are OSErrors)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url)  # noqa: S310 (always http(s)://127.0.0.1)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def probe(url: str, token: str | None = None, timeout: float = 2.0) -> tuple[int, str]:
    """http_get that answers (0, "") when nothing answers: for readiness checks."""
    try:
        return http_get(url, token, timeout)
    except (OSError, http.client.HTTPException):
        return 0, ""
