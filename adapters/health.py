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
import logging

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from adapters.app import AppState, ChatmanApp
from adapters.http_server import LocalServer

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
        # Half-open connections are cut off as on the console.
        self.server = LocalServer(health_api(app), host=host, port=port,
                                  header_timeout=app.settings.web_header_timeout_seconds,
                                  name="health-server")
        self.url = ""

    async def start(self) -> None:
        """Raises OSError when the port is taken."""
        host, port = await self.server.start()
        self.url = f"http://{host}:{port}"
        log.info("metrics and health checks on %s (/metrics, /healthz, /readyz)", self.url)

    async def stop(self) -> None:
        await self.server.stop()
