"""How Telegram updates reach the inbox: long polling or a webhook. Either way an update is
stored (:meth:`bot.core.inbox.Inbox.put`) before Telegram learns it arrived — the next
getUpdates offset, or the webhook's 200 — so an update is never lost between Telegram and the
database, and one Telegram sends again is recognised by its update id and ignored.

The webhook server is ours, not python-telegram-bot's (whose answers 200 as soon as the update
is queued in memory): any replica behind a load balancer stores what it receives, and the
inbox decides which replica answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ExtBot

from adapters.http_server import LocalServer
from bot.core.config import Settings

log = logging.getLogger(__name__)

#: Stores one update (its JSON as Telegram sent it); raises if it could not be stored.
Receive = Callable[[Mapping[str, Any]], Awaitable[None]]
#: The updates ChatMan asks for.
ALLOWED_UPDATES = ["message"]
#: A message update is a few kilobytes (files travel by id); anything far bigger is not
#: Telegram's.
MAX_UPDATE_BYTES = 1024 * 1024
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class Polling:
    """getUpdates in a loop; the offset moves past an update only once it is stored."""

    def __init__(self, bot: ExtBot[None], receive: Receive, *, timeout_s: int = 30) -> None:
        self.bot, self.receive, self.timeout_s = bot, receive, timeout_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A webhook left set (by a webhook deployment) makes getUpdates fail with 409.
        await self.bot.delete_webhook()
        self._task = asyncio.create_task(self._poll(), name="telegram-polling")
        log.info("telegram: long polling")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        offset: int | None = None
        delay = 1.0
        while True:
            try:
                updates = await self.bot.get_updates(offset=offset, timeout=self.timeout_s,
                                                     allowed_updates=ALLOWED_UPDATES)
            except TelegramError as exc:  # network trouble, 5xx, 409 (a webhook was set)
                log.warning("telegram: getUpdates failed (%s); again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            for update in updates:
                await self._store(update)
                offset = update.update_id + 1

    async def _store(self, update: Update) -> None:
        delay = 1.0
        while True:
            try:
                await self.receive(update.to_dict())
                return
            except Exception:
                # Not acknowledged (the offset stays): Telegram keeps it for us meanwhile.
                log.exception("telegram: could not store update %d; again in %.0f s",
                              update.update_id, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


class Webhook:
    """An HTTP endpoint at the webhook URL's path that answers 200 only once the update is
    stored: anything else (a database error, a replica killed mid-request) makes Telegram send
    it again. Requests without the secret token get 403; bodies that aren't an update, 400."""

    def __init__(self, bot: ExtBot[None], receive: Receive, settings: Settings,
                 secret: str) -> None:
        assert settings.telegram_webhook_url is not None
        self.bot, self.receive, self.settings, self.secret = bot, receive, settings, secret
        self.url = settings.telegram_webhook_url
        path = "/" + urlparse(self.url).path.lstrip("/")
        api = Starlette(routes=[Route(path, self._update, methods=["POST"])])
        self.server = LocalServer(api, host=settings.telegram_webhook_listen,
                                  port=settings.telegram_webhook_port,
                                  header_timeout=settings.web_header_timeout_seconds,
                                  name="telegram-webhook")

    async def start(self) -> None:
        await self.server.start()
        # Every replica sets the same URL: idempotent, and any replica's restart re-asserts it.
        await self.bot.set_webhook(self.url, secret_token=self.secret,
                                   allowed_updates=ALLOWED_UPDATES)
        log.info("telegram: receiving updates by webhook on %s:%d",
                 self.settings.telegram_webhook_listen, self.settings.telegram_webhook_port)

    async def stop(self) -> None:
        # The webhook stays set: the other replicas still receive it.
        await self.server.stop()

    async def _update(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not secrets.compare_digest(given.encode(), self.secret.encode()):
            log.info("telegram: webhook request without the secret token refused")
            return PlainTextResponse("forbidden", status_code=403)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPDATE_BYTES:
                return PlainTextResponse("too large", status_code=413)
        try:
            update = json.loads(body)
        except ValueError:
            return PlainTextResponse("not JSON", status_code=400)
        if not isinstance(update, dict) or not isinstance(update.get("update_id"), int):
            return PlainTextResponse("not an update", status_code=400)
        try:
            await self.receive(update)
        except Exception:
            log.exception("telegram: could not store update %s; Telegram will send it again",
                          update["update_id"])
            return PlainTextResponse("try again", status_code=500)
        return PlainTextResponse("ok")


def chat_of(update: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any] | None]:
    """The chat id an update belongs to and its message (None for other kinds of update)."""
    message = update.get("message")
    if not isinstance(message, Mapping):
        return None, None
    chat = message.get("chat")
    chat_id = chat.get("id") if isinstance(chat, Mapping) else None
    return (str(chat_id) if isinstance(chat_id, int) else None), message
