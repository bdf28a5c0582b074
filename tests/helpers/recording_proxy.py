"""An HTTP reverse proxy that records every request before forwarding it: put it between an
agent and a real backend (S3's endpoint) and its log proves what the agent sent, and where —
e.g. that a refused status made the agent send nothing at all, credentials included."""

from __future__ import annotations

import dataclasses
import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    #: whether the request carried credentials (an Authorization header, or a presigned query)
    authenticated: bool
    #: the AWS access key id a SigV4 request was signed with (tells an agent from the operator)
    access_key: str | None = None


class RecordingProxy:
    """``with RecordingProxy("http://127.0.0.1:9000") as proxy: proxy.url``; ``proxy.log``."""

    def __init__(self, upstream: str) -> None:
        parts = urllib.parse.urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.log: list[Recorded] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                query = urllib.parse.urlsplit(self.path).query
                authorization = self.headers.get("Authorization") or ""
                key = authorization.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in authorization \
                    else None
                with proxy._lock:
                    proxy.log.append(Recorded(self.command, urllib.parse.urlsplit(self.path).path,
                                              bool(authorization) or "X-Amz-Signature" in query, key))
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    payload = answer.read()
                    self.send_response(answer.status)
                    head = self.command == "HEAD"  # keep the upstream's length: it is the object's
                    for name, value in answer.getheaders():
                        if name.lower() not in ("transfer-encoding", "connection") and (
                                head or name.lower() != "content-length"):
                            self.send_header(name, value)
                    if not head:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self.log)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
