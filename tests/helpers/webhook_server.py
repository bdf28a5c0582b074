"""A real HTTP service for the Webhook storage's tests (aiohttp, 127.0.0.1, a free port).

    with WebhookServer(token="t0k3n") as server:
        requests.post(f"{server.url}/flows", data=b"...", headers={"Authorization": "Bearer t0k3n"})

Endpoints (``/flows`` and ``/objects`` need ``Authorization: Bearer <token>`` when a token is
set, else 401):

* ``POST|PUT|PATCH /flows``: stores the body under a new id; 201 ``{"id": "<id>"}`` (with
  ``?extra=1`` also a ``credentials`` object and a long ``notes`` text, as a service answering
  more than an id does, or a metadata endpoint posing as one). A request
  with an ``Idempotency-Key`` header seen before gets the id made then (and its body is not
  stored again), as the IETF draft-ietf-httpapi-idempotency-key-header describes.
* ``GET /flows/{id}``: the body, or 404. ``DELETE /flows/{id}``: 204, or 404.
* ``PUT|POST /objects/{name}``: stores the body under `name` (may contain '/'); 200
  ``{"name": name}``. ``GET /objects/{name}``: the body or 404. ``DELETE``: 204 or 404.
* ``/status/{code}`` (any method): answers `code`; the body echoes the request's
  Authorization header (as careless services do); ``?retry_after=N`` adds Retry-After.
* ``/redirect?to=URL`` (any method): 307 to `URL` (method and body kept).
* ``/slow`` (any method): sleeps ``?seconds=`` (default 3) before answering 200.
* ``/flaky/{key}``: the first ``?fail=`` (default 2) requests per key answer ``?code=``
  (default 503); later ones store (POST/PUT/PATCH: 201 ``{"id": key}``) or return (GET) the
  body under `key`.

For assertions: ``bodies`` (id or name -> bytes), ``hits`` (path -> request count) and
``log`` (one ``(method, path, headers)`` per request).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import uuid
from typing import Any

from aiohttp import web

MAX_BODY = 64 * 1024 * 1024
#: what ``POST /flows?extra=1`` answers besides the id: it must never reach a status
EXTRA_SECRET = "canary-extra-secret-5c1d-never-in-status"


class WebhookServer:
    def __init__(self, token: str | None = None, port: int = 0) -> None:
        self.token = token
        self.requested_port = port
        self.bodies: dict[str, bytes] = {}
        self.hits: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self._flaky: collections.Counter[str] = collections.Counter()
        #: Idempotency-Key header -> the id made for the first request that carried it
        self.idempotency: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WebhookServer:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # surfaced in start()
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="webhook-test-server", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("the webhook test server did not start within 30 s")
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._record])
        app.router.add_route("POST", "/flows", self._create)
        app.router.add_route("PUT", "/flows", self._create)
        app.router.add_route("PATCH", "/flows", self._create)
        app.router.add_route("GET", "/flows/{id}", self._read)
        app.router.add_route("DELETE", "/flows/{id}", self._delete)
        app.router.add_route("PUT", "/objects/{name:.+}", self._put_object)
        app.router.add_route("POST", "/objects/{name:.+}", self._put_object)
        app.router.add_route("GET", "/objects/{name:.+}", self._read)
        app.router.add_route("DELETE", "/objects/{name:.+}", self._delete)
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_route("*", "/slow", self._slow)
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_route("*", "/flaky/{key}", self._flaky_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.requested_port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ handlers
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits[request.path] += 1
        self.log.append((request.method, request.path, dict(request.headers)))
        guarded = request.path.startswith(("/flows", "/objects"))
        if guarded and self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _create(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key and key in self.idempotency:
            return web.json_response({"id": self.idempotency[key]}, status=201)
        flow_id = uuid.uuid4().hex
        self.bodies[flow_id] = await request.read()
        if key:
            self.idempotency[key] = flow_id
        extra = {"credentials": {"AccessKeyId": "ASIA-CANARY", "SecretAccessKey": EXTRA_SECRET},
                 "notes": "x" * 5000} if request.query.get("extra") else {}
        return web.json_response({"id": flow_id, **extra}, status=201)

    async def _put_object(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.bodies[name] = await request.read()
        return web.json_response({"name": name})

    def _key(self, request: web.Request) -> str:
        return request.match_info.get("id") or request.match_info["name"]

    async def _read(self, request: web.Request) -> web.Response:
        body = self.bodies.get(self._key(request))
        if body is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=body, content_type="application/octet-stream")

    async def _delete(self, request: web.Request) -> web.Response:
        if self.bodies.pop(self._key(request), None) is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(status=204)

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        text = f"status {code}; you sent Authorization: {request.headers.get('Authorization', '-')}"
        return web.Response(status=code, text=text, headers=headers)

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(request.query["to"])

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "3")))
        return web.Response(text="finally")

    async def _flaky_handler(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self._flaky[key] += 1
        if self._flaky[key] <= int(request.query.get("fail", "2")):
            return web.Response(status=int(request.query.get("code", "503")), text="try again")
        if request.method in ("POST", "PUT", "PATCH"):
            self.bodies[key] = await request.read()
            return web.json_response({"id": key}, status=201)
        body = self.bodies.get(key)
        if body is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=body, content_type="application/octet-stream")


def main(argv: list[str] | None = None) -> int:
    """Run the service in the foreground (``scripts/localcloud up webhook`` does this), so the
    Webhook storage can be tried by hand and by the demo. The token comes from a file."""
    import argparse
    import signal
    from pathlib import Path

    parser = argparse.ArgumentParser(description="flowstore's webhook test service")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    server = WebhookServer(token=args.token_file.read_text().strip(), port=args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"webhook service on {server.url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
