"""Commands typed as text become typed requests by one parser, with today's rules."""

from __future__ import annotations

import pytest

from bot.core.commands import (
    MAX_ID,
    Activate,
    Add,
    AnswerAll,
    Approve,
    CancelTraining,
    Correct,
    Dataset,
    Forget,
    Models,
    Pending,
    PersonaInfo,
    Reject,
    ReplyTarget,
    Retrain,
    Rollback,
    TrainStatus,
    command_name,
    parse_command,
)
from bot.core.errors import CommandError
from bot.core.wording import word

REPLY = ReplyTarget("telegram", "-100", "42")


@pytest.mark.parametrize(("text", "request_"), [
    ("/approve 3", Approve(3)),
    ("approve #3", Approve(3)),
    ("/approve@ChatManBot 3", Approve(3)),
    ("/APPROVE", Approve()),
    ("/reject 7", Reject(7)),
    ("/pending", Pending(1)),
    ("/pending 4", Pending(4)),
    ("/dataset", Dataset()),
    ("/persona", PersonaInfo()),
    ("/retrain", Retrain(None)),
    ("/retrain 30", Retrain(30)),
    ("/canceltrain", CancelTraining(None)),
    ("/canceltrain #12", CancelTraining(12)),
    ("/trainstatus", TrainStatus()),
    ("/models", Models()),
    ("/activate manman-v3", Activate("manman-v3")),
    ("/rollback", Rollback()),
    ("/answerall ON", AnswerAll(True)),
    ("/answerall off", AnswerAll(False)),
    ("/forget whatever follows", Forget()),
    ("/add Favourite food? | Dumplings.", Add("Favourite food?", "Dumplings.")),
])
def test_each_command_becomes_its_request(text, request_):
    assert parse_command(text) == request_


def test_the_first_spaced_bar_splits_a_pair_and_the_answer_keeps_the_rest():
    assert parse_command("/add How do I find foo? | ls | grep foo") == Add(
        "How do I find foo?", "ls | grep foo")
    # "a|b" is no separator: a pair needs a bar standing alone.
    with pytest.raises(CommandError) as unsplit:
        parse_command("/add ls|grep")
    assert unsplit.value.code == "usage.add"
    # /correct with a leading "| " keeps the question and answers with bars in it.
    assert parse_command("/correct 12 | Run ls | grep foo") == Correct("Run ls | grep foo", 12, None)
    assert parse_command("/correct 12 Where? | Here | there") == Correct("Here | there", 12, "Where?")


def test_a_reply_to_an_answer_makes_the_whole_text_the_answer():
    assert parse_command("/correct 2024 was great", REPLY, reply_is_answer=True) == Correct(
        "2024 was great", None, None, REPLY)
    # Not a reply to an answer: the leading number names the pair.
    assert parse_command("/correct 2024 was great", REPLY) == Correct("was great", 2024, None, REPLY)
    assert parse_command("/approve", REPLY) == Approve(None, REPLY)


@pytest.mark.parametrize(("text", "code"), [
    ("/launch", "command.unknown"),
    ("/pending 0", "usage.pending"),
    ("/pending 10000000", "usage.pending"),
    ("/pending two", "usage.pending"),
    ("/pending ²", "usage.pending"),
    ("/retrain 0", "usage.retrain"),
    ("/retrain 100001", "usage.retrain"),
    ("/retrain 1000000", "usage.retrain"),
    ("/canceltrain soon", "usage.canceltrain"),
    ("/canceltrain 1234567890123456789", "usage.canceltrain"),
    (f"/approve {MAX_ID + 1}", "pair.missing"),
    ("/approve 3 now", "usage.id"),
    ("/models all", "usage.bare"),
    ("/answerall maybe", "usage.answerall"),
    ("/activate", "usage.activate"),
    ("/activate a b", "usage.activate"),
    ("/add just a question", "usage.add"),
    ("/correct 3", "usage.correct"),
])
def test_bad_arguments_are_refused_with_their_usage(text, code):
    with pytest.raises(CommandError) as refused:
        parse_command(text)
    assert refused.value.code == code
    assert word(refused.value.message, "en") and word(refused.value.message, "zh")


def test_bounds_are_inclusive():
    assert parse_command("/pending 1000000") == Pending(1_000_000)
    assert parse_command("/retrain 100000") == Retrain(100_000)
    assert parse_command(f"/approve {MAX_ID}") == Approve(MAX_ID)


def test_refusals_keep_todays_english():
    with pytest.raises(CommandError) as unknown:
        parse_command("/launch")
    assert unknown.value.user_message.startswith("Unknown command /launch. Commands: /approve")
    with pytest.raises(CommandError) as too_big:
        parse_command(f"/reject {MAX_ID + 1}")
    assert too_big.value.user_message == f"There is no pair #{MAX_ID + 1}."
    assert command_name("/Approve@Bot 3") == "approve"
