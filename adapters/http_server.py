"""One way to run a small HTTP server inside the bot's event loop (the web console, the
Telegram webhook): uvicorn, with our logging and a deadline on request headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that send no complete request headers."""

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on a kept-alive connection gets the same deadline.
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        timer: asyncio.TimerHandle | None = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _headers_overdue(self) -> None:
        self._header_timer = None
        # IDLE: the client has not finished a request line and headers since we armed.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("web: closed a connection from %s that sent no request headers in %.0f s",
                     self.client[0] if self.client else "?", self.header_timeout)
            self.transport.close()

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeaderTimeoutH11]:
        return type("HeaderTimeoutH11", (cls,), {"header_timeout": seconds})


class LocalServer:
    """An ASGI app served by uvicorn as a task of the running loop.

    The socket is bound here, so a taken port raises OSError from :meth:`start` (uvicorn
    binding it would ``sys.exit`` from inside its task, past the application's clean-up).
    """

    def __init__(self, app: Any, *, host: str, port: int, header_timeout: float,
                 name: str) -> None:
        # log_config=None: uvicorn's loggers go through ours (secret masking, one format).
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            log_config=None, http=HeaderTimeoutH11.with_timeout(header_timeout)))
        self.host, self.port, self.name = host, port, name
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Serving once this returns; the address it listens on."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]), name=self.name)
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"{self.name} stopped while starting")
            await asyncio.sleep(0.05)
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
