"""Curating pairs through the admin service: the whole cycle, permissions, dedup, forget."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from adapters.app import ChatmanApp
from bot.core.errors import UserFacingError
from bot.core.types import ChatKind, ChatMessage, ChatRef, Incoming, Role, Turn, UserRef
from bot.infra.storage.models import AuditEntry, Exchange, HistoryMessage, Pair, User
from bot.services.admin import Actor, CommandError, PermissionDenied, ReplyTarget

OPS = Actor("cli", "ops", "Ops", granted_admin=True)
TG_ADMIN = Actor("telegram", "123", "Ada")
STRANGER = Actor("telegram", "999", "Mallory")
CAROL = UserRef("telegram", "555", "Carol")
DAVE = UserRef("telegram", "556", "Dave")
CHAT = ChatRef("telegram", "-100", ChatKind.GROUP, "Friends")


@pytest.fixture
def app(settings, asr, llm, tts):
    application = ChatmanApp.from_settings(
        settings.model_copy(update={"admin_ids": "telegram:123, discord:456"}),
        asr=asr, llm=llm, tts=tts,
    )
    application.migrate()
    yield application
    application.close()


def ask(app: ChatmanApp, question: str, answer: str, user: UserRef = CAROL, msg: str = "1",
        context: list[ChatMessage] | None = None) -> int:
    """Store an answered exchange as the pipeline does; returns its pair id."""
    turn = Turn(transcript=question, language="en", reply=answer, voice=None,
                audio_duration_s=None, model_version="v1", persona="manman",
                context=context or [])
    exchange_id = app.store.record_turn(CHAT, user, msg, turn, "voice", f"r{msg}")
    with app.store.session() as s:
        return s.query(Pair).filter_by(exchange_id=exchange_id).one().id


def snapshot(app: ChatmanApp) -> tuple[list[tuple[int, str, str, str]], int, int]:
    with app.store.session() as s:
        pairs = [(p.id, p.status, p.question, p.answer) for p in s.query(Pair).order_by(Pair.id)]
        return pairs, s.query(AuditEntry).count(), s.query(Exchange).count()


async def test_pipeline_turns_become_pending_pairs_with_history_and_provenance(app):
    for n, text in enumerate(("My cat is called Tom.", "What is my cat called?"), start=1):
        await app.pipeline.handle(Incoming(chat=CHAT, user=CAROL, text=text, message_id=str(n),
                                           want_voice=False))
    result = app.admin.execute(OPS, "/pending")
    first, second = result.pairs
    assert (first.question, second.question) == ("My cat is called Tom.", "What is my cat called?")
    assert all(p.status == "pending" and p.source == "exchange" for p in result.pairs)
    assert second.history == [["My cat is called Tom.", first.answer]]
    assert second.asked_by == "Carol" and second.model_version == "SmolLM2-135M-Instruct.Q4_1"
    with app.store.session() as s:
        row = s.get(Pair, second.id)
        assert (row.platform, row.platform_chat_id, row.incoming_message_id) == ("telegram", "-100", "2")
    assert "2 (page 1/1" in result.message and f"#{first.id} — Carol" in result.message


def test_full_cycle_approve_correct_reject_add_pending(app):
    a = ask(app, "Who are you?", "I am a bot.", msg="1")
    b = ask(app, "What do you do?", "Nothing much.", msg="2")
    c = ask(app, "Tell me a joke", "No.", msg="3")
    d = ask(app, "Where do you live?", "In a server.", msg="4")

    approved = app.admin.execute(TG_ADMIN, f"/approve {a}")
    assert approved.pairs[0].status == "approved" and approved.message.startswith(f"Approved #{a}")

    # /correct as a reply to the bot's answer message.
    corrected = app.admin.execute(TG_ADMIN, "/correct I curate articles for my account.",
                                  reply_to=ReplyTarget("telegram", "-100", "r2"))
    assert corrected.pairs[0].id == b
    assert corrected.pairs[0].answer == "I curate articles for my account."
    assert corrected.pairs[0].status == "approved"

    # /correct ID question | answer fixes both.
    both = app.admin.execute(TG_ADMIN, f"/correct {d} Where are you based? | In Hangzhou.")
    assert (both.pairs[0].question, both.pairs[0].answer) == ("Where are you based?", "In Hangzhou.")

    rejected = app.admin.execute(TG_ADMIN, "/reject", reply_to=ReplyTarget("telegram", "-100", "r3"))
    assert rejected.pairs[0].id == c and rejected.pairs[0].status == "rejected"

    added = app.admin.execute(TG_ADMIN, "/add What is ChatMan? | My voice chat bot.")
    assert added.pairs[0].source == "admin" and added.pairs[0].status == "approved"

    assert app.admin.execute(TG_ADMIN, "/pending").message == "Nothing is waiting for review."
    figures = app.admin.execute(TG_ADMIN, "/dataset").data
    assert figures["by_status"] == {"pending": 0, "approved": 4, "rejected": 1, "superseded": 0}
    # "Who are you?" and "What is ChatMan?" replace the seed pairs with those questions.
    assert figures["seed"] == 4 and figures["rows"] == 6
    assert figures["approved_per_persona"] == {"manman": 4}
    assert figures["tokens"] > 100

    info = app.admin.execute(TG_ADMIN, "/persona")
    assert info.data["name"] == "manman" and info.data["model_version"]
    assert "Manman" in info.message

    # The audit log has who, what, and before/after.
    log = app.curation.audit_log(b)
    assert [(e.actor, e.action) for e in log] == [("telegram:123", "correct")]
    assert log[0].before["answer"] == "Nothing much." and log[0].before["status"] == "pending"
    assert log[0].after["answer"] == "I curate articles for my account."


def test_pending_pages_oldest_first(app):
    ids = [ask(app, f"Question {i}?", f"Answer {i}.", msg=str(i)) for i in range(12)]
    page1 = app.admin.execute(OPS, "pending")
    page2 = app.admin.execute(OPS, "pending 2")
    assert [p.id for p in page1.pairs] == ids[:10] and [p.id for p in page2.pairs] == ids[10:]
    assert page1.data == {"total": 12, "page": 1, "pages": 2}
    assert "Page 3 is empty" in app.admin.execute(OPS, "pending 3").message


@pytest.mark.parametrize(
    "command",
    ["/approve 1", "/correct 1 better", "/reject 1", "/pending", "/add q | a", "/dataset", "/persona"],
)
def test_non_admins_are_refused_and_nothing_changes(app, caplog, command):
    ask(app, "Who are you?", "I am a bot.")
    before = snapshot(app)
    with caplog.at_level(logging.WARNING, logger="bot.services.admin"):
        with pytest.raises(PermissionDenied) as info:
            app.admin.execute(STRANGER, command)
    assert info.value.user_message == "Only admins can do that."
    assert snapshot(app) == before
    assert "non-admin telegram:999" in caplog.text


def test_admins_come_from_settings_or_the_platform(app):
    assert app.admin.is_admin(TG_ADMIN) and app.admin.is_admin(Actor("discord", "456", "D"))
    assert not app.admin.is_admin(Actor("discord", "123", "wrong platform"))
    assert app.admin.is_admin(Actor("discord", "1", "guild admin", granted_admin=True))


def test_approving_twice_and_near_duplicate_questions(app):
    first = ask(app, "Who are you?", "I am Manman.", msg="1")
    app.admin.execute(OPS, f"/approve {first}")
    again = app.admin.execute(OPS, f"/approve {first}")
    assert again.data["changed"] is False and "already approved" in again.message
    assert len(app.curation.audit_log(first)) == 1

    newer = ask(app, "who   ARE you", "Manman, the curator.", msg="2")
    result = app.admin.execute(OPS, f"/approve {newer}")
    assert result.data["superseded"] == [first] and "replaces earlier" in result.message
    assert [p.id for p in app.curation.approved()] == [newer]
    assert app.curation.get(first).status == "superseded"  # kept for history

    # The same pair added twice is one entry; the audit log shows one add.
    app.admin.execute(OPS, "/add Favourite food? | Dumplings.")
    dup = app.admin.execute(OPS, "/add favourite food | Dumplings.")
    assert dup.data["changed"] is True  # different wording of the question: newest wins
    same = app.admin.execute(OPS, "/add favourite food | Dumplings.")
    assert same.data["changed"] is False
    assert [p.question for p in app.curation.approved()] == ["who   ARE you", "favourite food"]


def test_forget_removes_a_users_data_but_keeps_approved_pairs_anonymised(app):
    kept = ask(app, "Who are you?", "I am Manman.", msg="1")
    pending = ask(app, "Secret stuff?", "Hmm.", msg="2")
    other = ask(app, "Dave's question?", "Dave's answer.", user=DAVE, msg="3")
    app.admin.execute(OPS, f"/approve {kept}")

    result = app.admin.execute(Actor("telegram", "555", "Carol"), "/forget")
    assert result.data.items() >= {"exchanges": 2, "pairs_deleted": 1, "pairs_anonymised": 1,
                                   "history_redacted": 0, "audit_redacted": 1}.items()
    with app.store.session() as s:
        assert s.get(Pair, pending) is None
        survivor = s.get(Pair, kept)
        assert survivor.status == "approved" and survivor.asked_by_id is None
        assert survivor.exchange_id is None and survivor.question == "Who are you?"
        assert s.query(User).filter_by(platform_user_id="555").count() == 0
        assert s.query(Exchange).count() == 1
        assert [h.content for h in s.query(HistoryMessage)] == ["Dave's question?", "Dave's answer."]
    assert app.curation.get(other).status == "pending"
    assert app.curation.audit_log()[-1].actor == "forgotten-user"
    # Forgetting someone with no data is fine too.
    assert app.admin.execute(Actor("telegram", "1", "X"), "forget").data["exchanges"] == 0


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("/frobnicate", "Unknown command /frobnicate"),
        ("/approve", "Which pair?"),
        ("/approve 999", "There is no pair #999"),
        ("/approve 1 extra", "Usage: /approve [ID]"),
        ("/correct", "Usage: /correct"),
        ("/add no separator", "Usage: /add <question> | <answer>"),
        ("/add  | only answer", "Usage: /add"),
        ("/pending two", "Usage: /pending"),
    ],
)
def test_bad_commands_get_usage_messages(app, command, says):
    with pytest.raises(CommandError) as info:
        app.admin.execute(OPS, command)
    assert says in info.value.user_message


def test_reply_to_something_that_is_not_an_answer(app):
    ask(app, "Q?", "A.", msg="1")
    with pytest.raises(CommandError, match="nothing to curate|not an answer"):
        app.admin.execute(OPS, "/approve", reply_to=ReplyTarget("telegram", "-100", "nope"))


def test_telegram_style_bot_suffix_is_understood(app):
    assert app.admin.execute(OPS, "/pending@manman_bot").command == "pending"


def test_history_pairs_from_context():
    from bot.core.textkeys import history_pairs, question_key

    msgs = [ChatMessage(Role.USER, "a"), ChatMessage(Role.ASSISTANT, "b"),
            ChatMessage(Role.USER, "c"), ChatMessage(Role.ASSISTANT, "d")]
    assert history_pairs(msgs) == [["a", "b"], ["c", "d"]]
    assert question_key("  Who are YOU?? ") == question_key("who are you") == "whoareyou"
    assert question_key("你是谁?") == question_key("你是谁？")


def test_dataset_tokens_are_counted_with_the_models_chat_template(app, llm):
    from bot.core.dataset import collect_rows, training_messages

    app.admin.execute(OPS, "/add Favourite colour? | Green, like tea leaves.")
    rows = collect_rows(app.curation, app.persona, app.language)
    expected = sum(
        len(llm.tokenizer.apply_chat_template(
            [{"role": m.role.value, "content": m.content} for m in training_messages(r)],
            tokenize=True, return_dict=True)["input_ids"])
        for r in rows
    )
    figures = app.admin.execute(OPS, "/dataset")
    assert figures.data["tokens"] == expected
    assert f"{expected} tokens" in figures.message


PERSONA_WIDE = ("/pending", "/approve 1", "/correct 1 Better.", "/reject 1", "/add Q | A",
                "/dataset", "/persona", "/retrain", "/trainstatus", "/models",
                "/activate manman-v1", "/rollback")


@pytest.mark.parametrize("command", PERSONA_WIDE)
def test_persona_wide_commands_belong_to_the_listed_admins_alone(app, command):
    """A platform's chat admin (Telegram group admin, Discord guild Administrator) is not one."""
    ask(app, "Who are you?", "I'm a bot.")
    before = snapshot(app)
    chat_admin = Actor("discord", "777", "Guild owner", chat_admin=True)
    for actor in (chat_admin, STRANGER):
        with pytest.raises(PermissionDenied):
            app.admin.execute(actor, command, None, CHAT)
    assert snapshot(app) == before and app.jobs.open_jobs() == []
    listed = Actor("discord", "456", "Listed")
    try:
        app.admin.execute(listed, command, None, CHAT)
    except PermissionDenied:
        pytest.fail(f"{command} refused a listed admin")
    except UserFacingError as other:
        # Allowed to try, refused for another reason (e.g. nothing to roll back).
        assert not isinstance(other, PermissionDenied)


