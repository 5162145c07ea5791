"""Character and word error rates count what is said (issue 17): not punctuation, case, the
script Chinese is written in, or digits against their spoken form. Fast tier."""

from __future__ import annotations

import pytest

from bot.infra.asr import simplified
from training.speech_metrics import error_rate, normalise


def test_whispers_traditional_characters_become_simplified():
    assert simplified("你好,請問你叫什麼名字?我們是朋友。") == "你好,请问你叫什么名字?我们是朋友。"
    assert simplified("慢慢 ChatMan 2026") == "慢慢 ChatMan 2026"  # nothing else changes


@pytest.mark.parametrize(("said", "heard", "rate"), [
    ("你好，很高兴认识你。", "你好很高興認識你", 0.0),  # punctuation and script don't count
    ("今天十五度。", "今天15度", 0.0),  # digits are compared as spoken
    ("我是搬运工。", "我是班运工", 0.2),  # one character in five
    ("你好", "", 1.0),
    ("", "", 0.0),
])
def test_chinese_is_scored_by_character(said, heard, rate):
    assert error_rate(said, heard, "zh") == pytest.approx(rate)


def test_english_is_scored_by_word():
    assert normalise("Hello, World!", "en") == "hello world"
    assert error_rate("The capital of France is Paris.", "the capital of france is paris", "en") == 0
    assert error_rate("one two three four", "one too three", "en") == pytest.approx(0.5)
