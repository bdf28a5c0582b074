"""state.json: what each server of one local cloud was started with (port, pid, command line),
and the lock that serialises concurrent `localcloud` runs (parallel test workers running `up`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .cloud import Cloud

#: {"servers": {name: {"port": int, "pid": int | None, "argv": [...], ...}}}
State = dict[str, Any]


def path(cloud: Cloud) -> Path:
    return cloud.state_dir / "state.json"


def load(cloud: Cloud) -> State:
    try:
        state: State = json.loads(path(cloud).read_text())
    except FileNotFoundError:
        return {"servers": {}}
    return state


def save(cloud: Cloud, state: State) -> None:
    cloud.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path(cloud).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(path(cloud))


def record(state: State, name: str) -> dict[str, Any]:
    """One server's entry ({} when it was never brought up)."""
    entry: dict[str, Any] = state["servers"].get(name) or {}
    return entry


def port(state: State, name: str) -> int | None:
    found = record(state, name).get("port")
    return int(found) if found else None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` (its .lock file): a state directory for commands, a cache
    directory for installs into it, so two local clouds never install the same thing at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
