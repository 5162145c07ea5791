"""ChatTTS through the real `chattts` package, on random weights of the real architecture."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.app import build_tts
from bot.core.persona import load_persona
from bot.core.types import Pcm
from bot.infra.tts.chattts_tts import SAMPLE_RATE, ChatTTSSpeech, ChatTTSVoice
from bot.infra.tts.fallback import FallbackSpeech
from tests.conftest import make_settings

# Random weights never say "stop": a small token budget keeps each synthesis short.
VOICE = ChatTTSVoice(max_new_tokens=16)


def chattts(path, tmp_path, voice: ChatTTSVoice = VOICE, name: str = "persona") -> ChatTTSSpeech:
    return ChatTTSSpeech(str(path), voice, speaker_dirs=[tmp_path / name, tmp_path / "data"],
                         device="cpu")


def test_chinese_and_english_become_24k_voice_notes(chattts_dir, tmp_path, codec):
    tts = chattts(chattts_dir, tmp_path)
    for text, language in (("你好，我是慢慢。", "zh"), ("Hello, I am Manman.", "en")):
        pcm = tts.synthesize(text, language)
        assert pcm.sample_rate == SAMPLE_RATE == 24_000
        assert pcm.samples.dtype == np.float32 and pcm.duration_s > 0.2
        assert np.isfinite(pcm.samples).all() and np.abs(pcm.samples).max() > 0
        note = codec.encode_voice_note(pcm)
        assert note.data[:4] == b"OggS" and abs(note.duration_s - pcm.duration_s) < 0.1
        assert abs(codec.decode(note.data).duration_s - pcm.duration_s) < 0.1


def test_the_speaker_is_sampled_once_and_the_voice_survives_a_reload(chattts_dir, tmp_path):
    first = chattts(chattts_dir, tmp_path)
    first.load()
    stored = (tmp_path / "persona" / "chattts_speaker.txt").read_text()
    assert stored == first.speaker and len(stored) > 100
    # A new process (new ChatTTS instance) reads the same speaker, even with another seed...
    again = chattts(chattts_dir, tmp_path, ChatTTSVoice(max_new_tokens=16, seed=9))
    again.load()
    assert again.speaker == stored
    # ...which ChatTTS decodes to the same speaker embedding.
    from ChatTTS.model.speaker import Speaker

    np.testing.assert_array_equal(Speaker._decode(first.speaker), Speaker._decode(again.speaker))
    assert again.synthesize("Nice to meet you.", "en").duration_s > 0.2
    # The seed decides a new voice: the same seed samples the same speaker.
    fresh = chattts(chattts_dir, tmp_path, name="other")
    fresh.load()
    assert fresh.speaker == stored


def test_a_read_only_persona_folder_keeps_the_speaker_in_the_data_folder(chattts_dir, tmp_path):
    (tmp_path / "persona").write_text("not a folder")  # mkdir fails, as on a read-only install
    tts = chattts(chattts_dir, tmp_path)
    tts.load()
    assert (tmp_path / "data" / "chattts_speaker.txt").read_text() == tts.speaker


class BrokenOnReply:
    name = "chattts"

    def load(self) -> None:
        pass

    def synthesize(self, text: str, language: str) -> Pcm:
        raise RuntimeError("CUDA out of memory")


def test_piper_speaks_when_chattts_cannot_load_or_fails(tts, tmp_path, caplog):
    missing = FallbackSpeech(ChatTTSSpeech(str(tmp_path / "nowhere"), VOICE,
                                           speaker_dirs=[tmp_path]), tts)
    pcm = missing.synthesize("Hello there.", "en")
    assert pcm.sample_rate == 22_050 and pcm.duration_s > 0.3
    assert missing.name.startswith("piper:en_US-joe-medium (fallback: chattts failed to load: "
                                   "FileNotFoundError")
    assert "TTS chattts unavailable, using piper" in caplog.text

    flaky = FallbackSpeech(BrokenOnReply(), tts)
    assert flaky.synthesize("Hello again.", "en").sample_rate == 22_050
    assert flaky.name == "chattts"  # still preferred for the next reply
    assert "TTS chattts failed on a reply" in caplog.text


def test_settings_and_persona_choose_the_backend(tmp_path):
    persona = load_persona("manman")
    piper = build_tts(make_settings(tmp_path))
    assert piper.name == "piper:en_US-joe-medium"
    chosen = build_tts(make_settings(tmp_path, tts_backend="chattts", chattts_path="/x"), persona)
    assert isinstance(chosen, FallbackSpeech) and isinstance(chosen.preferred, ChatTTSSpeech)
    assert chosen.preferred.voice.seed == 2222
    assert chosen.preferred.speaker_dirs[0] == persona.directory
    strict = build_tts(make_settings(tmp_path, tts_backend="chattts", tts_fallback=False), persona)
    assert isinstance(strict, ChatTTSSpeech) and strict.path is None  # the hub's 2Noise/ChatTTS
    with pytest.raises(ValueError, match="unknown voice.chattts settings: pitch"):
        ChatTTSVoice.from_persona({"pitch": 3})
