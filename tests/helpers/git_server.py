"""A real git smart-HTTP server for the Git storage: Debian's ``git http-backend`` (CGI) behind
a small stdlib HTTP server with basic auth. Clone, fetch (protocol v2) and push work as
against any git host.

    python3 tests/helpers/git_server.py --port 0 --root DIR --credentials-file FILE   # FILE: user:password

Every request needs ``Authorization: Basic`` with the credentials (else 401 with
``WWW-Authenticate``, as git hosts answer, so git asks for credentials). Repositories are the
bare repositories ``DIR/<name>.git``; a missing one answers 404.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's body, plain or chunked (git sends its larger requests chunked). The contract
    fakes (tests/fakes/base.py) read theirs with this too; this file stays runnable on its own."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def http_backend(root: Path, method: str, path_info: str, query: str, headers: Mapping[str, str], body: bytes, *,
                 user: str = "", remote_addr: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request to ``git http-backend`` (CGI) serving the repositories under `root`: `path_info`
    is ``/<repo>.git/info/refs`` or ``/<repo>.git/git-upload-pack`` (…), `headers` lower-cased.
    Returns (status, headers, body) of its answer."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "REQUEST_METHOD": method,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "CONTENT_TYPE": headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_USER": user,
        "REMOTE_ADDR": remote_addr,
        "GIT_PROTOCOL": headers.get("git-protocol", ""),
        "HTTP_CONTENT_ENCODING": headers.get("content-encoding", ""),
    }
    done = subprocess.run([HTTP_BACKEND], input=body, capture_output=True, env=env, check=False)
    head, sep, payload = done.stdout.partition(b"\r\n\r\n")
    if not sep:
        head, _, payload = done.stdout.partition(b"\n\n")
    if done.returncode and not done.stdout:
        return 500, {"Content-Type": "text/plain"}, done.stderr[-2000:]
    status, answer = 200, {}
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        elif name:
            answer[name.strip()] = value.strip()
    return status, answer, payload


def make_handler(root: Path, username: str, password: str,
                 log: list[str] | None = None) -> type[BaseHTTPRequestHandler]:
    """The request handler; each request is appended to `log` (``"GET /repo.git/info/refs"``)
    when one is given."""
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _read_body(self) -> bytes:
            return read_body(self)

        def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            body = self._read_body()
            if log is not None:
                log.append(f"{self.command} {urllib.parse.urlsplit(self.path).path}")
            if self.path == "/healthz":
                self._answer(200, b"ok\n")
                return
            if not hmac.compare_digest(self.headers.get("Authorization", ""), expected):
                self._answer(401, b"Authentication required\n",
                             {"WWW-Authenticate": 'Basic realm="flowstore git"', "Content-Type": "text/plain"})
                return
            parts = urllib.parse.urlsplit(self.path)
            path_info = urllib.parse.unquote(parts.path)
            repo = path_info.lstrip("/").split(".git", 1)[0] + ".git"
            if ".." in path_info or not (root / repo).is_dir():
                self._answer(404, b"Repository not found\n", {"Content-Type": "text/plain"})
                return
            status, headers, payload = http_backend(
                root, self.command, path_info, parts.query, {k.lower(): v for k, v in self.headers.items()}, body,
                user=username, remote_addr=self.client_address[0])
            self._answer(status, payload, headers)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


class GitServer:
    """In-process use (tests): ``with GitServer(root, "user", "pw") as server: server.url``."""

    def __init__(self, root: Path, username: str, password: str, port: int = 0) -> None:
        self.root = root
        #: every request answered, in order ("POST /flows.git/git-upload-pack")
        self.log: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(root, username, password, self.log))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> GitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--credentials-file", type=Path, required=True)
    args = parser.parse_args(argv)
    username, _, password = args.credentials_file.read_text().strip().partition(":")
    args.root.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.root, username, password))
    print(f"git server on http://127.0.0.1:{server.server_address[1]} serving {args.root}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
