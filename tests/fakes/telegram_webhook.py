"""Telegram's side of a webhook: pending updates POSTed to the bot's URL until answered 2xx.

Modelled on the Bot API server's own sender (tdlib/telegram-bot-api, ``WebhookActor.cpp``),
so that a bot tested against it meets what it will meet in production:

* **One queue per chat.** Updates are queued by chat; only the head of a chat's queue is ever
  in flight, and the next one is sent after the head was answered 2xx. Different chats are
  delivered concurrently, up to ``max_connections`` requests at a time (default 40).
* **Retried until answered.** Anything but a 2xx (another status, a refused or reset
  connection, no answer within ``timeout``) leaves the update at the head of its queue, to be
  sent again after a backoff that doubles from ``backoff`` up to ``backoff_max`` (the real
  server starts at 1 s and caps at about a minute; tests want it short), or after the answer's
  ``Retry-After`` header when it has one. The real server gives up after some hours; this one
  never does: a test waits for every update to arrive.
* **The request**: ``POST <url>`` with the Update as a JSON body, ``Content-Type:
  application/json`` and, when the webhook was set with a ``secret_token``, the header
  ``X-Telegram-Bot-Api-Secret-Token``. A method in the webhook's answer body is not run.
* Errors are remembered for ``getWebhookInfo`` in the server's words ("Wrong response from the
  webhook: 500 Internal Server Error", "Webhook connection closed", ...).

Which updates are pending and what "delivered" means (dropped, or kept for a duplicate) is the
owner's business (:class:`tests.fakes.telegram_api.FakeTelegram`): this module only sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from tests.fakes import Json

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@dataclass
class Attempt:
    """One POST of one update to the webhook, as the fake saw it end."""

    update_id: int
    #: the chat the update belongs to (its delivery queue), None for chatless updates
    chat_id: int | None
    #: 1 for the first POST of this update id, counting every copy's tries
    attempt: int
    #: 1 for the first copy; 2 for a duplicate redelivered after the first was answered 2xx
    copy: int
    url: str
    started: float
    finished: float | None = None
    #: the HTTP status answered, None when there was no answer
    status: int | None = None
    #: why there was no answer: "refused", "closed" (reset or hung up), "timeout", "cancelled"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299

    @property
    def outcome(self) -> str:
        """The status as text, or the error: one word to assert on."""
        return str(self.status) if self.status is not None else str(self.error)


def chat_of(update: Json) -> int | None:
    """The chat an update is about, which is the queue it is delivered in."""
    for value in update.values():
        if isinstance(value, dict):
            chat = value.get("chat")
            if isinstance(chat, dict) and "id" in chat:
                return int(chat["id"])
    return None


class WebhookSender:
    """Delivers the owner's pending updates to one URL while :attr:`url` is set.

    ``pending()`` gives the updates not yet delivered, oldest first (the owner's own list: it
    is read on every pass, never copied); ``on_delivered(update)`` is called once per 2xx.
    """

    def __init__(self, pending: Callable[[], list[Json]], on_delivered: Callable[[Json], None],
                 *, timeout: float = 10.0, backoff: float = 0.1, backoff_max: float = 1.0) -> None:
        self.pending = pending
        self.on_delivered = on_delivered
        self.timeout = timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.url = ""
        self.secret_token: str | None = None
        self.max_connections = 40
        #: every POST, in the order they started
        self.attempts: list[Attempt] = []
        self.last_error_date: int | None = None
        self.last_error_message: str | None = None
        #: the most requests ever in flight at once
        self.most_in_flight = 0
        self._in_flight: dict[object, tuple[int, asyncio.Task[None]]] = {}
        self._retry_at: dict[int, float] = {}
        self._fails: Counter[int] = Counter()
        self._tries: Counter[int] = Counter()
        self._copies: Counter[int] = Counter()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def in_flight(self) -> list[int]:
        """The update ids being POSTed now."""
        return [update_id for update_id, _ in self._in_flight.values()]

    def configure(self, url: str, secret_token: str | None, max_connections: int) -> None:
        """Start (or go on) delivering to ``url``; requests in flight finish where they went."""
        self.url, self.secret_token, self.max_connections = url, secret_token, max_connections
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._run())
        self.wake()

    def wake(self) -> None:
        """Something changed (a new update, a delivery ended): look at the queues again."""
        self._wake.set()

    async def stop_delivering(self) -> None:
        """No webhook any more: requests in flight are abandoned, their updates stay pending."""
        self.url = ""
        tasks = [task for _, task in self._in_flight.values()]
        if self._loop is not None:
            tasks.append(self._loop)
            self._loop = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        await self.stop_delivering()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the sending loop -----------------------------------------------------------
    async def _run(self) -> None:
        while self.url:
            self._wake.clear()
            next_at = self._launch()
            wait = None if next_at is None else max(0.0, next_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _launch(self) -> float | None:
        """Send every chat's head that is due, within ``max_connections``; when to look again."""
        now = time.monotonic()
        next_at: float | None = None
        heads_seen: set[object] = set()
        for update in self.pending():
            update_id = int(update["update_id"])
            chat_id = chat_of(update)
            queue: object = chat_id if chat_id is not None else ("update", update_id)
            if queue in heads_seen:
                continue  # not its chat's head: waits for the head's 2xx
            heads_seen.add(queue)
            if queue in self._in_flight:
                continue
            due = self._retry_at.get(update_id, 0.0)
            if due > now:
                next_at = due if next_at is None else min(next_at, due)
                continue
            if len(self._in_flight) >= self.max_connections:
                break  # a delivery ending wakes the loop
            task = asyncio.create_task(self._deliver(queue, update))
            self._in_flight[queue] = (update_id, task)
            self.most_in_flight = max(self.most_in_flight, len(self._in_flight))
        return next_at

    async def _deliver(self, queue: object, update: Json) -> None:
        update_id = int(update["update_id"])
        self._tries[update_id] += 1
        attempt = Attempt(update_id, chat_of(update), self._tries[update_id],
                          self._copies[update_id] + 1, self.url, time.monotonic())
        self.attempts.append(attempt)
        headers = {"Content-Type": "application/json"}
        if self.secret_token:
            headers[SECRET_HEADER] = self.secret_token
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        message = ""
        retry_after = 0.0
        try:
            async with self._session.post(
                    attempt.url, data=json.dumps(update), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                await response.read()
                attempt.status = response.status
                message = f"Wrong response from the webhook: {response.status} {response.reason}"
                with contextlib.suppress(ValueError):
                    retry_after = float(response.headers.get("Retry-After", "0"))
        except asyncio.CancelledError:
            attempt.error = "cancelled"
            raise
        except TimeoutError:
            attempt.error, message = "timeout", "Read timeout expired"
        except aiohttp.ClientConnectorError:
            attempt.error, message = "refused", "Connection refused"
        except aiohttp.ClientError:
            # reset, hung up mid-answer, a broken answer
            attempt.error, message = "closed", "Webhook connection closed"
        finally:
            attempt.finished = time.monotonic()
            self._in_flight.pop(queue, None)
            self.wake()
        if attempt.ok:
            self._retry_at.pop(update_id, None)
            self._fails.pop(update_id, None)
            self._copies[update_id] += 1
            self.on_delivered(update)
            return
        self.last_error_date, self.last_error_message = int(time.time()), message
        self._fails[update_id] += 1
        delay = retry_after or min(self.backoff_max,
                                   self.backoff * 2 ** (self._fails[update_id] - 1))
        self._retry_at[update_id] = time.monotonic() + delay
