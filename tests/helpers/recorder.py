"""An HTTP server that only records: every request's method, path, query and headers. Stands for
a host an attacker controls (a status edited to point there), so a test can show what an agent
would have sent it — and that, refused, it sent nothing.

Unauthenticated requests get ``401`` with a Basic challenge (clients that send credentials only
when asked then send them); everything else ``404``."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from types import TracebackType
from typing import Any

from tests.helpers.net import free_port


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query
    headers: dict[str, str]

    def carries(self, secret: str) -> bool:
        """Whether `secret` is anywhere in the request line or headers (also base64-encoded,
        as in Basic authentication, with any user name)."""
        import base64

        text = self.path + "\n" + "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        if secret in text:
            return True
        for value in self.headers.values():
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "basic":
                try:
                    if secret in base64.b64decode(token).decode("utf-8", "replace"):
                        return True
                except ValueError:
                    continue
        return False


class Recorder:
    """``with Recorder() as host: …; host.requests`` — ``host.url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        recorded = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                recorded.append(Request(self.command, self.path, {k: v for k, v in self.headers.items()}))
                if "Authorization" not in self.headers:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="recorder"')
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _record

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
