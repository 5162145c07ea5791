"""faster-whisper on speech from the Piper starter voice."""

from __future__ import annotations

import numpy as np
import pytest

from bot.core.types import Pcm
from bot.infra.asr import FasterWhisperASR
from bot.infra.tts.fastspeech_tts import FastSpeechTTS
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


@pytest.fixture(scope="module")
def bilingual() -> FasterWhisperASR:
    """The multilingual starter, detecting among English and Chinese (a bot answering both)."""
    model = FasterWhisperASR(languages=["en", "zh"])
    model.load()
    assert model.name == "faster-whisper:whisper-base"
    return model


def test_detection_and_transcription_share_one_encoder_pass(bilingual, codec, speak):
    """Detecting the language costs no second encoder pass, and changes nothing heard: each
    note's transcript is what the same model, told the language, hears."""
    chinese = FastSpeechTTS()
    notes = [("en", codec.decode(speak("Tell me about your work, please."))),
             ("zh", codec.decode(codec.encode_voice_note(
                 chinese.synthesize("今天天气很好，我们去公园散步吧。", "zh")).data))]
    model = bilingual._model
    assert model is not None
    for language, pcm in notes:
        told = FasterWhisperASR(bilingual.model_ref, language=language)
        told.load()
        before = model.encoder_passes
        heard = bilingual.transcribe(pcm)
        assert heard.language == language
        assert model.encoder_passes - before == 1
        assert heard.text and heard.text == told.transcribe(pcm).text


@pytest.mark.parametrize("seconds", [2.0, 0.01])
def test_detection_on_silence_or_a_blip_hears_nothing(bilingual, seconds):
    """Nothing spoken (VAD keeps no audio at all): detection still answers one of the bot's
    languages and the transcript is empty, not a hallucination."""
    heard = bilingual.transcribe(Pcm(np.zeros(int(16_000 * seconds), np.float32), 16_000))
    assert heard.text == "" and heard.language in {"en", "zh"}
