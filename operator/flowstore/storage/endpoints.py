"""Which network addresses a request the operator sends for a user may reach (SSRF guard).

A FlowStorage names URLs (a Webhook's requests); the operator sends them from inside the
cluster, where addresses exist that the author could never reach: the cloud's instance metadata
service (whose answers are credentials), link-local services, the node, the Pod network, the
operator's own loopback. :class:`EndpointPolicy` decides, address by address:

* **always refused**: link-local (``169.254.0.0/16``, ``fe80::/10``, where every cloud's metadata
  service lives), the known metadata addresses elsewhere (AWS ``fd00:ec2::254``, Alibaba
  ``100.100.100.200``) and host names (``metadata.google.internal``, ...), unspecified,
  multicast, broadcast and reserved addresses, and IPv6 forms that embed any of these (IPv4-mapped,
  NAT64, 6to4);
* **private** (loopback ``127.0.0.0/8`` and ``::1``, RFC 1918, carrier-grade NAT ``100.64.0.0/10``,
  unique-local ``fc00::/7``, benchmarking ``198.18.0.0/15``): refused unless the policy allows
  them (``allow_private``; the operator's ``--allow-private-endpoints``);
* everything else (public addresses): allowed.

The check is made where the connection is made (:func:`guarded_session`): the host name is
resolved once, every address is checked, and the socket connects to a checked address, so DNS
rebinding between a check and the connect is impossible, and each redirect hop is a new
connection, checked the same way. Through an HTTP proxy the connection goes to the proxy, so the
target is checked by resolving its name here (what the proxy resolves could differ: say so in
docs/security.md).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import connection as urllib3_connection

from flowstore.api.constants import Reason
from flowstore.storage.errors import StorageError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NETS = ipaddress.ip_network
#: never reachable, whatever the policy: metadata services and addresses no service has
ALWAYS_REFUSED = tuple(_NETS(n) for n in (
    "0.0.0.0/8", "169.254.0.0/16", "100.100.100.200/32", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "fe80::/10", "fd00:ec2::254/128", "ff00::/8", "fec0::/10",
))
#: reachable only with allow_private
PRIVATE = tuple(_NETS(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15",
    "::1/128", "fc00::/7",
))
#: host names of metadata services (they resolve to link-local addresses too; refused by name
#: first, so a resolver that answers something else for them changes nothing)
METADATA_HOSTS = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.com", "instance-data",
    "instance-data.ec2.internal", "metadata.tencentyun.com", "metadata.platformequinix.com",
})
#: IPv6 prefixes that carry an IPv4 address (NAT64 well-known prefix)
_NAT64 = _NETS("64:ff9b::/96")


class EndpointNotAllowed(StorageError):
    """A URL's host is an address the operator's endpoint policy refuses (SSRF guard)."""

    reason = Reason.ENDPOINT_NOT_ALLOWED


@dataclasses.dataclass(frozen=True)
class EndpointPolicy:
    """What requests sent for a storage may reach. `allow_private`: loopback and private ranges
    (an operator serving in-cluster webhooks, the local cloud's 127.0.0.1 servers). Link-local
    and metadata addresses are never allowed."""

    allow_private: bool = True

    def refusal(self, address: Address) -> str | None:
        """Why `address` is refused ("" never), or None when it is allowed."""
        for candidate in _with_embedded(address):
            if any(candidate in net for net in ALWAYS_REFUSED):
                return "a link-local, cloud metadata or reserved address, which flowstore never connects to"
            if candidate.version == 4 and candidate == ipaddress.IPv4Address("255.255.255.255"):
                return "the broadcast address"
            if not self.allow_private and any(candidate in net for net in PRIVATE):
                return ("a loopback or private address; the operator reaches those only when started with "
                        "--allow-private-endpoints (chart value webhook.allowPrivateEndpoints)")
        return None

    def check_host(self, host: str, port: int | None = None) -> list[Address]:
        """The addresses `host` resolves to that this policy allows; EndpointNotAllowed when it
        names a metadata host or resolves to no allowed address. DNS failures raise OSError."""
        name = host.strip("[]").rstrip(".").lower()
        if name in METADATA_HOSTS or name.endswith(".metadata.google.internal"):
            raise EndpointNotAllowed(f"{host} is a cloud metadata service, which flowstore never connects to")
        addresses = resolve(name, port)
        refused: list[str] = []
        allowed: list[Address] = []
        for address in addresses:
            why = self.refusal(address)
            if why is None:
                allowed.append(address)
            else:
                refused.append(f"{address} is {why}")
        if not allowed:
            detail = "; ".join(dict.fromkeys(refused)) or "it resolves to no address"
            raise EndpointNotAllowed(f"{host}: {detail}")
        return allowed

    def check_url(self, url: str) -> None:
        """Refuse `url` unless its host resolves to an allowed address (EndpointNotAllowed);
        URLs without a host are left to the request to refuse."""
        try:
            parts = urllib.parse.urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            return
        if host:
            try:
                self.check_host(host, port)
            except OSError:
                return  # unresolvable: the request itself fails with a clear connection error


def resolve(host: str, port: int | None = None) -> list[Address]:
    """Every address `host` (a name or a literal) resolves to, in the resolver's order."""
    try:
        return [ipaddress.ip_address(host.split("%", 1)[0])]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))


def _with_embedded(address: Address) -> Iterable[Address]:
    """`address`, and the IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), if any."""
    yield address
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            yield address.ipv4_mapped
        if address.sixtofour is not None:
            yield address.sixtofour
        if address in _NAT64:
            yield ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)


# ---------------------------------------------------------------------- requests integration
def _guarded_connection(base: type[Any], policy: EndpointPolicy) -> type[Any]:
    class Guarded(base):  # type: ignore[misc,valid-type]
        def _new_conn(self) -> socket.socket:
            try:
                allowed = policy.check_host(self._dns_host, self.port)
            except socket.gaierror as exc:
                raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc
            errors: list[OSError] = []
            for address in allowed:
                try:
                    sock: socket.socket = urllib3_connection.create_connection(
                        (str(address), self.port), self.timeout, source_address=self.source_address,
                        socket_options=self.socket_options)
                    return sock
                except TimeoutError as exc:
                    raise urllib3.exceptions.ConnectTimeoutError(
                        self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from exc
                except OSError as exc:
                    errors.append(exc)
            raise urllib3.exceptions.NewConnectionError(self, f"Failed to establish a new connection: {errors[-1]}")

    return Guarded


class _GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections connect only to addresses `policy` allows, and that
    checks every URL it sends (each redirect hop, and targets behind a proxy)."""

    def __init__(self, policy: EndpointPolicy) -> None:
        self.policy = policy
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        http_pool = type("GuardedHTTPConnectionPool", (urllib3.HTTPConnectionPool,), {
            "ConnectionCls": _guarded_connection(urllib3.connection.HTTPConnection, self.policy)})
        https_pool = type("GuardedHTTPSConnectionPool", (urllib3.HTTPSConnectionPool,), {
            "ConnectionCls": _guarded_connection(urllib3.connection.HTTPSConnection, self.policy)})
        self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.policy.check_url(str(request.url))
        return super().send(request, *args, **kwargs)


def guarded_session(policy: EndpointPolicy) -> requests.Session:
    """A requests Session that reaches only what `policy` allows."""
    session = requests.Session()
    adapter = _GuardedAdapter(policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
