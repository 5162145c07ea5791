"""Local fakes of the chat platforms' public APIs, over real HTTP and websockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

#: A JSON object as the platforms' APIs send and receive it.
Json = dict[str, Any]


class LocalServer:
    """An aiohttp app on a free loopback port; subclasses add routes in :meth:`routes`."""

    port = 0

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        self.routes(app)
        # Pending long polls must not hold up the end of a test.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site.port  # the bound port, once started

    async def stop(self) -> None:
        await self._runner.cleanup()


async def eventually(predicate: Callable[[], T], timeout: float, describe: Callable[[], str]) -> T:
    """The first truthy value of ``predicate``, polled; fails with ``describe()`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out; {describe()}")


def free_port() -> int:
    """A loopback port nobody listens on now (for a server to start on, or to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
