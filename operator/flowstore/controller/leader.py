"""Lease-based leader election for ``flowstore operator --leader-elect``.

Several replicas run; exactly one runs kopf. It is built on the Kubernetes client's own
``kubernetes.leaderelection`` (a ``coordination.k8s.io/v1`` Lease as the lock), which in the
installed client (37.x) is synchronous and thread-based, has no asyncio variant and no
release. Its quirks, and what this module adds around it:

- ``LeaderElection.run()`` blocks forever in ``acquire()`` as a follower, then renews in the
  calling thread: it runs in a daemon thread here, and the asyncio side waits for
  ``onstarted_leading``. Until then kopf is not started at all (no watches, no writes).
- Its API calls have no timeout and let any error other than ``ApiException`` escape and kill
  the election thread (a leader would then keep working without renewing). The lock here
  gives every call a timeout and turns every error into "this attempt failed".
- A leader only gives up after ``renew_deadline`` of failed attempts, and keeps retrying even
  when it reads another holder in the Lease. A watchdog here ends the process (exit code 1,
  no cleanup: the same as SIGKILL, which the operator tolerates) as soon as the Lease names
  another holder, or when no renewal succeeded for ``renew_deadline`` seconds — measured from
  the moment the last successful renewal was *sent*, so it always fires before any follower
  may take over (``lease_duration`` after it saw that renewal).
- There is no release: on a graceful stop (SIGTERM), once kopf has stopped and in-flight
  reconciles have finished, the Lease is released here (holder cleared, as client-go does),
  so a follower takes over within one ``retry_period`` instead of waiting for expiry.
- ``electionconfig.Config`` calls ``sys.exit`` on bad timings: :func:`check_timings` says
  what is wrong first.

RBAC: ``coordination.k8s.io`` ``leases``: get, create, update in the Lease's namespace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

logger = logging.getLogger("flowstore.leader")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def pod_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The namespace this pod runs in (its service account's), else ``default``."""
    try:
        return path.read_text().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    """hostname (the pod name in a cluster), pid and a random suffix: unique per process."""
    return f"{socket.gethostname()}_{os.getpid()}_{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True)
class Election:
    lease_name: str
    lease_namespace: str
    identity: str
    lease_duration: int = 10
    renew_deadline: float = 8.0
    retry_period: float = 2.0


def check_timings(election: Election) -> None:
    """The constraints ``electionconfig.Config`` enforces (with ``sys.exit``), as a ValueError."""
    if election.retry_period < 1:
        raise ValueError("--retry-period must be at least 1 second")
    if election.renew_deadline <= 1.2 * election.retry_period:
        raise ValueError("--renew-deadline must be greater than 1.2 x --retry-period")
    if election.lease_duration <= election.renew_deadline:
        raise ValueError("--lease-duration must be greater than --renew-deadline")


class _Timed:
    """An API object whose every call carries a request timeout."""

    def __init__(self, api: Any, timeout: float) -> None:
        self._api, self._timeout = api, timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._api, name), _request_timeout=self._timeout)


class GuardedLeaseLock(LeaseLock):  # type: ignore[misc]
    """The library's LeaseLock, with timeouts, no escaping errors, renewal bookkeeping for the
    watchdog, and a release that also closes the lock (no API write after it)."""

    def __init__(self, name: str, namespace: str, identity: str, timeout: float) -> None:
        super().__init__(name, namespace, identity)  # type: ignore[no-untyped-call]
        self.api_instance = _Timed(client.CoordinationV1Api(), timeout)  # type: ignore[assignment]
        self._mutex = threading.Lock()  # a write and the release never interleave
        self._closed = False
        self.renewed_at: float | None = None  # monotonic time the last successful write was sent
        self.lost_to: str | None = None  # set when the Lease names another holder while we held it

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        try:
            found, record = super().get(name, namespace)  # type: ignore[no-untyped-call]
        except Exception as exc:
            logger.debug("reading Lease %s/%s failed: %r", namespace, name, exc)
            return False, exc
        if found and self.renewed_at is not None and record.holder_identity != self.identity:
            self.lost_to = record.holder_identity or "(nobody)"
        return found, record

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return self._write(super().create, name=name, namespace=namespace, election_record=election_record)

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return self._write(super().update, name, namespace, updated_record)

    def _write(self, call: Callable[..., bool], *args: Any, **kwargs: Any) -> bool:
        with self._mutex:
            if self._closed:
                return False
            sent = time.monotonic()
            try:
                ok = bool(call(*args, **kwargs))
            except Exception as exc:
                logger.debug("writing Lease %s/%s failed: %r", self.namespace, self.name, exc)
                return False
            if ok:
                self.renewed_at = sent
            return ok

    def release(self) -> bool:
        """Close the lock, then clear the holder if it is still us. True if released."""
        with self._mutex:
            self._closed = True
        try:
            lease = self.api_instance.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return False
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = dt.datetime.now(dt.UTC)
            self.api_instance.replace_namespaced_lease(self.name, self.namespace, lease)
        except Exception as exc:
            logger.warning("could not release Lease %s/%s (it will expire): %r", self.namespace, self.name, exc)
            return False
        return True


