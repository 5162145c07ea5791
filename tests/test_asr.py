"""faster-whisper on speech from the Piper starter voice."""

from __future__ import annotations

import numpy as np

from bot.core.types import Pcm
from tests.speech_checks import recall


def test_transcribes_spoken_english(asr, codec, speak):
    said = "The weather is lovely today, so we are going for a long walk in the park."
    pcm = codec.decode(speak(said))
    heard = asr.transcribe(pcm)
    assert heard.language == "en"
    assert heard.duration_s == pcm.duration_s
    assert recall(said, heard.text) >= 0.8, heard.text


def test_silence_gives_no_text(asr):
    heard = asr.transcribe(Pcm(np.zeros(16_000 * 2, np.float32), 16_000))
    assert heard.text == ""
