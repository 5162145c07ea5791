"""Database schema (SQLAlchemy 2). Changes go through an Alembic migration in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# The status enums live with the records in core; re-exported here for the modules that
# read statuses next to the rows.
from bot.core.curation import PairStatus as PairStatus
from bot.core.jobs import JobStatus as JobStatus
from bot.core.registry import ModelStatus as ModelStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (UniqueConstraint("platform", "platform_chat_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_chat_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(String(256))
    # Set by an admin (/answerall on): answer every voice note here, not only mentions/replies.
    answer_all_voice: Mapped[bool] = mapped_column(Boolean, default=False,
                                                   server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Exchange(Base):
    """One question and the persona's answer, with how it was produced."""

    __tablename__ = "exchanges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    input_kind: Mapped[str] = mapped_column(String(16))  # voice | text
    incoming_message_id: Mapped[str | None] = mapped_column(String(128))
    # Set by adapters once the reply is sent, so "/approve" as a reply to it finds this exchange.
    reply_message_id: Mapped[str | None] = mapped_column(String(128))
    transcript: Mapped[str] = mapped_column(Text)
    reply_text: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(16))
    audio_duration_s: Mapped[float | None] = mapped_column(Float)
    reply_duration_s: Mapped[float | None] = mapped_column(Float)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    model_version: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    chat: Mapped[Chat] = relationship()
    user: Mapped[User] = relationship()


class HistoryMessage(Base):
    """The conversation memory the LLM sees, per chat, in order."""

    __tablename__ = "history_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id"), index=True)
    exchange_id: Mapped[int | None] = mapped_column(ForeignKey("exchanges.id"))
    role: Mapped[str] = mapped_column(String(16))
    speaker: Mapped[str | None] = mapped_column(String(256))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Pair(Base):
    """A question/answer pair: a candidate from a conversation, or written/imported by an admin."""

    __tablename__ = "pairs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # a PairStatus value
    source: Mapped[str] = mapped_column(String(16))  # exchange | admin | import
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    question_key: Mapped[str] = mapped_column(String(512), index=True)
    history: Mapped[list[list[str]]] = mapped_column(JSON, default=list)  # [[question, answer], ...]
    exchange_id: Mapped[int | None] = mapped_column(ForeignKey("exchanges.id"), unique=True)
    platform: Mapped[str | None] = mapped_column(String(32))
    platform_chat_id: Mapped[str | None] = mapped_column(String(128))
    incoming_message_id: Mapped[str | None] = mapped_column(String(128))
    reply_message_id: Mapped[str | None] = mapped_column(String(128))
    asked_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    model_version: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(160))
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("pairs.id"))


class AuditEntry(Base):
    """Who changed what, when, with the values before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(32))
    pair_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # JSON snapshots of what changed; their shape depends on the action.
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class DatasetSnapshot(Base):
    """An exported or frozen dataset file, with its content hash."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # export | snapshot
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A trained persona model: where it lives, what it was trained on, how it scored."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    base_version: Mapped[str | None] = mapped_column(String(256))
    directory: Mapped[str | None] = mapped_column(Text)  # the run folder (report, plot, adapter)
    model_dir: Mapped[str | None] = mapped_column(Text)  # merged HF folder, when the gate passed
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))
    dataset_rows: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    # TrainConfig's and the final evaluation's fields, as JSON.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("training_jobs.id"), index=True)
    # What /rollback returns to is not stored here but in ModelActivation (the rollback stack).
    created_by: Mapped[str | None] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelActivation(Base):
    """One entry of a persona's rollback stack: a version activated, in activation order.

    The stack replaces a per-version ``previous_id`` pointer. A pointer records "who was
    active when I was activated", and activating v1, v2, then v1 again makes v1 and v2 point at
    each other: rollback ping-pongs and walking back never ends. A stack of activations is
    ordered by construction (a push takes the ``position`` above the persona's current top),
    may hold the same version twice (v1, v2, v1: rolling back twice goes v2, then v1, then the
    base model), and every walk over it is bounded by its length. The top entry is the active
    version; /rollback pops it, a failed or rejected version leaves it (every entry of it),
    and the base model answers when it is empty. A table rather than a JSON list on a row:
    plain rows work alike on SQLite and PostgreSQL, and two processes pushing at once collide
    on ``UniqueConstraint(persona, position)`` instead of overwriting each other; the loser
    retries on top of the stack the winner left.
    """

    __tablename__ = "model_activations"
    __table_args__ = (UniqueConstraint("persona", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(160))


class TrainingJob(Base):
    """A queued or finished /retrain, with live progress and whom to tell."""

    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(160))
    notify_platform: Mapped[str | None] = mapped_column(String(32))
    notify_chat_id: Mapped[str | None] = mapped_column(String(128))
    max_steps: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the worker's last event
    pid: Mapped[int | None] = mapped_column(Integer)
    model_version: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    # What the job trains on, so an identical /retrain points here instead of training twice:
    # the dataset's hash as training would freeze it, the base and the full TrainConfig.
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))
    base_model: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set by whoever cancels a running job (any process); the runner sees it and stops the
    # trainer.
    cancel_requested_by: Mapped[str | None] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Who runs it (the claimer's CHATMAN_REPLICA_ID) and when it last said it still does: a job
    # whose heartbeat stopped is taken back by any runner, one of its own owner's on restart.
    owner: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrainingNoticeRow(Base):
    """A training notice waiting for a replica with the chat's platform to send it (see
    :mod:`bot.core.notices`): written by a runner that has no adapter for that platform."""

    __tablename__ = "training_notices"
    __table_args__ = (Index("ix_training_notices_chat", "persona", "platform", "chat_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    message: Mapped[dict[str, Any]] = mapped_column(JSON)  # Message.to_dict()
    image: Mapped[str | None] = mapped_column(Text)  # a file under the shared data dir
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class InboxMessage(Base):
    """An incoming platform message, stored before the platform is told it arrived (see
    :mod:`bot.core.inbox`)."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("platform", "delivery_key"),
                      Index("ix_inbox_chat_key_id", "chat_key", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    delivery_key: Mapped[str] = mapped_column(String(128))
    chat_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    claim: Mapped[str | None] = mapped_column(String(36))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    overflow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class InboxSent(Base):
    """A message sent in answer to an inbox message, so answering it again sends nothing twice."""

    __tablename__ = "inbox_sent"
    __table_args__ = (UniqueConstraint("inbox_id", "part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inbox_id: Mapped[int] = mapped_column(ForeignKey("inbox.id", ondelete="CASCADE"))
    part: Mapped[str] = mapped_column(String(64))
    platform_message_id: Mapped[str] = mapped_column(String(128))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