def exit_now(code: int) -> NoReturn:
    """Flush the logs and end the process without interpreter finalization.

    The election library runs in a daemon thread that cannot be stopped (it polls the Lease until
    its renew deadline passes, in the middle of HTTP calls). CPython finalizing while such a
    thread holds a lock (stderr's buffer, the SSL module's) aborts the process (SIGABRT), which
    turned a clean stop into exit code -6 now and then. Everything that matters is done by the
    time this is called: kopf stopped, reconciles finished, the Lease released."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class _Guard:
    """Ends the process the moment leadership is lost, unless we are stopping on purpose."""

    def __init__(self, lock: GuardedLeaseLock, election: Election) -> None:
        self.lock, self.election = lock, election
        self.stopping = False

    def lost(self, why: str) -> None:
        if self.stopping:
            return
        logger.critical("leader election: %s; exiting now so that no work is done without the lease", why)
        exit_now(1)

    def run_election(self, election: leaderelection.LeaderElection) -> None:
        try:
            election.run()  # type: ignore[no-untyped-call]  # returns only after onstopped_leading
        except BaseException as exc:
            self.lost(f"the election thread failed: {exc!r}")
        self.lost("the election thread ended")

    def watch(self) -> None:
        period = min(0.25, self.election.retry_period / 4)
        while not self.stopping:
            if self.lock.lost_to is not None:
                self.lost(f"Lease {self.lock.namespace}/{self.lock.name} is now held by {self.lock.lost_to}")
            renewed = self.lock.renewed_at
            if renewed is not None and time.monotonic() - renewed > self.election.renew_deadline:
                self.lost(f"Lease {self.lock.namespace}/{self.lock.name} not renewed for "
                          f"{time.monotonic() - renewed:.1f}s (renew deadline {self.election.renew_deadline}s)")
            time.sleep(period)


async def _serve_follower_liveness(url: str, identity: str) -> Any:
    """Answer the liveness endpoint while following (kopf serves it once leading)."""
    from aiohttp import web

    parts = urllib.parse.urlsplit(url)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"leaderElection": "follower", "identity": identity})

    app = web.Application()
    app.router.add_get(parts.path or "/", alive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parts.hostname or "0.0.0.0", parts.port or 80).start()  # noqa: S104
    return runner


async def run_elected(election: Election, lead: Callable[[asyncio.Event, asyncio.Event], Awaitable[int]],
                      liveness: str | None = None) -> int:
    """Follow until the Lease is ours, then ``await lead(stop, ready)`` (kopf) while it is renewed.

    ``lead`` passes both to ``kopf.operator`` (``stop_flag``, ``ready_flag``). SIGTERM/SIGINT
    set ``stop``; after ``lead`` returns, the Lease is released. Losing the Lease ends the
    process with exit code 1 at once (see the module docstring)."""
    check_timings(election)
    loop = asyncio.get_running_loop()
    stop, leading, ready = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def handle_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    async def reclaim_signals() -> None:
        # kopf installs its own handlers as it starts; a signal would then stop kopf but leave
        # its waiter on our stop flag hanging (kopf waits 5 s for such tasks). Once kopf is
        # ready, signals set the stop flag again, which kopf also watches.
        await ready.wait()
        handle_signals()

    handle_signals()

    timeout = max(1.0, election.renew_deadline / 2)
    lock = GuardedLeaseLock(election.lease_name, election.lease_namespace, election.identity, timeout)
    guard = _Guard(lock, election)
    config = electionconfig.Config(  # type: ignore[no-untyped-call]
        lock, lease_duration=election.lease_duration, renew_deadline=election.renew_deadline,
        retry_period=election.retry_period,
        onstarted_leading=lambda: loop.call_soon_threadsafe(leading.set),
        onstopped_leading=lambda: guard.lost("the Lease could not be renewed"),
    )
    where = f"{election.lease_namespace}/{election.lease_name}"
    logger.info("leader election: %s waits to lead (Lease %s)", election.identity, where)
    election_loop = leaderelection.LeaderElection(config)  # type: ignore[no-untyped-call]
    threading.Thread(target=guard.run_election, args=(election_loop,),
                     name="leader-election", daemon=True).start()

    health = await _serve_follower_liveness(liveness, election.identity) if liveness else None
    try:
        waiters = [asyncio.ensure_future(leading.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    finally:
        if health is not None:
            await health.cleanup()  # frees the port for kopf's own liveness endpoint

    if stop.is_set():
        guard.stopping = True
        await loop.run_in_executor(None, lock.release)  # in case it was acquired meanwhile
        logger.info("leader election: stopped while following")
        return 0

    logger.info("leader election: %s acquired Lease %s; starting the operator", election.identity, where)
    threading.Thread(target=guard.watch, name="leader-watchdog", daemon=True).start()
    reclaimer = asyncio.ensure_future(reclaim_signals())  # before kopf starts: kopf leaves it alone
    try:
        return await lead(stop, ready)
    finally:
        reclaimer.cancel()
        guard.stopping = True
        if await loop.run_in_executor(None, lock.release):
            logger.info("leader election: released Lease %s", where)
