"""The durable inbox in SQL (tables ``inbox`` and ``inbox_sent``): :class:`SqlInbox`, the
:class:`bot.core.inbox.Inbox` the adapters write to and the inbox workers claim from.

Claiming is safe with any number of processes on one PostgreSQL: candidates are read with
``FOR UPDATE SKIP LOCKED`` (two claimers never wait on, or take, the same row), and the claim
itself is a conditional UPDATE that succeeds only if the row is still claimable, so a row one
claimer read a moment before another took it is simply skipped. On SQLite (one process: the
clauses are no-ops there) the conditional UPDATE alone decides between the process's workers.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.core.inbox import (
    MAX_ATTEMPTS,
    InboxItem,
    InboxState,
    InboxStats,
    Receipt,
)
from bot.infra.storage.models import InboxMessage, InboxSent, utcnow
from bot.infra.storage.store import SqlStore

log = logging.getLogger(__name__)

#: Candidates read per claim attempt: enough that a few claimers racing for the heads of
#: chats still find one each.
CANDIDATES = 8
OPEN = (InboxState.PENDING, InboxState.CLAIMED)
GAVE_UP = object()


def _item(row: InboxMessage) -> InboxItem:
    assert row.claim is not None
    return InboxItem(row.id, row.platform, row.delivery_key, row.chat_key, dict(row.payload),
                     _aware(row.received_at), row.attempts, row.claim, row.overflow)


def _aware(at: datetime) -> datetime:
    """SQLite hands timestamps back without their zone (they were stored in UTC)."""
    return at if at.tzinfo is not None else at.replace(tzinfo=utcnow().tzinfo)


class SqlInbox:
    """:class:`bot.core.inbox.Inbox` on the SQL store (all personas share one inbox: a bot
    answers as one persona)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def put(self, platform: str, key: str, chat_key: str, payload: Mapping[str, Any],
            chat_limit: int | None = None) -> bool:
        row = InboxMessage(platform=platform, delivery_key=key, chat_key=chat_key,
                           payload=dict(payload), state=InboxState.PENDING, attempts=0,
                           received_at=utcnow())
        try:
            with self.store.session() as s, s.begin():
                if chat_limit is not None:
                    # A soft limit (two replicas may count at once): it stops floods, not one
                    # message more.
                    waiting = s.scalar(select(func.count(InboxMessage.id)).where(
                        InboxMessage.chat_key == chat_key, InboxMessage.state.in_(OPEN),
                        InboxMessage.overflow.is_(False)))
                    row.overflow = bool(waiting is not None and waiting >= chat_limit)
                s.add(row)
        except IntegrityError:
            # The unique (platform, delivery_key) says we have it: a redelivery.
            log.info("inbox: %s delivery %s seen before; ignored", platform, key)
            return False
        return True

    def claim(self, owner: str, lease_s: float,
              platforms: Collection[str]) -> InboxItem | None:
        while True:
            now = utcnow()
            with self.store.session() as s, s.begin():
                ids = s.scalars(self._claimable(now, platforms)).all()
                gave_up = False
                for inbox_id in ids:
                    item = self._take(s, inbox_id, owner, lease_s, now)
                    if isinstance(item, InboxItem):
                        return item
                    gave_up = gave_up or item is GAVE_UP
                if len(ids) < CANDIDATES and not gave_up:
                    return None
            # Every candidate went to someone else between read and claim, or one was given
            # up (its chat's next message may be claimable now): read again.

    @staticmethod
    def _claimable(now: datetime, platforms: Collection[str]) -> Any:
        """The head of each chat (its oldest unfinished message) and overflows, unless held."""
        earlier = aliased(InboxMessage)
        free = or_(InboxMessage.state == InboxState.PENDING,
                   and_(InboxMessage.state == InboxState.CLAIMED,
                        InboxMessage.lease_until < now))
        head = ~exists().where(earlier.chat_key == InboxMessage.chat_key,
                               earlier.id < InboxMessage.id, earlier.state.in_(OPEN),
                               earlier.overflow.is_(False))
        return (select(InboxMessage.id)
                .where(InboxMessage.platform.in_(list(platforms)), free,
                       or_(InboxMessage.overflow.is_(True), head))
                .order_by(InboxMessage.id).limit(CANDIDATES)
                .with_for_update(skip_locked=True))

    @staticmethod
    def _take(s: Session, inbox_id: int, owner: str, lease_s: float,
              now: datetime) -> InboxItem | object | None:
        """The item now claimed, None if another claimer was first, or GAVE_UP."""
        claim = str(uuid.uuid4())
        taken = s.execute(
            update(InboxMessage)
            .where(InboxMessage.id == inbox_id,
                   or_(InboxMessage.state == InboxState.PENDING,
                       and_(InboxMessage.state == InboxState.CLAIMED,
                            InboxMessage.lease_until < now)))
            .values(state=InboxState.CLAIMED, owner=owner, claim=claim,
                    lease_until=now + timedelta(seconds=lease_s),
                    attempts=InboxMessage.attempts + 1)
            .execution_options(synchronize_session=False))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = s.get(InboxMessage, inbox_id, populate_existing=True)
        assert row is not None
        if row.attempts > MAX_ATTEMPTS:
            # Every replica that took it died on it: answering it again would only do that
            # again. Given up (and logged), so the chat's later messages are answered.
            log.error("inbox: %s message %d (%s) claimed %d times without finishing; given up",
                      row.platform, row.id, row.delivery_key, row.attempts - 1)
            row.state, row.error, row.finished_at = (
                InboxState.FAILED, "crashed every replica that answered it", now)
            return GAVE_UP
        return _item(row)

    def renew(self, receipts: list[Receipt], lease_s: float) -> list[Receipt]:
        lost = []
        until = utcnow() + timedelta(seconds=lease_s)
        with self.store.session() as s, s.begin():
            for r in receipts:
                done = s.execute(
                    update(InboxMessage)
                    .where(InboxMessage.id == r.inbox_id, InboxMessage.claim == r.claim,
                           InboxMessage.state == InboxState.CLAIMED)
                    .values(lease_until=until).execution_options(synchronize_session=False))
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    lost.append(r)
        return lost

    def release(self, receipt: Receipt) -> None:
        with self.store.session() as s, s.begin():
            s.execute(update(InboxMessage)
                      .where(InboxMessage.id == receipt.inbox_id,
                             InboxMessage.claim == receipt.claim,
                             InboxMessage.state == InboxState.CLAIMED)
                      .values(state=InboxState.PENDING, owner=None, claim=None, lease_until=None,
                              attempts=InboxMessage.attempts - 1)
                      .execution_options(synchronize_session=False))

    def release_owned(self, owner: str) -> int:
        with self.store.session() as s, s.begin():
            gone = s.execute(update(InboxMessage)
                             .where(InboxMessage.owner == owner,
                                    InboxMessage.state == InboxState.CLAIMED)
                             .values(state=InboxState.PENDING, owner=None, claim=None,
                                     lease_until=None)
                             .execution_options(synchronize_session=False))
        return int(gone.rowcount)  # type: ignore[attr-defined]

    def finish(self, receipt: Receipt, state: InboxState = InboxState.DONE,
               error: str | None = None) -> bool:
        with self.store.session() as s, s.begin():
            row = s.get(InboxMessage, receipt.inbox_id)
            if row is None or row.claim != receipt.claim:
                return False
            if row.state == InboxState.CLAIMED:
                row.state, row.error, row.finished_at = state, error, utcnow()
            return True

    def sent(self, inbox_id: int) -> dict[str, str]:
        with self.store.session() as s:
            rows = s.execute(select(InboxSent.part, InboxSent.platform_message_id)
                             .where(InboxSent.inbox_id == inbox_id)).all()
        return {part: message_id for part, message_id in rows}

    def record_sent(self, inbox_id: int, part: str, platform_message_id: str) -> None:
        with self.store.session() as s, s.begin():
            s.add(InboxSent(inbox_id=inbox_id, part=part, platform_message_id=platform_message_id))

    def stats(self) -> InboxStats:
        with self.store.session() as s:
            depth, oldest = s.execute(select(func.count(InboxMessage.id),
                                             func.min(InboxMessage.received_at))
                                      .where(InboxMessage.state.in_(OPEN))).one()
        age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else None
        return InboxStats(int(depth), age)

    def state_of(self, platform: str, key: str) -> InboxState | None:
        """For tests and operators: where a delivery stands."""
        with self.store.session() as s:
            state = s.scalar(select(InboxMessage.state).where(
                InboxMessage.platform == platform, InboxMessage.delivery_key == key))
        return InboxState(state) if state is not None else None

    def prune(self, older_than: timedelta) -> int:
        """Forget finished messages received more than ``older_than`` ago (platforms redeliver
        within hours, so a day or two of keys is plenty to recognise a redelivery)."""
        cutoff = utcnow() - older_than
        with self.store.session() as s, s.begin():
            gone = s.execute(delete(InboxMessage).where(
                InboxMessage.state.in_((InboxState.DONE, InboxState.FAILED)),
                InboxMessage.received_at < cutoff).execution_options(synchronize_session=False))
        return int(gone.rowcount)  # type: ignore[attr-defined]