def test_a_chat_admin_may_change_only_their_own_chat(app):
    chat_admin = Actor("telegram", "777", "Group owner", chat_admin=True)
    assert "every voice note" in app.admin.execute(chat_admin, "/answerall on", None,
                                                   CHAT).message
    assert app.store.answers_every_voice(CHAT)
    with pytest.raises(PermissionDenied):
        app.admin.execute(STRANGER, "/answerall off", None, CHAT)


@pytest.mark.parametrize("command", ["/pending 99999999999999999999", "/pending ²",
                                     "/approve 99999999999999999999999", "/reject #١٢",
                                     "/retrain 9999999", "/retrain 1e3"])
def test_out_of_range_numbers_are_refused_with_usage(app, command):
    with pytest.raises(CommandError) as refused:
        app.admin.execute(OPS, command, None, CHAT)
    assert refused.value.user_message


def test_correct_as_a_reply_takes_all_of_its_text_as_the_answer(app):
    """Issue 14: a leading number is a pair id only when the command names no answer."""
    ask(app, "How was last year?", "Fine.", msg="1")
    replied = ReplyTarget("telegram", "-100", "r1")
    fixed = app.admin.execute(TG_ADMIN, "/correct 2024 was great", reply_to=replied)
    assert (fixed.pairs[0].question, fixed.pairs[0].answer) == ("How was last year?",
                                                                "2024 was great")
    # A reply to a bot message that is no answer (say, the /pending list): the ID counts.
    other = ask(app, "Who are you?", "A bot.", msg="2")
    by_id = app.admin.execute(TG_ADMIN, f"/correct {other} I'm Manman.",
                              reply_to=ReplyTarget("telegram", "-100", "pending-list"))
    assert (by_id.pairs[0].id, by_id.pairs[0].answer) == (other, "I'm Manman.")
    with pytest.raises(CommandError, match="not an answer"):
        app.admin.execute(TG_ADMIN, "/correct Better.",
                          reply_to=ReplyTarget("telegram", "-100", "pending-list"))


