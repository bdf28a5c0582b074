"""A registry run by an attacker, on 127.0.0.1: it speaks just enough of the distribution API
(``GET /v2/``, blob reads) to point a client elsewhere — a Bearer challenge whose token realm
is an address of the attacker's choosing, a redirect of every blob read, or (``basic``) a Basic
challenge to every request, as many registries answer. It records the requests it received and
the Authorization headers sent to it, so a test sees what reached it."""

from __future__ import annotations

import http.server
import threading
from typing import Any


class HostileRegistry:
    def __init__(self, *, realm: str | None = None, redirect: str | None = None, basic: bool = False) -> None:
        self.realm = realm
        self.redirect = redirect
        self.basic = basic
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"{}") -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                owner.requests.append(f"{self.command} {self.path}")
                if length := int(self.headers.get("Content-Length") or 0):
                    self.rfile.read(length)
                if self.headers.get("Authorization"):
                    owner.authorizations.append(self.headers["Authorization"])
                if owner.basic and "Authorization" not in self.headers:
                    self._answer(401, {"WWW-Authenticate": 'Basic realm="registry"'})
                elif owner.realm and "Authorization" not in self.headers:
                    self._answer(401, {"WWW-Authenticate": f'Bearer realm="{owner.realm}",service="registry"'})
                elif owner.redirect and "/blobs/" in self.path:
                    self._answer(307, {"Location": owner.redirect}, b"")
                elif self.path == "/v2/":
                    self._answer(200)
                else:
                    self._answer(404, body=b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')

            do_HEAD = do_PUT = do_POST = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HostileRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
