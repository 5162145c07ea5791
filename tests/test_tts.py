"""Piper synthesis and the text clean-up in front of it."""

from __future__ import annotations

import numpy as np
import pytest

from bot.infra.tts.text import clean_for_speech
from tests.speech_checks import recall


def test_piper_speaks_the_text(tts, asr, codec):
    said = "Good morning, I hope you slept well."
    pcm = tts.synthesize(said, "en")
    assert pcm.sample_rate == 22_050
    assert pcm.samples.dtype == np.float32 and 1.0 < pcm.duration_s < 6.0
    heard = asr.transcribe(codec.decode(codec.encode_voice_note(pcm).data))
    assert recall(said, heard.text) >= 0.8, heard.text


def test_markup_is_not_read_out(tts):
    plain = tts.synthesize("Hello friend.", "en")
    marked = tts.synthesize("**Hello** friend. 🎉 https://example.com/x?y=1", "en")
    # The link and emoji add no speech: durations stay within a short tolerance.
    assert marked.duration_s == pytest.approx(plain.duration_s, abs=0.3)


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Bold** and _italic_ and `code`", "Bold and italic and code"),
        ("See [the docs](https://example.com) now", "See the docs now"),
        ("Visit https://example.com/a?b=c today", "Visit today"),
        ("Great job 👍🏽🎉!", "Great job !"),
        ("# Title\n> quote\n- item", "Title quote - item"),
        ("```python\nprint(1)\n```Done", "Done"),
        ("你好，世界", "你好，世界"),
    ],
)
def test_clean_for_speech(raw, spoken):
    assert clean_for_speech(raw) == spoken
