"""Training notices as an outbox: a runner with no adapter for a chat's platform (``chatman
worker``, or a replica without that platform) stores the notice; a replica that has the
platform claims it and sends it.

Guarantees (the SQL implementation is ``bot/infra/storage/notices.py``):

* **In order per chat.** Only the oldest unsent notice of a chat can be claimed, so "started",
  progress and the result arrive as they were written, whichever replicas send them.
* **Sent once, as far as a crash allows.** A claim is a lease; a replica that dies before it
  marks the notice sent lets another send it after the lease (the admin may then see it
  twice, never not at all). A notice that fails :data:`MAX_ATTEMPTS` times is given up, so
  one that cannot be sent does not hold back the chat's later ones.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from bot.core.jobs import Notice
from bot.core.types import ChatRef

#: A notice whose sending fails this many times is given up (marked sent, with the error).
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class PendingNotice:
    """A claimed notice: send ``notice`` to ``chat``, then mark ``id`` sent."""

    id: int
    chat: ChatRef
    notice: Notice
    attempts: int  # failed sends before this claim


class NoticeOutbox(Protocol):
    """A persona's training notices waiting to be sent."""

    def add(self, chat: ChatRef, notice: Notice) -> int:
        """Store a notice for ``chat``; returns its id."""

    def claim(self, platforms: Collection[str], owner: str, lease_seconds: float,
              limit: int = 20) -> list[PendingNotice]:
        """Up to ``limit`` notices for chats on ``platforms``, each the oldest unsent one of its
        chat and not leased by anybody else, now leased to ``owner`` for ``lease_seconds``."""

    def sent(self, notice_id: int, owner: str) -> None:
        """``owner`` sent it."""

    def failed(self, notice_id: int, owner: str, error: str, retry_after: float) -> None:
        """Sending failed: tried again after ``retry_after`` seconds, or given up once it has
        failed :data:`MAX_ATTEMPTS` times."""