@pytest.mark.parametrize(("text", "question", "answer"), [
    ("/correct {id} Run ls|grep foo.", "How do I find foo?", "Run ls|grep foo."),
    ("/correct {id} | Run ls | grep foo.", "How do I find foo?", "Run ls | grep foo."),
    ("/correct {id} Where is foo? | Run ls | grep foo.", "Where is foo?", "Run ls | grep foo."),
    ("/correct #{id}   Where is foo?\t|\tHere.", "Where is foo?", "Here."),
])
def test_text_corrections_split_at_the_first_spaced_bar_only(app, text, question, answer):
    pair_id = ask(app, "How do I find foo?", "No idea.")
    fixed = app.admin.execute(OPS, text.format(id=pair_id))
    assert (fixed.pairs[0].question, fixed.pairs[0].answer) == (question, answer)


def test_added_pairs_keep_bars_after_the_first_separator(app):
    added = app.admin.execute(OPS, "/add How do I find foo? | ls | grep foo")
    assert (added.pairs[0].question, added.pairs[0].answer) == ("How do I find foo?",
                                                                "ls | grep foo")
    with pytest.raises(CommandError) as unspaced:
        app.admin.execute(OPS, "/add Q?|A.")
    assert 'the first " | " (a bar with spaces around it) splits them' in \
        unspaced.value.user_message


