"""Schema migrations and the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from bot.core.types import ChatKind, ChatRef, Role, Turn, UserRef, VoiceNote
from bot.infra.storage import migrate
from bot.infra.storage.models import Base
from bot.infra.storage.store import SqlStore, make_engine

TABLES = {"users", "chats", "exchanges", "history_messages", "pairs", "audit_log",
          "dataset_snapshots", "model_versions", "model_activations", "training_jobs"}


def _turn(question: str, answer: str) -> Turn:
    return Turn(
        transcript=question, language="en", reply=answer,
        voice=VoiceNote(data=b"OggS", duration_s=1.5, waveform=bytes(256)),
        audio_duration_s=2.0, model_version="m-1",
        timings_ms={"decode": 1.0, "asr": 2.0, "llm": 3.0, "tts": 4.0, "encode": 5.0, "total": 16.0},
    )


def test_migrations_upgrade_downgrade_upgrade(database_url):
    engine = make_engine(database_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision(engine)
        assert TABLES <= set(inspect(engine).get_table_names())

        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())

        migrate.upgrade(engine)
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_and_migrations_agree(database_url):
    """A model change without its migration shows up here, not in production."""
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_exchanges_and_history_survive_a_new_store(database_url):
    chat = ChatRef("telegram", "-100", ChatKind.GROUP, "Friends")
    alice, bob = UserRef("telegram", "1", "Alice"), UserRef("telegram", "2", "Bob")

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    store = SqlStore(engine)
    first = store.record_turn(chat, alice, "10", _turn("Who are you?", "I am Manman."), "voice")
    store.record_turn(chat, bob, "11", _turn("What do you do?", "I curate articles."), "text")
    engine.dispose()

    engine = make_engine(database_url)
    try:
        store = SqlStore(engine)
        history = store.recent_history(chat, limit=10)
        assert [(m.role, m.content, m.speaker) for m in history] == [
            (Role.USER, "Who are you?", "Alice"),
            (Role.ASSISTANT, "I am Manman.", None),
            (Role.USER, "What do you do?", "Bob"),
            (Role.ASSISTANT, "I curate articles.", None),
        ]
        # The newest messages win when the window is smaller than the history.
        assert [m.content for m in store.recent_history(chat, limit=2)] == [
            "What do you do?", "I curate articles.",
        ]
        rows = store.exchanges(chat)
        assert [r.id for r in rows][0] == first
        row = rows[0]
        assert (row.transcript, row.reply_text, row.language) == ("Who are you?", "I am Manman.", "en")
        assert row.input_kind == "voice" and rows[1].input_kind == "text"
        assert row.incoming_message_id == "10"
        assert row.audio_duration_s == 2.0 and row.reply_duration_s == 1.5
        assert row.timings_ms["total"] == 16.0
        assert row.model_version == "m-1"
        assert row.created_at is not None
        assert store.recent_history(ChatRef("telegram", "other"), 10) == []
    finally:
        engine.dispose()


def test_a_conversation_is_read_back_oldest_first_and_bounded(database_url):
    chat, visitor = ChatRef("web", "conv123"), UserRef("web", "conv123", "Web visitor")
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    try:
        store = SqlStore(engine)
        ids = [store.record_turn(chat, visitor, None, _turn(f"Q{n}", f"A{n}"), "text",
                                 f"{n:032x}.ogg") for n in range(3)]
        store.record_turn(ChatRef("web", "another"), UserRef("web", "another", "Web visitor"),
                          None, _turn("Other", "Not yours"), "text")
        turns = store.conversation(chat, limit=10)
        assert [(t.exchange_id, t.transcript, t.reply) for t in turns] == [
            (ids[0], "Q0", "A0"), (ids[1], "Q1", "A1"), (ids[2], "Q2", "A2")]
        assert turns[0].reply_message_id == f"{0:032x}.ogg" and turns[0].reply_duration_s == 1.5
        assert [t.transcript for t in store.conversation(chat, limit=2)] == ["Q1", "Q2"]
        assert store.conversation(ChatRef("web", "nobody"), 10) == []
    finally:
        engine.dispose()
