"""``/metrics``, ``/healthz`` and ``/readyz``: on the web console, and on a port of their own
(``CHATMAN_METRICS_PORT``) so a replica with the console off still answers them.

- ``GET /metrics``: Prometheus text format (see :mod:`bot.infra.metrics`): counts, timings,
  the model version; never a message, a name or a secret.
- ``GET /healthz``: 200 ``ok`` while the process can answer HTTP at all (liveness).
- ``GET /readyz``: 200 once the application is running and its database answers; else 503
  with ``{"status": "not ready", "reason": …}`` (starting, stopping, database down).

None needs the admin token: they say nothing a scraper or a load balancer should not know.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from adapters.app import AppState, ChatmanApp
from adapters.web.limits import HeaderTimeoutH11

log = logging.getLogger(__name__)

#: How long /readyz waits for the database before calling it down.
DB_TIMEOUT_S = 5.0
#: Where the standalone server listens: every interface, so a scraper on another host (or
#: outside the container) reaches it. What it answers is public by design (see above).
METRICS_HOST = "0.0.0.0"


def add_health_routes(api: FastAPI, app: ChatmanApp) -> None:
    """The three routes on ``api`` (the web console's, or :func:`health_api`'s)."""

    @api.get("/metrics")
    async def metrics() -> Response:
        # Scrape-time gauges query the database: off the event loop.
        body = await asyncio.to_thread(app.metrics.exposition)
        return Response(body, media_type=app.metrics.content_type)

    @api.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = await not_ready(app)
        if reason is not None:
            return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})


async def not_ready(app: ChatmanApp) -> str | None:
    """Why ``app`` cannot answer now, or None when it can."""
    if app.state is not AppState.RUNNING:
        return f"application {app.state}"
    try:
        await asyncio.wait_for(asyncio.to_thread(app.store.ping), DB_TIMEOUT_S)
    except TimeoutError:
        return f"database: no answer in {DB_TIMEOUT_S:.0f} s"
    except Exception as exc:
        # The exception's text can name the server and user: the log (masked) has it, the
        # answer only its kind.
        log.warning("readyz: the database does not answer: %s", exc)
        return f"database: {type(exc).__name__}"
    return None


def health_api(app: ChatmanApp) -> FastAPI:
    api = FastAPI(title="ChatMan health", docs_url=None, redoc_url=None, openapi_url=None)
    add_health_routes(api, app)
    return api


class HealthServer:
    """The three routes on ``CHATMAN_METRICS_PORT``: started by ``chatman run`` before the
    application (so /healthz answers, and /readyz says "starting", while models load) and
    stopped after it."""

    def __init__(self, app: ChatmanApp, port: int, host: str = METRICS_HOST) -> None:
        s = app.settings
        self.host, self.port = host, port
        self._socket: socket.socket | None = None
        self.server = uvicorn.Server(uvicorn.Config(
            health_api(app), host=host, port=port, log_level="warning", access_log=False,
            lifespan="off", log_config=None,
            # Half-open connections are cut off as on the console.
            http=HeaderTimeoutH11.with_timeout(s.web_header_timeout_seconds)))
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        """Raises OSError when the port is taken (bound here: uvicorn would exit the process)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name="health-server")
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the metrics server stopped while starting")
            await asyncio.sleep(0.05)
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        log.info("metrics and health checks on %s (/metrics, /healthz, /readyz)", self.url)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
