"""The SQL store: users, chats, exchanges and conversation history.

:class:`SqlStore` implements :class:`bot.core.ports.Store`; only the composition root, the
other storage modules and tests use its concrete type (its sessions and ORM rows stay here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from bot.core.curation import PairStatus
from bot.core.inbox import ClaimLost, InboxState, Receipt
from bot.core.textkeys import history_pairs, question_key
from bot.core.types import ChatMessage, ChatRef, Role, Turn, UserRef
from bot.infra.storage.models import (
    Chat,
    Exchange,
    HistoryMessage,
    InboxMessage,
    Pair,
    User,
    utcnow,
)

log = logging.getLogger(__name__)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            # WAL lets readers (history) proceed while a turn is written; FKs are off by default.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True, slots=True)
class StoredExchange:
    """One exchange of a chat as its front end shows it again (the web console's restore)."""

    exchange_id: int
    input_kind: str
    transcript: str
    reply: str
    #: the platform's id of the reply (for the web console: its audio file's name)
    reply_message_id: str | None
    reply_duration_s: float | None
    created_at: datetime


def _mark_inbox_done(s: Session, receipt: Receipt) -> None:
    """Raises :class:`ClaimLost` (rolling the caller's transaction back) unless the claim is
    still the one ``receipt`` proves."""
    done = s.execute(
        update(InboxMessage)
        .where(InboxMessage.id == receipt.inbox_id, InboxMessage.claim == receipt.claim,
               InboxMessage.state == InboxState.CLAIMED)
        .values(state=InboxState.DONE, finished_at=utcnow())
        .execution_options(synchronize_session=False))
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise ClaimLost(f"inbox message {receipt.inbox_id} was claimed elsewhere meanwhile")


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def _find_chat(self, s: Session, chat: ChatRef) -> Chat | None:
        return s.scalar(
            select(Chat).where(Chat.platform == chat.platform, Chat.platform_chat_id == chat.chat_id)
        )

    def _chat(self, s: Session, chat: ChatRef) -> Chat:
        """The chat's row, created if new; its kind and title refreshed if not."""
        row = self._find_chat(s, chat)
        if row is None:
            row = Chat(platform=chat.platform, platform_chat_id=chat.chat_id, kind=chat.kind.value,
                       title=chat.title)
            s.add(row)
            s.flush()
        else:
            row.kind, row.title = chat.kind.value, chat.title or row.title
        return row

    def _user(self, s: Session, user: UserRef) -> User:
        row = s.scalar(
            select(User).where(User.platform == user.platform, User.platform_user_id == user.user_id)
        )
        if row is None:
            row = User(platform=user.platform, platform_user_id=user.user_id,
                       display_name=user.display_name)
            s.add(row)
            s.flush()
        else:
            row.display_name = user.display_name
        return row

    def recent_history(self, chat: ChatRef, limit: int) -> list[ChatMessage]:
        if limit <= 0:
            return []
        with self.session() as s:
            row = self._find_chat(s, chat)
            if row is None:
                return []
            rows = s.scalars(
                select(HistoryMessage)
                .where(HistoryMessage.chat_id == row.id)
                .order_by(HistoryMessage.id.desc())
                .limit(limit)
            ).all()
        return [ChatMessage(Role(r.role), r.content, r.speaker) for r in reversed(rows)]

    def record_turn(self, chat: ChatRef, user: UserRef, message_id: str | None, turn: Turn,
                    input_kind: str, reply_message_id: str | None = None,
                    receipt: Receipt | None = None) -> int:
        """Store the turn; with ``receipt``, also mark its inbox message done, in the same
        transaction: a turn is stored once, by the replica that still holds the claim."""
        with self.session() as s, s.begin():
            if receipt is not None:
                _mark_inbox_done(s, receipt)
            chat_row = self._chat(s, chat)
            user_row = self._user(s, user)
            exchange = Exchange(
                chat_id=chat_row.id,
                user_id=user_row.id,
                input_kind=input_kind,
                incoming_message_id=message_id,
                reply_message_id=reply_message_id,
                transcript=turn.transcript,
                reply_text=turn.reply,
                language=turn.language,
                audio_duration_s=turn.audio_duration_s,
                reply_duration_s=turn.voice.duration_s if turn.voice else None,
                timings_ms=dict(turn.timings_ms),
                model_version=turn.model_version,
            )
            s.add(exchange)
            s.flush()
            s.add(Pair(
                persona=turn.persona,
                status=PairStatus.PENDING,
                source="exchange",
                question=turn.transcript,
                answer=turn.reply,
                question_key=question_key(turn.transcript),
                history=history_pairs(turn.context),
                exchange_id=exchange.id,
                platform=chat.platform,
                platform_chat_id=chat.chat_id,
                incoming_message_id=message_id,
                reply_message_id=reply_message_id,
                asked_by_id=user_row.id,
                model_version=turn.model_version,
            ))
            s.add_all([
                HistoryMessage(chat_id=chat_row.id, exchange_id=exchange.id, role=Role.USER.value,
                               speaker=user.display_name, content=turn.transcript),
                HistoryMessage(chat_id=chat_row.id, exchange_id=exchange.id,
                               role=Role.ASSISTANT.value, speaker=None, content=turn.reply),
            ])
            return exchange.id

    def answers_every_voice(self, chat: ChatRef) -> bool:
        with self.session() as s:
            row = self._find_chat(s, chat)
            return bool(row and row.answer_all_voice)

    def set_answer_every_voice(self, chat: ChatRef, on: bool) -> bool:
        """Returns whether it changed."""
        with self.session() as s, s.begin():
            row = self._chat(s, chat)
            changed = bool(row.answer_all_voice) != on
            row.answer_all_voice = on
            return changed

    def conversation(self, chat: ChatRef, limit: int) -> list[StoredExchange]:
        """The chat's last ``limit`` exchanges, oldest first (none for an unknown chat)."""
        if limit <= 0:
            return []
        with self.session() as s:
            rows = s.scalars(
                select(Exchange).join(Chat)
                .where(Chat.platform == chat.platform, Chat.platform_chat_id == chat.chat_id)
                .order_by(Exchange.id.desc())
                .limit(limit)
            ).all()
            return [StoredExchange(r.id, r.input_kind, r.transcript, r.reply_text,
                                   r.reply_message_id, r.reply_duration_s, r.created_at)
                    for r in reversed(rows)]

    def exchanges(self, chat: ChatRef | None = None) -> list[Exchange]:
        """ORM rows, for tests and storage code (not part of the Store port)."""
        with self.session() as s:
            q = select(Exchange).order_by(Exchange.id)
            if chat is not None:
                q = q.join(Chat).where(Chat.platform == chat.platform,
                                       Chat.platform_chat_id == chat.chat_id)
            return list(s.scalars(q).all())
