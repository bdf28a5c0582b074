"""A small TCP proxy for fault injection: 127.0.0.1:<port> forwards to an upstream host:port.

`stop()` closes the listener *and* every live connection (both sides), so clients see a
refused connection or a reset, as when a backend goes away; `start()` listens again on the
same port. Threads only (the tests are synchronous).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0, *,
                 tls: ssl.SSLContext | None = None, rate: float | None = None) -> None:
        """With `tls`, clients must speak TLS to the proxy (a server-side context; one that
        requires client certificates makes this a `dockerd --tlsverify` stand-in). With `rate`,
        what the upstream sends reaches each client at about that many bytes a second (a slow
        network: a download that takes a while)."""
        self.tls = tls
        self.rate = rate
        self.tls_refused = 0  # handshakes that failed
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._running = False
        self.accepted = 0

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        return cls(parts.hostname, parts.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control
    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running = True
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                          name=f"tcp-proxy-{self.port}")
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every live connection; new connections are refused."""
        self._running = False
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for sock in conns:
            _close(sock)

    # ------------------------------------------------------------------ forwarding
    def _accept_loop(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._running:
                _close(client)
                return
            if self.tls is not None:
                try:
                    client.settimeout(10)
                    client = self.tls.wrap_socket(client, server_side=True)
                except (OSError, ssl.SSLError):
                    self.tls_refused += 1
                    _close(client)
                    continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            self.accepted += 1
            pair = _Pair(client, upstream)
            for src, dst, rate in ((client, upstream, None), (upstream, client, self.rate)):
                threading.Thread(target=self._pump, args=(src, dst, pair, rate), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: _Pair, rate: float | None = None) -> None:
        chunk = 65536 if rate is None else max(1, int(rate / 10))  # throttled: ten sends a second
        try:
            while True:
                data = src.recv(chunk)
                if not data:
                    break
                dst.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        if pair.one_done():  # both directions finished: release the sockets
            with self._lock:
                self._conns.difference_update((pair.client, pair.upstream))
            _close(pair.client)
            _close(pair.upstream)


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self._left = 2
        self._lock = threading.Lock()

    def one_done(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
