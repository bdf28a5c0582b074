"""What a service of the local cloud is: one or more servers, each with how to start it (its
command line), how to tell it is ready, what to do around its start, and what the service
exports to a shell once it is up. The family modules (kube, node, objectstores, ...) declare
theirs; table.py lists them; commands.py drives them without knowing any by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cloud import Cloud
from .state import State

#: the command line of a server; may install what it needs first (cached)
Argv = Callable[[Cloud, State], list[str]]
#: is the server (its state.json entry) ready to serve?
Ready = Callable[[Cloud, dict[str, Any]], bool]
Hook = Callable[[Cloud, State], None]
#: the `export NAME=value` pairs of a service that is up
Exports = Callable[[Cloud, State], list[tuple[str, str]]]


@dataclass(frozen=True)
class Server:
    """One process the local cloud supervises.

    exe_hint: a word of its command line, so a recycled pid is never taken for it (or killed).
    prepare: before argv, record what the server is wired to (extra ports, its upstream's port).
    wired: False when a running server points at an upstream that has moved (restart it).
    after_start: once ready (write a kubeconfig, import an image, ...).
    on_reuse: when `up` finds it running already.
    """

    name: str
    exe_hint: str
    argv: Argv
    ready: Ready
    prepare: Hook | None = None
    wired: Callable[[State], bool] | None = None
    after_start: Hook | None = None
    on_reuse: Hook | None = None


@dataclass(frozen=True)
class Service:
    """What `up NAME` brings up: its servers in start order (stopped in reverse).

    needs: services that must be up first (`up` adds them; `down` of one takes this one first).
    check: refuse early, before anything of any service starts (a bad state directory, ...).
    after_up: once every server is ready (e.g. wait until the node is Ready).
    stop: an orderly teardown instead of stopping the servers one by one in reverse.
    forget: files and directories of the state directory that `down` removes.
    """

    name: str
    summary: str
    servers: tuple[Server, ...]
    exports: Exports
    needs: tuple[str, ...] = ()
    check: Callable[[Cloud], None] | None = None
    after_up: Hook | None = None
    stop: Hook | None = None
    forget: tuple[str, ...] = ()
