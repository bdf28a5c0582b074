"""The commands: up, down, start, stop, env, status. They drive the table's services and servers
and know none of them by name."""

from __future__ import annotations

import contextlib
import shlex
import shutil

from . import lifecycle, table
from . import state as st
from .cloud import Cloud, LocalCloudError, log
from .state import State, locked


def up(cloud: Cloud, requested: list[str]) -> None:
    """Start (or reuse) services: a server that runs, answers and is wired to its upstream's
    current port is kept; anything else is cleared and started again."""
    services = table.for_up(requested)
    for svc in services:  # before anything starts
        if svc.check:
            svc.check(cloud)
    with locked(cloud.state_dir):
        state = st.load(cloud)
        for svc in services:
            for server in svc.servers:
                if lifecycle.healthy(cloud, server, state):
                    log(f"{server.name} already running on 127.0.0.1:{st.port(state, server.name)}")
                    if server.on_reuse:
                        server.on_reuse(cloud, state)
                    continue
                # Not (properly) up: clear a stale or hung process, then (re)start it.
                lifecycle.stop(cloud, server, state)
                lifecycle.start(cloud, server, state, keep_port=False)
            if svc.after_up:
                svc.after_up(cloud, state)
        st.save(cloud, state)


def down(cloud: Cloud, requested: list[str]) -> None:
    """Stop services and remove their runtime state; the state directory goes with the last one."""
    if not cloud.state_dir.exists():
        return
    services = table.for_down(requested)
    with locked(cloud.state_dir):
        state = st.load(cloud)
        for svc in services:
            if svc.stop:
                svc.stop(cloud, state)
            for server in reversed(svc.servers):
                lifecycle.stop(cloud, server, state)
                state["servers"].pop(server.name, None)
                with contextlib.suppress(FileNotFoundError):
                    (cloud.logs / f"{server.name}.log").unlink()
            for name in svc.forget:
                path = cloud.state_dir / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            log(f"{svc.name} down")
        st.save(cloud, state)
        everything_down = not state["servers"]
    if everything_down:
        shutil.rmtree(cloud.state_dir, ignore_errors=True)


def start(cloud: Cloud, name: str) -> None:
    """Start one stopped server again on the port it had."""
    server = table.server(name)
    if not st.path(cloud).exists():
        raise LocalCloudError(f"nothing is up; run `localcloud up {table.service_of(name).name}`")
    with locked(cloud.state_dir):
        state = st.load(cloud)
        if not st.port(state, name):
            raise LocalCloudError(f"{name} was never brought up; run `localcloud up {table.service_of(name).name}`")
        if lifecycle.running(server, state):
            log(f"{name} already running")
            return
        lifecycle.start(cloud, server, state, keep_port=True)


def stop(cloud: Cloud, name: str) -> None:
    """Stop one server, keeping its port and data (for fault injection)."""
    server = table.server(name)
    if not st.path(cloud).exists():
        log(f"{name} is not up")
        return
    with locked(cloud.state_dir):
        state = st.load(cloud)
        lifecycle.stop(cloud, server, state)
        log(f"{name} stopped (port and data kept; `localcloud start {name}` resumes it)")


def up_services(state: State) -> set[str]:
    """Services whose servers all run."""
    return {svc.name for svc in table.SERVICES if all(lifecycle.running(s, state) for s in svc.servers)}


def exports(cloud: Cloud, state: State, up: set[str]) -> list[tuple[str, str]]:
    """What `env` exports: each service that is up, with the services it needs, in EXPORT_ORDER."""
    pairs: list[tuple[str, str]] = []
    for name in table.EXPORT_ORDER:
        svc = table.service(name)
        if name in up and all(need in up for need in svc.needs):
            pairs += svc.exports(cloud, state)
    return pairs


def render_exports(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in pairs)


def env(cloud: Cloud) -> str:
    state = st.load(cloud)
    return render_exports(exports(cloud, state, up_services(state)))


def status_line(name: str, record: dict[str, object], up: bool) -> str:
    return f"{name:<23} pid={record.get('pid') or '-':<8} port={record.get('port') or '-':<6} {'up' if up else 'down'}"


def status(cloud: Cloud) -> str:
    """One line per server of the table: name, pid, port, up/down."""
    state = st.load(cloud)
    return "".join(status_line(s.name, st.record(state, s.name), lifecycle.running(s, state)) + "\n"
                   for s in table.servers())
