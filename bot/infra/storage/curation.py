"""The SQL side of curation: pairs, their audit trail, /forget and dataset snapshots.

Each action is one transaction with its audit entries. Callers see only the records and the
:class:`~bot.core.curation.CurationRepository` protocol of :mod:`bot.core.curation`; ORM rows
never leave this module.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.orm import Session

from bot.core.curation import (
    FORGET_COUNTS,
    FORGOTTEN_TEXT,
    AuditView,
    Change,
    Forgotten,
    ForgottenExchange,
    PairStatus,
    PairView,
    SnapshotView,
)
from bot.core.textkeys import question_key
from bot.core.types import ChatKind, Role
from bot.infra.storage.models import (
    AuditEntry,
    Chat,
    DatasetSnapshot,
    Exchange,
    HistoryMessage,
    Pair,
    User,
    utcnow,
)
from bot.infra.storage.store import SqlStore

log = logging.getLogger(__name__)

AUDITED_FIELDS = ("status", "question", "answer", "superseded_by_id")


#: A pair's audited fields, as the audit log stores them (JSON).
State = dict[str, Any]


def _state(p: Pair) -> State:
    return {f: getattr(p, f) for f in AUDITED_FIELDS}


def _view(s: Session, p: Pair) -> PairView:
    asker = s.get(User, p.asked_by_id) if p.asked_by_id else None
    asked_by = asker.display_name if asker is not None else None
    return PairView(p.id, p.status, p.source, p.question, p.answer, list(p.history or []),
                    asked_by, p.model_version, p.created_at, p.decided_by)


def _user_exchanges(s: Session, user: User) -> list[ForgottenExchange]:
    rows = s.execute(
        select(Exchange.id, Chat.platform, Chat.platform_chat_id, Exchange.reply_message_id)
        .join(Chat, Exchange.chat_id == Chat.id)
        .where(Exchange.user_id == user.id).order_by(Exchange.id)
    ).all()
    return [ForgottenExchange(*row) for row in rows]


def _words_by_chat(s: Session, user: User) -> dict[tuple[str, str], set[str]]:
    """The user's messages per (platform, chat), as stored in HistoryMessage.content.

    Pair.history holds exactly these texts: the pipeline's context is built from stored
    history messages, and the "Name: " speaker prefix is only added when rendering the
    chat template (bot.infra.llm.chat_model.to_template_messages), never stored.
    """
    rows = s.execute(
        select(Chat.platform, Chat.platform_chat_id, HistoryMessage.content)
        .join(Chat, HistoryMessage.chat_id == Chat.id)
        .join(Exchange, HistoryMessage.exchange_id == Exchange.id)
        .where(Exchange.user_id == user.id, HistoryMessage.role == Role.USER.value)
    ).all()
    words: dict[tuple[str, str], set[str]] = {}
    for chat_platform, chat_id, content in rows:
        words.setdefault((chat_platform, chat_id), set()).add(content)
    return words


def _private_chats(s: Session, user: User) -> list[int]:
    return list(s.scalars(
        select(Chat.id).join(Exchange, Exchange.chat_id == Chat.id)
        .where(Exchange.user_id == user.id, Chat.kind == ChatKind.PRIVATE.value).distinct()
    ))


def _drop_emptied_chats(s: Session, chat_ids: list[int]) -> None:
    """Private chats left empty go too: a private chat's id is often the user's own id."""
    if chat_ids:
        s.execute(delete(Chat).where(
            Chat.id.in_(chat_ids),
            ~select(Exchange.id).where(Exchange.chat_id == Chat.id).exists(),
            ~select(HistoryMessage.id).where(HistoryMessage.chat_id == Chat.id).exists(),
        ))


def _redacted(values: State | None) -> State | None:
    if not values or not any(k in values for k in ("question", "answer")):
        return values
    # A new dict, not an in-place edit: SQLAlchemy's JSON type does not track mutation.
    return {k: FORGOTTEN_TEXT if k in ("question", "answer") else v for k, v in values.items()}


def _redact_audit(s: Session, pair_ids: list[int]) -> int:
    """Blank the question/answer values in the audit entries of the user's pairs."""
    if not pair_ids:
        return 0
    redacted = 0
    for entry in s.scalars(select(AuditEntry).where(AuditEntry.pair_id.in_(pair_ids))):
        before, after = _redacted(entry.before), _redacted(entry.after)
        if before is not entry.before or after is not entry.after:
            entry.before, entry.after = before, after
            redacted += 1
    return redacted


