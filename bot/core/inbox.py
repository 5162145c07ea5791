"""The durable inbox: every incoming platform message is written here before the platform is
told it arrived, then answered by whichever replica claims it.

Guarantees (see :class:`Inbox`; the SQL implementation is ``bot/infra/storage/inbox.py``):

* **At most one row per delivery.** A row is keyed by platform and the platform's own id for
  the delivery (a Telegram update id, a Discord message id), so a redelivered one is ignored.
* **One chat at a time, in arrival order.** Only the oldest unfinished message of a chat can be
  claimed, and a claim is held until its message is finished: the chat's lock lives in the
  database, so it holds across replicas. A message that finds its chat's line full
  (``chat_limit``) is marked overflow: claimable at once, to be told "busy".
* **Answered once.** A claim is a lease renewed while the replica works on it; a replica that
  dies stops renewing, and after ``lease`` seconds another replica may claim the message again.
  The turn is stored and the message marked done in one transaction, fenced by the claim's
  token: a replica whose claim was taken over stores nothing.
* **Sent once.** Every message sent in answer is recorded under its inbox id and a part name
  before the next part is sent, so a replica answering a message again after a crash skips
  what the user already has.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

#: Claims that fail this many times (the replica died each time) are given up, not retried.
MAX_ATTEMPTS = 3


class InboxState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    #: given up: failed MAX_ATTEMPTS times, or failed in a way retrying cannot fix
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of a claim: finishing a message (storing its turn) needs it."""

    inbox_id: int
    claim: str


@dataclass(frozen=True, slots=True)
class InboxItem:
    id: int
    platform: str
    #: the platform's id of this delivery (dedup key)
    key: str
    #: the order key: messages of one chat are answered one at a time, oldest first
    chat_key: str
    #: the platform's own message, as JSON (what the adapter needs to answer it anywhere)
    payload: Mapping[str, Any]
    received_at: datetime
    #: claims so far, this one included
    attempts: int
    claim: str
    #: it arrived while its chat already had its limit of messages waiting: it is answered
    #: at once, out of order, with "busy" (it never holds up the chat's line)
    overflow: bool = False

    @property
    def receipt(self) -> Receipt:
        return Receipt(self.id, self.claim)

    @property
    def turn_id(self) -> str:
        """The id logs follow this message by, in every replica that touches it."""
        return f"{self.platform}-{self.id}"


@dataclass(frozen=True, slots=True)
class InboxStats:
    #: messages received and not yet finished (waiting or being answered)
    depth: int
    #: how long the oldest of them has waited, in seconds
    oldest_age_s: float | None


class ClaimLost(RuntimeError):
    """The message was claimed by another replica meanwhile (this one's lease ran out): what
    this one did is not stored."""


class Inbox(Protocol):
    def put(self, platform: str, key: str, chat_key: str, payload: Mapping[str, Any],
            chat_limit: int | None = None) -> bool:
        """Store a delivery; False if this platform delivered ``key`` before (ignored).
        ``chat_limit``: unfinished messages a chat may have; one more is stored as overflow."""
        ...

    def claim(self, owner: str, lease_s: float,
              platforms: Collection[str]) -> InboxItem | None:
        """The oldest claimable message of ``platforms`` (the head of a chat with nothing else
        in progress, or an overflow), now held by ``owner`` for ``lease_s`` seconds; None when
        there is none."""
        ...

    def release(self, receipt: Receipt) -> None:
        """Give a claimed message back unanswered (this replica is stopping): claimable again
        at once, the attempt not counted."""
        ...

    def renew(self, receipts: list[Receipt], lease_s: float) -> list[Receipt]:
        """Extend these claims; returns the ones that were lost."""
        ...

    def release_owned(self, owner: str) -> int:
        """Give back every claim ``owner`` holds (a replica restarting under the same
        CHATMAN_REPLICA_ID: its old claims have nobody behind them); returns how many."""
        ...

    def finish(self, receipt: Receipt, state: InboxState = InboxState.DONE,
               error: str | None = None) -> bool:
        """Mark a claimed message finished (no-op if a stored turn already did); False if the
        claim was lost."""
        ...

    def sent(self, inbox_id: int) -> dict[str, str]:
        """What was sent in answer to this message so far: part name → platform message id."""
        ...

    def record_sent(self, inbox_id: int, part: str, platform_message_id: str) -> None: ...

    def stats(self) -> InboxStats: ...

    def prune(self, older_than: timedelta) -> int:
        """Forget finished messages received before ``older_than`` ago; returns how many."""
        ...


#: The message the current task answers (set by the inbox worker around an adapter's handler,
#: read where the adapter builds the core's Incoming and where it sends).
current_item: ContextVar[InboxItem | None] = ContextVar("chatman_inbox_item", default=None)
