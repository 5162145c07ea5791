"""The language follows the speaker (issue 17), fast tier: which language a turn is answered
in, with which prompt and voice; which starters a Chinese persona gets. Model stand-ins from
tests/fakes/models.py; the real models' round trip is in tests/test_zh.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.app import (
    ChatmanApp,
    answer_languages,
    build_voices,
    for_persona,
)
from bot.core.config import STARTER, STARTER_ZH, starter_for
from bot.core.language import answer_language, base_language, script_language
from bot.core.persona import PersonaError, load_persona
from bot.core.types import ChatRef, Incoming, Pcm, Transcript, UserRef
from bot.infra.tts.by_language import VoiceByLanguage
from bot.infra.tts.fastspeech_tts import FastSpeechTTS, chinese_only
from bot.infra.tts.piper_tts import PiperTTS
from tests.audio_files import encode, tone
from tests.conftest import make_settings
from tests.fakes.models import EchoASR, ScriptedLLM

PERSONA = load_persona("manman")
CHAT, USER = ChatRef("web", "c1"), UserRef("web", "u1", "Ann")


class HeardAs(EchoASR):
    """ASR that hears ``text`` in ``language``."""

    def __init__(self, text: str, language: str) -> None:
        super().__init__(text)
        self.language = language

    def transcribe(self, audio: Pcm) -> Transcript:
        return Transcript(self.text, self.language, audio.duration_s)


class VoiceLog:
    """TTS that records the language of every sentence it was asked to say."""

    name = "voice-log"

    def __init__(self) -> None:
        self.languages: list[str] = []

    def load(self) -> None:
        pass

    def synthesize(self, text: str, language: str) -> Pcm:
        self.languages.append(language)
        return Pcm(np.full(8000, 0.1, dtype=np.float32), 16_000)


@pytest.fixture(scope="module")
def speak_tone() -> bytes:
    """A voice note: what it says is up to the stand-in ASR."""
    return encode(tone(1.0, 48_000), 48_000, "ogg", "libopus")


@pytest.mark.parametrize(("text", "expected"), [
    ("你好，你叫什么名字?", "zh"),
    ("ChatMan 是什么?", "zh"),  # a Chinese question naming an English product
    ("What is ChatMan?", "en"),
    ("Tell me about 慢慢, please.", "en"),  # an English question naming a Chinese name
    ("Bonjour, ça va ?", "en"),  # Latin script: the closest the persona speaks
    ("12345 !!", None),
    ("😀", None),
    # Hostile text: control and bidi characters, combining marks, other scripts.
    ("\u202e你好\u200b\x00", "zh"),
    ("Z\u0351\u0352a\u0353l\u0354g\u0355o", "en"),
    ("Привет, как дела?", None),
    ("مرحبا 慢慢", "zh"),
])
def test_a_typed_messages_language_is_read_from_its_script(text, expected):
    assert script_language(text) == expected


def test_the_speakers_language_is_answered_only_if_the_persona_speaks_it():
    assert base_language("zh-CN") == base_language("cmn") == base_language("yue") == "zh"
    assert answer_language("zh", ["en", "zh"], "en") == "zh"
    assert answer_language("zh-TW", ["en", "zh"], "en") == "zh"
    assert answer_language("ja", ["en", "zh"], "en") == "en"
    assert answer_language("zh", ["en"], "en") == "en"
    assert answer_language(None, ["en", "zh"], "zh") == "zh"


def app_with(tmp_path: Path, asr: EchoASR, llm: ScriptedLLM, tts: VoiceLog,
             **overrides: object) -> ChatmanApp:
    application = ChatmanApp.from_settings(make_settings(tmp_path / "data", **overrides),
                                           asr=asr, llm=llm, tts=tts)
    application.migrate()
    return application


async def test_one_chat_is_answered_in_each_speakers_language(tmp_path, speak_tone):
    llm, tts = ScriptedLLM(answer="Fine."), VoiceLog()
    asr = HeardAs("你在哪个公司?", "zh")
    # A model that speaks both (the English starter answers in English only, see below).
    app = app_with(tmp_path, asr, llm, tts, llm_max_new_tokens=None, llm_model="starter-zh")
    try:
        assert app.pipeline.config.language == "en"
        typed_en = await app.pipeline.handle(Incoming(CHAT, USER, text="Who are you?"))
        spoken_zh = await app.pipeline.handle(Incoming(CHAT, USER, audio=speak_tone))
        typed_zh = await app.pipeline.handle(Incoming(CHAT, USER, text="ChatMan 是什么?"))
        asr.text, asr.language = "Ciao, come stai?", "it"
        spoken_it = await app.pipeline.handle(Incoming(CHAT, USER, audio=speak_tone))
        # What the model was told: the persona's prompt in the language answered...
        systems = [p[0].content for p in llm.prompts]
        assert systems[0].startswith("You are Manman") and systems[3].startswith("You are Manman")
        assert systems[1].startswith("你是慢慢") and systems[2].startswith("你是慢慢")
        # ...what was stored and which voice said it.
        assert [t.language for t in (typed_en, spoken_zh, typed_zh, spoken_it)] == [
            "en", "zh", "zh", "en"]
        assert tts.languages == ["en", "zh", "zh", "en"]
        # Each reply as long as its language's speech budget allows (Chinese takes more tokens).
        en, zh = (PERSONA.speech.max_new_tokens(lang) for lang in ("en", "zh"))
        assert zh > en and llm.caps == [en, zh, zh, en]
        history = app.store.recent_history(CHAT, 20)
        assert [m.content for m in history][2] == "你在哪个公司?"
    finally:
        app.close()


async def test_chatman_languages_pins_the_answer_language(tmp_path, speak_tone):
    llm, tts = ScriptedLLM(answer="Fine."), VoiceLog()
    app = app_with(tmp_path, HeardAs("你是谁?", "zh"), llm, tts, languages="en")
    try:
        turn = await app.pipeline.handle(Incoming(CHAT, USER, audio=speak_tone))
        assert turn.language == "en" and llm.prompts[0][0].content.startswith("You are Manman")
        assert list(app.pipeline.system_prompts) == ["en"]
    finally:
        app.close()


def test_the_english_starter_answers_in_english_unless_told_otherwise(tmp_path):
    # SmolLM2-135M can't speak Chinese: a Chinese speaker gets English rather than noise.
    assert answer_languages(make_settings(tmp_path), PERSONA, "en") == ["en"]
    both = make_settings(tmp_path, languages="en,zh")
    assert answer_languages(both, PERSONA, "en") == ["en", "zh"]
    assert answer_languages(make_settings(tmp_path, llm_model="/models/qwen2"), PERSONA,
                            "en") == ["en", "zh"]


def test_languages_without_a_prompt_are_refused_at_start(tmp_path):
    settings = make_settings(tmp_path, languages="en,fr")
    with pytest.raises(PersonaError, match="'fr'"):
        answer_languages(settings, PERSONA, "en")
    # A Chinese persona runs on the Chinese-speaking starter, which answers both.
    chinese = for_persona(make_settings(tmp_path, language="zh"), PERSONA)
    assert answer_languages(chinese, PERSONA, "zh") == ["zh", "en"]


def test_a_chinese_persona_runs_on_the_chinese_speaking_starter(tmp_path):
    assert starter_for(STARTER, "zh-CN") == STARTER_ZH and starter_for(STARTER, "en") == STARTER
    assert starter_for("/models/qwen2", "zh") == "/models/qwen2"  # a chosen model is kept
    zh = for_persona(make_settings(tmp_path, language="zh"), PERSONA)
    assert (zh.llm_model, zh.train_base_model) == (STARTER_ZH, STARTER_ZH)
    en = for_persona(make_settings(tmp_path), PERSONA)
    assert (en.llm_model, en.train_base_model) == (STARTER, None)
    kept = for_persona(make_settings(tmp_path, language="zh", llm_model="/m/q", train_base_model="/m/b"),
                       PERSONA)
    assert (kept.llm_model, kept.train_base_model) == ("/m/q", "/m/b")


def test_each_language_gets_its_voice(tmp_path, monkeypatch):
    voice = tmp_path / "zh_CN-test.onnx"
    chosen = build_voices(make_settings(tmp_path, tts_voices=f"zh={voice}"), PERSONA, ["en", "zh"])
    assert isinstance(chosen, VoiceByLanguage)
    assert isinstance(chosen.voice_for("zh-CN"), PiperTTS)
    assert chosen.voice_for("zh-CN").voice_path == str(voice)  # type: ignore[attr-defined]
    assert chosen.voice_for("en") is chosen.default and chosen.voice_for("fr") is chosen.default
    # The Chinese starter speaks zh once it is installed; without it, the default voice does.
    monkeypatch.setattr("adapters.app.zh_voice_ready", lambda: True)
    starter = build_voices(make_settings(tmp_path), PERSONA, ["en", "zh-CN"])
    assert isinstance(starter, VoiceByLanguage)
    assert isinstance(starter.voice_for("zh"), FastSpeechTTS)
    monkeypatch.setattr("adapters.app.zh_voice_ready", lambda: False)
    assert isinstance(build_voices(make_settings(tmp_path), PERSONA, ["en", "zh"]), PiperTTS)
    with pytest.raises(ValueError, match="language=voice"):
        make_settings(tmp_path, tts_voices="zh")


def test_the_chinese_voice_reads_what_its_front_end_can():
    assert chinese_only("ChatMan 是我开发的, 方向为AIGC!") == (
        "西艾尺诶提艾马诶艾娜是我开发的，方向为诶艾吉西！")
    assert chinese_only("今天15度。**好**😀") == "今天十五度。好"
    assert chinese_only("Ａ１２（括号）") == "诶十二括号"  # full-width forms, brackets dropped