def _redact_histories(s: Session, words: dict[tuple[str, str], set[str]], user_pk: int,
                      kept: tuple[str, ...]) -> int:
    """Drop [question, answer] history entries whose question the user said, in that chat.

    The answer goes too: it answered the forgotten words. Pairs about to be deleted are
    skipped so the count says what changed in pairs that remain. Returns entries removed.
    """
    removed = 0
    for (chat_platform, chat_id), said in words.items():
        # Pairs an earlier /forget anonymised have lost their chat id but may still carry this
        # user's words in their history: they are searched too (same platform, same words).
        pairs = s.scalars(select(Pair).where(
            Pair.platform == chat_platform,
            or_(Pair.platform_chat_id == chat_id, Pair.platform_chat_id.is_(None))))
        for p in pairs:
            if p.asked_by_id == user_pk and p.status not in kept:
                continue
            history = p.history or []
            remaining = [e for e in history if not (e and e[0] in said)]
            if len(remaining) < len(history):
                p.history = remaining  # a new list: JSON columns do not track mutation
                removed += len(history) - len(remaining)
    s.flush()
    return removed


def _audit_view(e: AuditEntry) -> AuditView:
    return AuditView(e.id, e.at, e.actor, e.action, e.pair_id, e.before, e.after)


def _snapshot_view(row: DatasetSnapshot) -> SnapshotView:
    return SnapshotView(row.id, row.persona, row.kind, row.format, row.path, row.sha256,
                        row.rows, row.created_at)


def _rowcount(result: object) -> int:
    """Rows a bulk DELETE/UPDATE touched (Session.execute types its result loosely)."""
    assert isinstance(result, CursorResult)
    return result.rowcount


