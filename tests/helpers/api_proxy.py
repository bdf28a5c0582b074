"""A recording reverse proxy in front of the real kube-apiserver, for watches too: it streams each
response as it arrives (a WATCH is a response that never ends), so an operator works through it
as through the API server itself, while the proxy keeps the method, path and query of every
request. It proves what an operator asked the API server for — e.g. that every LIST and WATCH
of StoredFlows carried the shard's ``labelSelector``.

``with ApiProxy(kubeconfig) as proxy:`` then run the operator with ``KUBECONFIG=proxy.kubeconfig``
(plain HTTP on 127.0.0.1, the same bearer token; the proxy speaks TLS to the API server)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import threading
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web


@dataclasses.dataclass(frozen=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]


class ApiProxy:
    def __init__(self, kubeconfig: str, directory: Path) -> None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]
        self.upstream = cluster["server"].rstrip("/")
        self._ssl = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        self._config = config
        self._directory = directory
        self.log: list[ApiRequest] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def kubeconfig(self) -> str:
        return str(self._directory / "kubeconfig-via-proxy")

    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self.log)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.log.append(ApiRequest(request.method, request.path, dict(request.query)))
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        assert self._session is not None
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers, ssl=self._ssl, timeout=aiohttp.ClientTimeout(None),
                                         # send no Content-Type when the client sent none (as the
                                         # Kubernetes client's POSTs): aiohttp's default would be
                                         # application/octet-stream, which the API server refuses
                                         skip_auto_headers=("Content-Type",)) as up:
            response = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")})
            await response.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
                pass  # the operator went away mid-watch, or the proxy is stopping
            return response

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server  # the bound port of port 0
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._session.close()  # ends the upstream watches the handlers are streaming
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        config = dict(self._config)
        config["clusters"] = [{"name": "via-proxy", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}]
        config["contexts"] = [{"name": "via-proxy", "context": {**config["contexts"][0]["context"],
                                                                 "cluster": "via-proxy"}}]
        config["current-context"] = "via-proxy"
        Path(self.kubeconfig).write_text(yaml.safe_dump(config))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
