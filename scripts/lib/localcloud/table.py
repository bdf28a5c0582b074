"""The one table of the local cloud's services, and the order rules `up`, `down` and `env` follow.

To add a service: declare a Service in a family module (its servers: command line, readiness,
hooks; its exports) and list it here. Nothing else names services."""

from __future__ import annotations

from . import engine, git, kube, node, objectstores, webhook
from .cloud import LocalCloudError
from .model import Server, Service

#: in the order `up` without arguments starts them (and `status` lists their servers)
SERVICES: tuple[Service, ...] = (
    kube.SERVICE,
    objectstores.S3,
    objectstores.GCS,
    objectstores.AZURE,
    webhook.SERVICE,
    git.SERVICE,
    engine.SERVICE,
    node.SERVICE,
)
#: the order `env` prints each service's exports in (as it always has: shells and tests diff it)
EXPORT_ORDER: tuple[str, ...] = ("kube", "node", "s3", "gcs", "azure", "webhook", "docker", "git")


def names() -> list[str]:
    return [svc.name for svc in SERVICES]


def service(name: str) -> Service:
    for svc in SERVICES:
        if svc.name == name:
            return svc
    raise LocalCloudError(f"unknown service {name}; choose from {', '.join(names())}")


def servers() -> list[Server]:
    return [server for svc in SERVICES for server in svc.servers]


def server(name: str) -> Server:
    for candidate in servers():
        if candidate.name == name:
            return candidate
    raise LocalCloudError(f"unknown server {name}; choose from {', '.join(s.name for s in servers())}")


def service_of(server_name: str) -> Service:
    return next(svc for svc in SERVICES if any(s.name == server_name for s in svc.servers))


def parse(requested: list[str]) -> list[str]:
    """Service names as given (none: all), without repeats; unknown names are refused."""
    if not requested:
        return names()
    bad = [n for n in requested if n not in names()]
    if bad:
        raise LocalCloudError(f"unknown service(s) {', '.join(bad)}; choose from {', '.join(names())}")
    return list(dict.fromkeys(requested))


def for_up(requested: list[str]) -> list[Service]:
    """What `up` starts, in order: each service after the services it needs (added if missing:
    a node without its API server is no node)."""
    ordered: list[str] = []

    def add(name: str) -> None:
        if name in ordered:
            return
        for need in service(name).needs:
            add(need)
        ordered.append(name)

    for name in parse(requested):
        add(name)
    return [service(n) for n in ordered]


def _depth(name: str) -> int:
    needs = service(name).needs
    return 1 + max(_depth(n) for n in needs) if needs else 0


def for_down(requested: list[str]) -> list[Service]:
    """What `down` stops, in order: the services that need one of those asked for are added, and
    each goes down before the services it needs (the node before its API server)."""
    chosen = parse(requested)
    for name in chosen:  # grows while it is walked: dependents of dependents too
        chosen += [svc.name for svc in SERVICES if name in svc.needs and svc.name not in chosen]
    return [service(n) for n in sorted(chosen, key=lambda n: -_depth(n))]
