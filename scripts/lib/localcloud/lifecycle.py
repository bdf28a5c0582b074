"""Starting, checking and stopping one server of the table (any family's)."""

from __future__ import annotations

import time

from . import procs
from . import state as st
from .cloud import Cloud, LocalCloudError, log
from .model import Server
from .state import State

READY_TIMEOUT = 120.0


def running(server: Server, state: State) -> bool:
    """Its recorded pid runs (and is still ours) and its port answers."""
    srv = st.record(state, server.name)
    if not srv or not procs.pid_alive(srv.get("pid"), server.exe_hint):
        return False
    return procs.port_answers(srv["port"])


def healthy(cloud: Cloud, server: Server, state: State) -> bool:
    """Running, ready and still wired to the upstream servers it was started against."""
    return (running(server, state) and server.ready(cloud, st.record(state, server.name))
            and (server.wired is None or server.wired(state)))


def start(cloud: Cloud, server: Server, state: State, keep_port: bool) -> None:
    """Start it and wait until it is ready. The recorded port is reused when free (clients keep
    working); keep_port (`localcloud start`) insists on it."""
    name = server.name
    srv = state["servers"].setdefault(name, {})
    if not srv.get("port") or not procs.port_free(srv["port"]):
        if keep_port and srv.get("port"):
            raise LocalCloudError(f"{name}: port {srv['port']} is taken by another process")
        srv["port"] = procs.free_port()
    if server.prepare:
        server.prepare(cloud, state)
    argv = server.argv(cloud, state)
    t0 = time.monotonic()
    srv["pid"] = procs.spawn(cloud, name, argv)
    srv["argv"] = argv
    st.save(cloud, state)
    deadline = t0 + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not procs.pid_alive(srv["pid"]):
            raise LocalCloudError(f"{name} exited during startup; log tail:\n{procs.log_tail(cloud, name)}")
        if server.ready(cloud, srv):
            log(f"{name} ready on 127.0.0.1:{srv['port']} (pid {srv['pid']}, {time.monotonic() - t0:.1f}s)")
            if server.after_start:
                server.after_start(cloud, state)
            return
        time.sleep(0.2)
    procs.terminate(srv["pid"], server.exe_hint)
    raise LocalCloudError(f"{name} not ready after {READY_TIMEOUT:.0f}s; log tail:\n{procs.log_tail(cloud, name)}")


def stop(cloud: Cloud, server: Server, state: State) -> None:
    """Stop it (if it is ours and runs), keeping its port and data in the state."""
    srv = state["servers"].get(server.name)
    if not srv:
        return
    procs.terminate(srv.get("pid"), server.exe_hint)
    srv["pid"] = None
    st.save(cloud, state)


def extra_port(state: State, name: str, key: str) -> None:
    """A second port of a server (etcd's peer port): kept while free, never its main port."""
    srv = state["servers"][name]
    if not srv.get(key) or not procs.port_free(srv[key]):
        srv[key] = procs.free_port()
        while srv[key] == srv["port"]:
            srv[key] = procs.free_port()
