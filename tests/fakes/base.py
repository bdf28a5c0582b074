"""A small threaded HTTP server on 127.0.0.1 that contract fakes build on.

A fake subclasses :class:`FakeServer` and implements :meth:`handle`; it gets one
:class:`Request` and returns a :class:`Response`. Every request is logged in ``log`` for
assertions (auth header, paths, counts)."""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers.git_server import read_body


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded path, no query
    raw_path: str  # as sent (still percent-encoded), no query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclasses.dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: dict[str, str] | None = None,
             content_type: str = "application/json; charset=utf-8") -> Response:
        return cls(status, json.dumps(doc).encode(), {"Content-Type": content_type, **(headers or {})})


class FakeServer:
    """Start with ``with Fake(...) as fake:``; ``fake.url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.log: list[Request] = []
        #: serve HTTPS with this context (set before start(); ``url`` then says https)
        self.tls: ssl.SSLContext | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: Request) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> bytes:
                return read_body(self)

            def _serve(self) -> None:
                body = self._read_body()
                parts = urllib.parse.urlsplit(self.path)
                request = Request(
                    method=self.command,
                    path=urllib.parse.unquote(parts.path),
                    raw_path=parts.path,
                    query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                fake.log.append(request)
                try:
                    response = fake.handle(request)
                except Exception as exc:  # a bug in the fake: answer 500 and say why
                    response = Response(500, f"fake failed: {exc!r}".encode())
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
