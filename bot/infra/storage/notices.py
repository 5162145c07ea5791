"""Training notices waiting to be sent (``training_notices``): :class:`SqlNoticeOutbox`, the
:class:`bot.core.notices.NoticeOutbox` of ``chatman worker`` and the replicas that send for it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import aliased

from bot.core.jobs import Notice
from bot.core.messages import Message
from bot.core.notices import MAX_ATTEMPTS, PendingNotice
from bot.core.types import ChatRef
from bot.infra.storage.models import TrainingNoticeRow, utcnow
from bot.infra.storage.store import SqlStore


class SqlNoticeOutbox:
    """:class:`bot.core.notices.NoticeOutbox` on the SQL store, for one persona."""

    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona

    def add(self, chat: ChatRef, notice: Notice) -> int:
        with self.store.session() as s, s.begin():
            row = TrainingNoticeRow(
                persona=self.persona, job_id=notice.job_id, platform=chat.platform,
                chat_id=chat.chat_id, message=notice.message.to_dict(),
                image=str(notice.image) if notice.image else None, final=notice.final,
                attempts=0)
            s.add(row)
            s.flush()
            return row.id

    def claim(self, platforms: Collection[str], owner: str, lease_seconds: float,
              limit: int = 20) -> list[PendingNotice]:
        if not platforms:
            return []
        now = utcnow()
        n, earlier = TrainingNoticeRow, aliased(TrainingNoticeRow)
        free = or_(n.lease_until.is_(None), n.lease_until < now)
        # The head of each chat's queue: no unsent notice of the same chat before it.
        head = ~exists().where(earlier.persona == n.persona, earlier.platform == n.platform,
                               earlier.chat_id == n.chat_id, earlier.sent_at.is_(None),
                               earlier.id < n.id)
        with self.store.session() as s:
            candidates = s.scalars(select(n).where(
                n.persona == self.persona, n.platform.in_(list(platforms)), n.sent_at.is_(None),
                free, head).order_by(n.id).limit(limit)).all()
        claimed: list[PendingNotice] = []
        for row in candidates:
            # Taken by id, only if still free: of two replicas that read the same row, one
            # updates it (the other's UPDATE matches nothing), on SQLite and PostgreSQL alike.
            with self.store.session() as s, s.begin():
                done = s.execute(update(n).where(
                    n.id == row.id, n.sent_at.is_(None),
                    or_(n.lease_until.is_(None), n.lease_until < now))
                    .values(claimed_by=owner,
                            lease_until=now + timedelta(seconds=lease_seconds)))
                if getattr(done, "rowcount", 0) != 1:
                    continue
            claimed.append(PendingNotice(
                row.id, ChatRef(row.platform, row.chat_id),
                Notice(row.job_id, Message.from_dict(row.message),
                       Path(row.image) if row.image else None, row.final),
                row.attempts))
        return claimed

    def _mine(self, notice_id: int, owner: str) -> ColumnElement[bool]:
        n = TrainingNoticeRow
        return and_(n.id == notice_id, n.claimed_by == owner, n.sent_at.is_(None))

    def sent(self, notice_id: int, owner: str) -> None:
        with self.store.session() as s, s.begin():
            s.execute(update(TrainingNoticeRow).where(self._mine(notice_id, owner))
                      .values(sent_at=utcnow(), lease_until=None))

    def failed(self, notice_id: int, owner: str, error: str, retry_after: float) -> None:
        n = TrainingNoticeRow
        with self.store.session() as s, s.begin():
            row = s.scalars(select(n).where(self._mine(notice_id, owner))).first()
            if row is None:
                return  # the lease ran out and another replica has it now
            row.attempts += 1
            row.error = error[:1000]
            if row.attempts >= MAX_ATTEMPTS:
                row.sent_at, row.lease_until = utcnow(), None  # given up: see `error`
            else:
                row.lease_until = utcnow() + timedelta(seconds=retry_after)
