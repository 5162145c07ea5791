"""`chatman run`: the long-running bot with every configured adapter.

This is the composition root: the only place that knows which platforms exist. The core
(``bot/``) never imports a chat platform library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Protocol

from adapters.app import ChatmanApp
from bot.core.config import Settings

log = logging.getLogger(__name__)


class Adapter(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class NoAdapterConfigured(RuntimeError):
    pass


def configured_adapters(app: ChatmanApp) -> list[Adapter]:
    adapters: list[Adapter] = []
    if app.settings.web_enabled:
        from adapters.web.server import WebAdapter

        adapters.append(WebAdapter(app))
    if app.settings.telegram_bot_token is not None:
        from adapters.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(app))
    if app.settings.discord_bot_token is not None:
        from adapters.discord_bot import DiscordAdapter

        adapters.append(DiscordAdapter(app))
    return adapters


@contextlib.asynccontextmanager
async def health_checks(app: ChatmanApp) -> AsyncIterator[None]:
    """/metrics, /healthz and /readyz on CHATMAN_METRICS_PORT (if set) for the block: entered
    before the application starts, so /readyz tells a load balancer "not yet" while the
    models load, and left after it stopped. If they cannot start, the application is closed."""
    port = app.settings.metrics_port
    if port is None:
        yield
        return
    from adapters.health import HealthServer

    server = HealthServer(app, port)
    try:
        await server.start()
    except BaseException:  # e.g. the port is taken
        app.close()
        raise
    try:
        yield
    finally:
        await server.stop()


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Start the app (models, training jobs, registry follower) and the adapters until ``stop``."""
    stop = stop or asyncio.Event()
    app = ChatmanApp.from_settings(settings)
    adapters = configured_adapters(app)
    if not adapters:
        app.close()
        raise NoAdapterConfigured("nothing to run: the web console is off "
                                  "(CHATMAN_WEB_ENABLED=false) and no TELEGRAM_BOT_TOKEN or "
                                  "DISCORD_BOT_TOKEN is set")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started: list[Adapter] = []
    async with health_checks(app), app.running(background=True):
        try:
            for adapter in adapters:
                await adapter.start()
                started.append(adapter)
            log.info("ChatMan is running (%s); Ctrl-C stops it",
                     ", ".join(type(a).__name__ for a in adapters))
            await stop.wait()
        finally:
            for adapter in reversed(started):
                try:
                    await adapter.stop()
                except Exception:
                    log.exception("stopping %s", type(adapter).__name__)
