"""/forget removes a user's words everywhere: exchanges, audit values, other users' history.

No models: turns are recorded by hand as the pipeline would record them, on SQLite and
(where CHATMAN_TEST_POSTGRES_URL is set) PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.core.curation import FORGOTTEN_TEXT, Forgotten, ForgottenExchange
from bot.core.types import ChatKind, ChatMessage, ChatRef, Role, Turn, UserRef
from bot.infra.storage.curation import SqlCuration
from bot.infra.storage.migrate import upgrade
from bot.infra.storage.models import AuditEntry, Base, Chat, Pair
from bot.infra.storage.store import SqlStore, make_engine

GROUP = ChatRef("telegram", "-100", ChatKind.GROUP, "Friends")
OTHER_GROUP = ChatRef("telegram", "-200", ChatKind.GROUP, "Others")
ALICE_DM = ChatRef("telegram", "alice-dm")
ALICE = UserRef("telegram", "alice-uid-7", "ALICENAME")
BOB = UserRef("telegram", "bob-uid-8", "Bob")
CAROL = UserRef("telegram", "carol-uid-9", "Carol")
ADMIN = "cli:ops"

# Alice's words that must vanish, and those of her pair an admin approves (kept in the
# dataset, gone from everything else).
SECRET = "XYZZY my key is under the mat"
SECRET_REPLY = "Noted: XYZZY, under the mat."
KEPT_Q = "What is PLUGH?"
KEPT_A = "PLUGH is a word."
KEPT_CORRECTED = "PLUGH is a magic word."


@pytest.fixture
def store(database_url) -> Iterator[SqlStore]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield SqlStore(engine)
    engine.dispose()


def say(store: SqlStore, chat: ChatRef, user: UserRef, text: str, reply: str,
        context: list[ChatMessage], *, persona: str = "manman",
        reply_id: str | None = None) -> tuple[int, int]:
    """Record a turn as the pipeline does; returns (exchange id, pair id)."""
    turn = Turn(transcript=text, language="en", reply=reply, voice=None,
                audio_duration_s=None, model_version="v1", persona=persona, context=context)
    exchange_id = store.record_turn(chat, user, f"in-{text[:8]}", turn, "voice", reply_id)
    with store.session() as s:
        pair_id = s.scalar(select(Pair.id).where(Pair.exchange_id == exchange_id))
    assert pair_id is not None
    return exchange_id, pair_id


def turn_messages(user: UserRef, text: str, reply: str) -> list[ChatMessage]:
    return [ChatMessage(Role.USER, text, user.display_name), ChatMessage(Role.ASSISTANT, reply)]


def database_text(store: SqlStore) -> dict[str, str]:
    """Every row of every table as text, per table (JSON columns come back as dicts/lists)."""
    with store.session() as s:
        return {
            table.name: "\n".join(" ".join(map(str, row)) for row in s.execute(select(table)))
            for table in Base.metadata.sorted_tables
        }


def test_forget_removes_a_users_words_everywhere(store):
    # A group: Alice says something, Bob asks with it in context, Alice asks again, Bob again
    # (for another persona); Alice also talks to the bot privately.
    a1 = turn_messages(ALICE, SECRET, SECRET_REPLY)
    ex_a1, pair_a1 = say(store, GROUP, ALICE, SECRET, SECRET_REPLY, [], reply_id="r-a1")
    b1 = turn_messages(BOB, "What's for dinner?", "Soup.")
    _, pair_b1 = say(store, GROUP, BOB, "What's for dinner?", "Soup.", a1, reply_id="r-b1")
    ex_a2, pair_a2 = say(store, GROUP, ALICE, KEPT_Q, KEPT_A, a1 + b1, reply_id="r-a2")
    a2 = turn_messages(ALICE, KEPT_Q, KEPT_A)
    _, pair_b2 = say(store, GROUP, BOB, "And dessert?", "Cake.", a1 + b1 + a2, persona="other")
    ex_a3, _ = say(store, ALICE_DM, ALICE, f"{SECRET}, privately", "Shh.", [])

    manman = SqlCuration(store, "manman")
    manman.reject(pair_a1, ADMIN)
    manman.approve(pair_a2, ADMIN, answer=KEPT_CORRECTED)
    manman.approve(pair_b1, ADMIN)
    with store.session() as s:
        assert s.get(Pair, pair_b2).history == [[SECRET, SECRET_REPLY],
                                                ["What's for dinner?", "Soup."], [KEPT_Q, KEPT_A]]

    result = manman.forget_user("telegram", ALICE.user_id)

    assert isinstance(result, Forgotten)
    assert result.exchanges == [
        ForgottenExchange(ex_a1, "telegram", "-100", "r-a1"),
        ForgottenExchange(ex_a2, "telegram", "-100", "r-a2"),
        ForgottenExchange(ex_a3, "telegram", "alice-dm", None),
    ]
    # Removed history entries: SECRET from b1, a2 (kept, anonymised) and b2, plus KEPT_Q from b2.
    assert result.counts == {"exchanges": 3, "pairs_deleted": 2, "pairs_anonymised": 1,
                             "history_redacted": 4, "audit_redacted": 2}

    tables = database_text(store)
    for marker in ("XYZZY", ALICE.user_id, ALICE.display_name, "alice-dm"):
        assert [name for name, text in tables.items() if marker in text] == [], marker
    # The approved pair's words stay in the dataset, and only there.
    assert [name for name, text in tables.items() if "PLUGH" in text] == ["pairs"]

    with store.session() as s:
        b1_row, b2_row = s.get(Pair, pair_b1), s.get(Pair, pair_b2)
        assert (b1_row.status, b1_row.history) == ("approved", [])
        assert (b2_row.status, b2_row.persona) == ("pending", "other")
        assert b2_row.history == [["What's for dinner?", "Soup."]]
        assert b1_row.asked_by_id is not None and b1_row.asked_by_id == b2_row.asked_by_id
        kept = s.get(Pair, pair_a2)
        assert (kept.status, kept.question, kept.answer) == ("approved", KEPT_Q, KEPT_CORRECTED)
        assert kept.asked_by_id is None and kept.exchange_id is None
        assert kept.reply_message_id is None and kept.platform_chat_id is None
        assert kept.history == [["What's for dinner?", "Soup."]]
        assert s.get(Pair, pair_a1) is None
        # Her private chat goes (its id is often hers); the group stays.
        assert list(s.scalars(select(Chat.platform_chat_id))) == [GROUP.chat_id]

        audit = {(e.pair_id, e.action): e for e in s.scalars(select(AuditEntry))}
        reject, correct = audit[(pair_a1, "reject")], audit[(pair_a2, "correct")]
        assert reject.after["status"] == "rejected" and reject.before["status"] == "pending"
        assert correct.after["status"] == "approved"
        for entry in (reject, correct):
            for values in (entry.before, entry.after):
                assert values["question"] == values["answer"] == FORGOTTEN_TEXT
        # Bob's audit entry is his own and untouched.
        assert audit[(pair_b1, "approve")].after["question"] == "What's for dinner?"
        forget = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert (forget.actor, forget.action, forget.pair_id) == ("forgotten-user", "forget", None)
        assert forget.after == result.counts


def test_same_words_in_another_chat_are_not_hers(store):
    """Redaction matches the chat too: Carol saying the same thing elsewhere stays."""
    words = "Good morning everyone"
    say(store, GROUP, ALICE, words, "Morning!", [])
    _, bob_pair = say(store, GROUP, BOB, "Hi", "Hello.", turn_messages(ALICE, words, "Morning!"))
    say(store, OTHER_GROUP, CAROL, words, "Morning!", [])
    _, bob_elsewhere = say(store, OTHER_GROUP, BOB, "Hi", "Hello.",
                           turn_messages(CAROL, words, "Morning!"))

    result = SqlCuration(store, "manman").forget_user("telegram", ALICE.user_id)

    assert result.counts["history_redacted"] == 1
    with store.session() as s:
        assert s.get(Pair, bob_pair).history == []
        assert s.get(Pair, bob_elsewhere).history == [[words, "Morning!"]]


def test_forgetting_an_unknown_user_changes_nothing(store):
    say(store, GROUP, BOB, "Hi", "Hello.", [])
    before = database_text(store)

    result = SqlCuration(store, "manman").forget_user("telegram", "nobody")

    assert result == Forgotten({"exchanges": 0, "pairs_deleted": 0, "pairs_anonymised": 0,
                                "history_redacted": 0, "audit_redacted": 0}, [])
    assert database_text(store) == before


def test_words_in_a_pair_an_earlier_forget_anonymised_are_found(store):
    """Bob's approved pair keeps Alice's words in its history; Bob forgets himself first (his
    pair loses its chat id), then Alice: her words must still go."""
    curation = SqlCuration(store, "manman")
    say(store, GROUP, ALICE, SECRET, SECRET_REPLY, [])
    _, bob_pair = say(store, GROUP, BOB, "Hi", "Hello.",
                      turn_messages(ALICE, SECRET, SECRET_REPLY))
    curation.approve(bob_pair, ADMIN)
    curation.forget_user("telegram", BOB.user_id)
    with store.session() as s:
        assert s.get(Pair, bob_pair).platform_chat_id is None

    result = curation.forget_user("telegram", ALICE.user_id)

    assert result.counts["history_redacted"] == 1
    assert "XYZZY" not in "\n".join(database_text(store).values())
    with store.session() as s:
        assert s.get(Pair, bob_pair).history == [] and s.get(Pair, bob_pair).status == "approved"
