"""Bounded work: per-chat order with a limit, and one limit on turns in flight for everybody.

A flood gets "busy", not silence or a backlog. A slot is claimed synchronously when a platform
event arrives (before any await), so events of one chat are served in arrival order even when
the adapter downloads files first; different chats never wait for each other's line. The
application owns one :class:`ChatQueues` that every adapter shares, so the global bound holds
across platforms: no number of chats can make the bot queue more than ``total_limit`` turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from bot.errors import Busy, ServerBusy

__all__ = ["Busy", "ChatQueues", "ServerBusy"]


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
    def __init__(self, limit: int, total_limit: int | None = None) -> None:
        """``limit``: events per chat in progress or waiting; ``total_limit``: all chats
        together. The next one beyond either is refused at once."""
        self.limit = limit
        self.total_limit = total_limit
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._pending: dict[Hashable, int] = {}
        self._total = 0

    @property
    def in_flight(self) -> int:
        return self._total

    def enter(self, key: Hashable) -> _Slot:
        """Claim a place in ``key``'s line now; raises :class:`Busy` when it is full."""
        pending = self._pending.get(key, 0)
        if pending >= self.limit:
            raise Busy(f"{pending} events pending for {key}")
        if self.total_limit is not None and self._total >= self.total_limit:
            raise ServerBusy(f"{self._total} turns in flight (limit {self.total_limit})")
        self._pending[key] = pending + 1
        self._total += 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        return _Slot(self, key, lock)

    def _leave(self, key: Hashable) -> None:
        self._total -= 1
        left = self._pending[key] - 1
        if left:
            self._pending[key] = left
        else:  # idle chats cost nothing
            del self._pending[key]
            self._locks.pop(key, None)
