"""Every message code has words in English and Chinese, and errors say codes, not prose."""

from __future__ import annotations

import pickle
import string

import pytest

from bot.core.errors import (
    AudioTooLarge,
    AudioTooLong,
    Busy,
    CommandError,
    EmptyInput,
    NoSpeech,
    PermissionDenied,
    ServerBusy,
    TextTooLong,
    UnsupportedAudio,
    UserFacingError,
)
from bot.core.messages import Message
from bot.core.wording import CATALOG, EN, ZH, fields, language_of, word


class Anything:
    """A parameter value that fits any format spec (":.2f" and all)."""

    def __format__(self, spec: str) -> str:
        return "⟨x⟩"


class AllParams(dict[str, Anything]):
    def __missing__(self, key: str) -> Anything:
        return Anything()


@pytest.mark.parametrize("code", sorted(EN))
def test_every_code_has_english_and_chinese_with_the_same_parameters(code):
    assert code in ZH, f"{code} has no Chinese"
    assert fields(EN[code]) == fields(ZH[code]), code
    for language in ("en", "zh"):
        template = CATALOG[language][code]
        shown = template.format_map(AllParams())  # no KeyError, every format spec fits
        assert shown.strip() or code in ("text", "lines")
        assert "{" not in shown.replace("{{", "")


def test_chinese_has_no_codes_english_lacks():
    assert set(ZH) == set(EN)


def test_parameters_fill_in_and_nested_messages_follow_the_language():
    said = Message("canceltrain.cancelled", {"id": 4, "answering": Message(
        "model.base", {"model": "Qwen2.5-0.5B"})})
    assert word(said, "en") == ("Training job #4 cancelled; the base model (Qwen2.5-0.5B) keeps "
                                "answering.")
    assert word(said, "zh") == "训练任务 #4 已取消，继续由 基础模型（Qwen2.5-0.5B） 回答。"
    lines = Message("lines", {"lines": [Message("trainstatus.no_job"), Message("pending.none")]})
    assert word(lines, "zh-CN") == "没有排队中或进行中的训练任务。\n没有等待审核的内容。"
    assert word(Message("metrics", {"persona_score": 0.9, "retention": 1, "leakage": 0.05}),
                "en") == "persona 0.90, retention 1.00, leakage 0.05"


def test_unknown_languages_and_codes_fall_back_without_raising(caplog):
    assert language_of("fr") == "en" and language_of("zh_TW") == "zh" and language_of(None) == "en"
    assert word(Message("pending.none"), "fr") == "Nothing is waiting for review."
    assert word(Message("no.such.code", {"id": 3}), "zh") == "no.such.code (id=3)"
    assert word(Message("pair.missing"), "zh") == "pair.missing"  # a parameter short: logged
    assert "does not fit" in caplog.text


@pytest.mark.parametrize(("error", "english", "chinese"), [
    (UserFacingError(), "Sorry, something went wrong with that message.", "抱歉"),
    (EmptyInput("x"), "That message was empty — send me a voice note or some text.", "空的"),
    (UnsupportedAudio("x"), "I couldn't read that file as audio.", "读不出"),
    (AudioTooLarge("x", params={"size_mb": 25.04, "limit_mb": 20}),
     "That file is too big (25.0 MB); I accept up to 20 MB.", "20 MB"),
    (AudioTooLong("x", params={"seconds": 700.4, "max_seconds": 600}),
     "That recording is too long (700 s); please keep it under 600 seconds.", "600 秒"),
    (TextTooLong("x", params={"length": 5000, "limit": 4000}),
     "That message is too long for me (5000 characters); please keep it under 4000.", "4000"),
    (Busy("x"), "I'm still working on your earlier messages here.", "一分钟"),
    (ServerBusy("x"), "I'm answering a lot of people right now.", "太多"),
    (NoSpeech("x"), "I couldn't hear anything — could you say it again?", "没听到"),
    (PermissionDenied("x"), "Only admins can do that.", "只有管理员"),
    (CommandError("x", code="pair.missing", params={"id": 9}), "There is no pair #9.", "#9"),
])
def test_errors_carry_a_code_rendered_in_both_languages(error, english, chinese):
    assert error.user_message.startswith(english)
    assert chinese in word(error.message, "zh")
    assert error.message.code == error.code != "text"
    # Errors cross process boundaries (the isolated decoder): code and params survive.
    again = pickle.loads(pickle.dumps(error))
    assert again.message == error.message


def test_an_error_raised_the_old_way_still_shows_its_text():
    class Legacy(UserFacingError):
        user_message = "A class-level sentence."

    old = UserFacingError("detail", user_message="Exactly these words.")
    assert old.user_message == word(old.message, "zh") == "Exactly these words."
    assert Legacy("d").user_message == word(Legacy("d").message, "zh") == "A class-level sentence."
    assert str(old) == "detail" and old.message.to_dict() == {
        "code": "text", "params": {"text": "Exactly these words."}}


def test_templates_use_only_named_fields():
    for table in CATALOG.values():
        for code, template in table.items():
            for _, name, _, _ in string.Formatter().parse(template):
                assert name is None or (name and not name.isdigit()), code


def test_every_command_has_a_menu_entry_telegram_accepts():
    from bot.core.commands import ADMIN_COMMANDS, USER_COMMANDS

    for command in ("start", "help", *USER_COMMANDS, *ADMIN_COMMANDS):
        for table in (EN, ZH):
            assert 3 <= len(table[f"menu.{command}"]) <= 256, command