def test_typed_entry_points_take_fields_as_given(app):
    pair_id = ask(app, "How do I find foo?", "No idea.")
    fixed = app.admin.correct(OPS, pair_id, "  ls | grep foo ", "")
    assert (fixed.pairs[0].question, fixed.pairs[0].answer) == ("How do I find foo?",
                                                                "ls | grep foo")
    added = app.admin.add(OPS, "a | b?", "c | d")
    assert (added.pairs[0].question, added.pairs[0].answer) == ("a | b?", "c | d")
    before = snapshot(app)
    refusals: tuple[Callable[[], object], ...] = (
        lambda: app.admin.correct(OPS, pair_id, "   "),
        lambda: app.admin.add(OPS, "Q?", " "),
        lambda: app.admin.pending(OPS, 0),
        lambda: app.admin.retrain(OPS, CHAT, 0),
        lambda: app.admin.approve(OPS, None))
    for bad in refusals:
        with pytest.raises(CommandError):
            bad()
    assert snapshot(app) == before and app.jobs.open_jobs() == []


def test_usage_says_how_text_splits(app):
    with pytest.raises(CommandError) as usage:
        app.admin.execute(OPS, "/correct 5")
    message = usage.value.user_message
    assert "as a reply to my answer (then all of the text is the answer)" in message
    assert '"| "' in message and "/correct 12 | Run ls | grep foo." in message
