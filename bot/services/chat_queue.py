"""Bounded work: per-chat order with a limit (:class:`ChatQueues`), and bounds on work in flight
for everybody (:class:`InFlight`, used by the pipeline for decodes and for turns).

A flood gets "busy", not silence or a backlog. A chat slot is claimed synchronously when a
platform event arrives (before any await), so events of one chat are served in arrival order
even when the adapter downloads files first; different chats never wait for each other's line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

from bot.core.errors import Busy, ServerBusy, UserFacingError

__all__ = ["Busy", "ChatQueues", "InFlight", "ServerBusy"]


class InFlight:
    """At most ``limit`` things at once; the next is refused at once, never queued.

    Used from the event loop only, so a plain counter is race-free.
    """

    def __init__(self, limit: int, refuse: Callable[[int], UserFacingError]) -> None:
        self.limit = limit
        self.count = 0
        self._refuse = refuse

    @contextmanager
    def claim(self) -> Iterator[None]:
        if self.count >= self.limit:
            raise self._refuse(self.count)
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


class _Slot:
    def __init__(self, queues: ChatQueues, key: Hashable, lock: asyncio.Lock) -> None:
        self._queues, self._key, self._lock = queues, key, lock

    async def __aenter__(self) -> None:
        try:
            await self._lock.acquire()
        except BaseException:  # cancelled while waiting: give the place back
            self._queues._leave(self._key)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._queues._leave(self._key)


class ChatQueues:
    def __init__(self, limit: int) -> None:
        """``limit``: events per chat in progress or waiting; the next one is refused."""
        self.limit = limit
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._pending: dict[Hashable, int] = {}

    def enter(self, key: Hashable) -> _Slot:
        """Claim a place in ``key``'s line now; raises :class:`Busy` when it is full."""
        pending = self._pending.get(key, 0)
        if pending >= self.limit:
            raise Busy(f"{pending} events pending for {key}")
        self._pending[key] = pending + 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        return _Slot(self, key, lock)

    def _leave(self, key: Hashable) -> None:
        left = self._pending[key] - 1
        if left:
            self._pending[key] = left
        else:  # idle chats cost nothing
            del self._pending[key]
            self._locks.pop(key, None)