class SqlCuration:
    """:class:`~bot.core.curation.CurationRepository` over the SQL store, for one persona."""

    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona

    # --- finding pairs --------------------------------------------------------------
    def find_by_reply(self, platform: str, chat_id: str, reply_message_id: str) -> int | None:
        """The pair whose bot answer is message ``reply_message_id`` in that chat."""
        with self.store.session() as s:
            return s.scalar(
                select(Pair.id).where(
                    Pair.platform == platform,
                    Pair.platform_chat_id == chat_id,
                    Pair.reply_message_id == reply_message_id,
                )
            )

    def get(self, pair_id: int) -> PairView | None:
        with self.store.session() as s:
            p = s.get(Pair, pair_id)
            return _view(s, p) if p is not None and p.persona == self.persona else None

    def pending(self, page: int, per_page: int) -> tuple[list[PairView], int]:
        with self.store.session() as s:
            where = (Pair.persona == self.persona, Pair.status == PairStatus.PENDING)
            total = s.scalar(select(func.count()).select_from(Pair).where(*where)) or 0
            rows = s.scalars(
                select(Pair).where(*where).order_by(Pair.id)
                .offset((page - 1) * per_page).limit(per_page)
            ).all()
            return [_view(s, p) for p in rows], total

    def approved(self) -> list[PairView]:
        """Approved pairs, oldest approval first (the dataset's order)."""
        with self.store.session() as s:
            rows = s.scalars(
                select(Pair).where(Pair.persona == self.persona, Pair.status == PairStatus.APPROVED)
                .order_by(Pair.id)
            ).all()
            return [_view(s, p) for p in rows]

    # --- changing pairs -------------------------------------------------------------
    def _audit(self, s: Session, actor: str, action: str, pair: Pair | None,
               before: State | None, after: State | None) -> None:
        s.add(AuditEntry(actor=actor, action=action, pair_id=pair.id if pair else None,
                         before=before, after=after))

    def _approve(self, s: Session, p: Pair, actor: str, action: str,
                 before: State | None) -> list[int]:
        p.status = PairStatus.APPROVED
        p.decided_at, p.decided_by = utcnow(), actor
        p.question_key = question_key(p.question)
        s.flush()
        self._audit(s, actor, action, p, before, _state(p))
        # Newest approval wins; the older ones stay, marked, for history.
        older = s.scalars(
            select(Pair).where(
                Pair.persona == self.persona,
                Pair.status == PairStatus.APPROVED,
                Pair.question_key == p.question_key,
                Pair.id != p.id,
            )
        ).all()
        for o in older:
            was = _state(o)
            o.status, o.superseded_by_id = PairStatus.SUPERSEDED, p.id
            self._audit(s, actor, "supersede", o, was, _state(o))
        return [o.id for o in older]

    def _load(self, s: Session, pair_id: int) -> Pair | None:
        p = s.get(Pair, pair_id)
        return p if p is not None and p.persona == self.persona else None

    def approve(self, pair_id: int, actor: str, *, answer: str | None = None,
                question: str | None = None) -> Change | None:
        """Approve as is, or with a corrected answer (and question). None: no such pair."""
        with self.store.session() as s, s.begin():
            p = self._load(s, pair_id)
            if p is None:
                return None
            new_answer = answer.strip() if answer else p.answer
            new_question = question.strip() if question else p.question
            if (p.status == PairStatus.APPROVED and new_answer == p.answer
                    and new_question == p.question):
                return Change(_view(s, p), changed=False, superseded=[])
            before = _state(p)
            p.answer, p.question = new_answer, new_question
            action = "correct" if answer or question else "approve"
            superseded = self._approve(s, p, actor, action, before)
            return Change(_view(s, p), changed=True, superseded=superseded)

    def reject(self, pair_id: int, actor: str) -> Change | None:
        with self.store.session() as s, s.begin():
            p = self._load(s, pair_id)
            if p is None:
                return None
            if p.status == PairStatus.REJECTED:
                return Change(_view(s, p), changed=False, superseded=[])
            before = _state(p)
            p.status, p.decided_at, p.decided_by = PairStatus.REJECTED, utcnow(), actor
            self._audit(s, actor, "reject", p, before, _state(p))
            return Change(_view(s, p), changed=True, superseded=[])

    def add(self, question: str, answer: str, actor: str, *, source: str = "admin",
            history: list[list[str]] | None = None) -> Change:
        """A pair written (or imported) by an admin; the same approved pair again is a no-op."""
        with self.store.session() as s, s.begin():
            return self._add(s, question, answer, actor, source, history or [])

    def add_many(self, pairs: list[tuple[str, str, list[list[str]]]], actor: str,
                 source: str = "import") -> list[Change]:
        """Several pairs in one transaction: all of them land, or none (an import)."""
        with self.store.session() as s, s.begin():
            return [self._add(s, q, a, actor, source, h) for q, a, h in pairs]

    def _add(self, s: Session, question: str, answer: str, actor: str, source: str,
             history: list[list[str]]) -> Change:
        question, answer = question.strip(), answer.strip()
        same = s.scalars(
            select(Pair).where(
                Pair.persona == self.persona,
                Pair.status == PairStatus.APPROVED,
                Pair.question_key == question_key(question),
            )
        ).all()
        for p in same:
            if p.question == question and p.answer == answer and (p.history or []) == history:
                return Change(_view(s, p), changed=False, superseded=[])
        p = Pair(persona=self.persona, status=PairStatus.PENDING, source=source,
                 question=question, answer=answer, question_key=question_key(question),
                 history=history)
        s.add(p)
        s.flush()
        superseded = self._approve(s, p, actor, "add" if source == "admin" else source, None)
        return Change(_view(s, p), changed=True, superseded=superseded)

    def forget_user(self, platform: str, user_id: str) -> Forgotten:
        """Remove a user's words: messages, unapproved pairs, audit values, others' history.

        Approved pairs they asked stay in the dataset (an admin approved them; /forget says
        so) but lose their identity. Reply audio files are the adapters' to delete: the
        returned exchanges name them.
        """
        with self.store.session() as s, s.begin():
            user = s.scalar(select(User).where(User.platform == platform,
                                               User.platform_user_id == user_id))
            if user is None:
                return Forgotten(dict.fromkeys(FORGET_COUNTS, 0), [])
            exchanges = _user_exchanges(s, user)
            kept = (PairStatus.APPROVED, PairStatus.SUPERSEDED)
            pair_ids = list(s.scalars(select(Pair.id).where(Pair.asked_by_id == user.id)))
            # Redact before anonymising: anonymising clears platform_chat_id, which says
            # which chat's history a pair holds.
            audit_redacted = _redact_audit(s, pair_ids)
            history_redacted = _redact_histories(s, _words_by_chat(s, user), user.id, kept)
            deleted = _rowcount(s.execute(
                delete(Pair).where(Pair.asked_by_id == user.id, Pair.status.not_in(kept))
            ))
            anonymised = _rowcount(s.execute(
                update(Pair).where(Pair.asked_by_id == user.id).values(
                    asked_by_id=None, exchange_id=None, incoming_message_id=None,
                    reply_message_id=None, platform_chat_id=None)
            ))
            private_chats = _private_chats(s, user)
            exchange_ids = [e.id for e in exchanges]
            if exchange_ids:
                s.execute(delete(HistoryMessage).where(HistoryMessage.exchange_id.in_(exchange_ids)))
                s.execute(delete(Exchange).where(Exchange.id.in_(exchange_ids)))
            _drop_emptied_chats(s, private_chats)
            s.delete(user)
            counts = {"exchanges": len(exchange_ids), "pairs_deleted": deleted,
                      "pairs_anonymised": anonymised, "history_redacted": history_redacted,
                      "audit_redacted": audit_redacted}
            # The log records that a deletion happened, not whose.
            self._audit(s, "forgotten-user", "forget", None, None, counts)
            return Forgotten(counts, exchanges)

    # --- figures --------------------------------------------------------------------
    def counts_by_status(self) -> dict[str, int]:
        with self.store.session() as s:
            rows = s.execute(
                select(Pair.status, func.count()).where(Pair.persona == self.persona)
                .group_by(Pair.status)
            ).all()
        counts = {status.value: 0 for status in PairStatus}
        counts.update({status: n for status, n in rows})
        return counts

    def approved_per_persona(self) -> dict[str, int]:
        with self.store.session() as s:
            rows = s.execute(
                select(Pair.persona, func.count()).where(Pair.status == PairStatus.APPROVED)
                .group_by(Pair.persona)
            ).all()
        return {persona: n for persona, n in rows}

    def record_snapshot(self, *, kind: str, fmt: str, path: str, sha256: str,
                        rows: int) -> SnapshotView:
        with self.store.session() as s, s.begin():
            row = DatasetSnapshot(persona=self.persona, kind=kind, format=fmt, path=path,
                                  sha256=sha256, rows=rows)
            s.add(row)
            s.flush()
            return _snapshot_view(row)

    def last_snapshots(self) -> dict[str, SnapshotView]:
        with self.store.session() as s:
            out = {}
            for kind in ("export", "snapshot"):
                row = s.scalar(
                    select(DatasetSnapshot)
                    .where(DatasetSnapshot.persona == self.persona, DatasetSnapshot.kind == kind)
                    .order_by(DatasetSnapshot.id.desc()).limit(1)
                )
                if row is not None:
                    out[kind] = _snapshot_view(row)
            return out

    def audit_log(self, pair_id: int | None = None) -> list[AuditView]:
        with self.store.session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id)
            if pair_id is not None:
                q = q.where(AuditEntry.pair_id == pair_id)
            return [_audit_view(e) for e in s.scalars(q)]
