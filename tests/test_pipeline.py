"""The whole pipeline with the real starter models: what the user hears, what is stored."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from adapters.app import ChatmanApp
from bot.core.errors import AudioTooLarge, AudioTooLong, EmptyInput, NoSpeech, UnsupportedAudio
from bot.core.types import ChatKind, ChatMessage, ChatRef, Incoming, Pcm, Role, UserRef
from bot.infra.audio.codec import PyAvCodec
from bot.infra.storage.models import Chat, Exchange, HistoryMessage, User
from tests.conftest import make_settings
from tests.speech_checks import recall

ALICE = UserRef("cli", "alice", "Alice")
BOB = UserRef("cli", "bob", "Bob")


class RecordingLLM:
    """Delegates to the real model and keeps the prompts it was given."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.prompts: list[list[ChatMessage]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, messages, max_new_tokens=None):
        self.prompts.append(list(messages))
        return self.inner.stream(messages, max_new_tokens)


def voice(chat: str, audio: bytes, user: UserRef = ALICE, kind=ChatKind.PRIVATE) -> Incoming:
    return Incoming(chat=ChatRef("cli", chat, kind), user=user, audio=audio, message_id="m1")


async def test_spoken_question_gets_a_spoken_answer_that_says_the_reply(app, speak, asr, codec):
    turn = await app.pipeline.handle(voice("c1", speak("What is the capital of Japan?")))

    assert recall("what is the capital of japan", turn.transcript) == 1.0, turn.transcript
    assert turn.language == "en"
    assert turn.reply.strip()
    ms = turn.timings_ms
    assert set(ms) == {"decode", "asr", "prompt", "first_token", "llm", "first_audio", "tts",
                       "encode", "total"}
    # Speech overlaps writing (sentence by sentence), so stages no longer add up; the marks
    # count from the turn's start.
    assert ms["first_token"] <= ms["first_audio"] <= ms["total"]
    assert ms["total"] >= ms["decode"] + ms["asr"] + ms["prompt"] + ms["llm"] + ms["encode"]

    # What the user hears: transcribe the reply voice note and find the reply's words in it.
    assert turn.voice is not None and turn.voice.data[:4] == b"OggS"
    heard = asr.transcribe(codec.decode(turn.voice.data))
    assert recall(turn.reply, heard.text) >= 0.6, (turn.reply, heard.text)
    assert turn.voice.duration_s == pytest.approx(codec.decode(turn.voice.data).duration_s, abs=0.1)

    [row] = app.store.exchanges()
    assert row.id == turn.exchange_id
    assert (row.transcript, row.reply_text, row.input_kind) == (turn.transcript, turn.reply, "voice")
    assert row.audio_duration_s == pytest.approx(turn.audio_duration_s) and row.audio_duration_s > 1
    assert row.model_version == "SmolLM2-135M-Instruct.Q4_1"
    assert row.timings_ms == turn.timings_ms


async def test_text_message_can_skip_the_voice(app):
    msg = Incoming(chat=ChatRef("cli", "t"), user=ALICE, text="  Hello!  ", want_voice=False)
    turn = await app.pipeline.handle(msg)
    assert turn.transcript == "Hello!" and turn.voice is None
    assert set(turn.timings_ms) == {"prompt", "first_token", "llm", "total"}
    assert app.store.exchanges()[0].input_kind == "text"


async def test_memory_survives_a_restart(settings, asr, llm, tts):
    first = ChatmanApp.from_settings(settings, asr=asr, llm=llm, tts=tts)
    first.migrate()
    said = await first.pipeline.handle(
        Incoming(chat=ChatRef("cli", "mem"), user=ALICE, text="My name is Alice.", want_voice=False)
    )
    first.close()

    spy = RecordingLLM(llm)
    second = ChatmanApp.from_settings(settings, asr=asr, llm=spy, tts=tts)
    second.migrate()
    try:
        await second.pipeline.handle(
            Incoming(chat=ChatRef("cli", "mem"), user=ALICE, text="What is my name?", want_voice=False)
        )
        await second.pipeline.handle(
            Incoming(chat=ChatRef("cli", "other"), user=ALICE, text="Hi", want_voice=False)
        )
    finally:
        second.close()
    remembered, fresh = spy.prompts
    assert [(m.role, m.content) for m in remembered[1:]] == [
        (Role.USER, "My name is Alice."),
        (Role.ASSISTANT, said.reply),
        (Role.USER, "What is my name?"),
    ]
    assert [m.role for m in fresh] == [Role.SYSTEM, Role.USER], "other chats don't share memory"


async def test_group_chat_shares_memory_with_speaker_names(app, llm):
    spy = RecordingLLM(llm)
    app.pipeline.llm = spy
    group = ChatRef("cli", "g", ChatKind.GROUP, "Team")
    for user, text in ((ALICE, "I like tea."), (BOB, "I prefer coffee.")):
        await app.pipeline.handle(Incoming(chat=group, user=user, text=text, want_voice=False))
    last = spy.prompts[-1]
    users = [m for m in last if m.role is Role.USER]
    assert [(m.speaker, m.content) for m in users] == [("Alice", "I like tea."), ("Bob", "I prefer coffee.")]
    rendered = spy.inner.tokenizer.apply_chat_template(
        [{"role": m.role.value, "content": (f"{m.speaker}: " if m.speaker else "") + m.content}
         for m in last], tokenize=False)
    assert "Bob: I prefer coffee." in rendered


class AsksTheLoop:
    """Wraps a model: each call first asks the event loop for a callback and waits for it. A
    model call made on the loop itself could never get one (the loop is busy running it), so
    ``free`` records, per call, whether the loop served others while the model worked."""

    def __init__(self, inner, loop: asyncio.AbstractEventLoop) -> None:
        self.inner, self.loop = inner, loop
        self.free: list[bool] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _ask(self) -> None:
        answered = threading.Event()
        self.loop.call_soon_threadsafe(answered.set)
        self.free.append(answered.wait(30))

    def transcribe(self, audio):
        self._ask()
        return self.inner.transcribe(audio)

    def stream(self, messages, max_new_tokens=None):
        self._ask()
        return self.inner.stream(messages, max_new_tokens)


async def test_conversations_run_concurrently_and_keep_order_within_a_chat(app, speak):
    loop = asyncio.get_running_loop()
    asr = app.pipeline.asr = AsksTheLoop(app.pipeline.asr, loop)
    llm = app.pipeline.llm = AsksTheLoop(app.pipeline.llm, loop)
    turns = await asyncio.gather(
        app.pipeline.handle(voice("a", speak("Tell me about cats."))),
        app.pipeline.handle(voice("b", speak("Tell me about dogs."), user=BOB)),
        app.pipeline.handle(Incoming(chat=ChatRef("cli", "a"), user=ALICE, text="And birds?")),
    )
    # The event loop kept serving while the models worked in threads.
    assert asr.free == [True, True] and llm.free == [True, True, True]
    assert "cat" in turns[0].transcript.lower() and "dog" in turns[1].transcript.lower()
    history = app.store.recent_history(ChatRef("cli", "a"), 10)
    assert [m.content for m in history if m.role is Role.USER] == [turns[0].transcript, "And birds?"]
    assert len(app.store.recent_history(ChatRef("cli", "b"), 10)) == 2


def _counts(app) -> tuple[int, ...]:
    with app.store.session() as s:
        return tuple(s.query(model).count() for model in (User, Chat, Exchange, HistoryMessage))


@pytest.mark.parametrize(
    ("payload", "error", "says"),
    [
        (b"", EmptyInput, "empty"),
        (b"\x00\x01garbage\xff" * 300, UnsupportedAudio, "couldn't read that file"),
        ("text-as-ogg", UnsupportedAudio, "couldn't read that file"),
        ("silence", NoSpeech, "couldn't hear anything"),
        ("noise-floor", NoSpeech, "couldn't hear anything"),
        ("too-long", AudioTooLong, "too long"),
        ("too-big", AudioTooLarge, "too big"),
    ],
)
async def test_bad_input_gets_its_message_and_stores_nothing(app, payload, error, says):
    codec = PyAvCodec(max_seconds=500, max_bytes=10**9)
    rate = 16_000
    if payload == "text-as-ogg":
        payload = b"Dear diary, today I renamed a text file to voice.ogg.\n" * 10
    elif payload == "silence":
        payload = codec.encode_voice_note(Pcm(np.zeros(rate * 3, np.float32), rate)).data
    elif payload == "noise-floor":
        hiss = np.random.default_rng(0).standard_normal(rate * 3) * 3e-4
        payload = codec.encode_voice_note(Pcm(hiss.astype(np.float32), rate)).data
    elif payload == "too-long":
        payload = codec.encode_voice_note(Pcm(np.zeros(rate * 125, np.float32), rate)).data
    elif payload == "too-big":
        payload = b"OggS" + bytes(21 * 2**20)
    before = _counts(app)
    with pytest.raises(error) as info:
        await app.pipeline.handle(voice("bad", payload))
    assert says in info.value.user_message
    assert _counts(app) == before


async def test_empty_text_is_refused(app):
    with pytest.raises(EmptyInput):
        await app.pipeline.handle(Incoming(chat=ChatRef("cli", "e"), user=ALICE, text="   "))
    assert app.store.exchanges() == []


async def test_a_failure_after_the_answer_stores_nothing(settings, asr, llm, tts):
    class BrokenTTS:
        name = "broken"

        def load(self):
            pass

        def synthesize(self, text, language):
            raise RuntimeError("synthesizer crashed")

    application = ChatmanApp.from_settings(settings, asr=asr, llm=llm, tts=BrokenTTS())
    application.migrate()
    try:
        with pytest.raises(RuntimeError):
            await application.pipeline.handle(
                Incoming(chat=ChatRef("cli", "x"), user=ALICE, text="Hello?")
            )
        assert application.store.exchanges() == []
        assert application.store.recent_history(ChatRef("cli", "x"), 10) == []
    finally:
        application.close()


def test_app_builds_from_settings_alone(tmp_path):
    # English only: the English starters (a Chinese-speaking app is in tests/test_zh.py).
    application = ChatmanApp.from_settings(make_settings(tmp_path / "d", languages="en"))
    try:
        assert application.persona.display_name == "Manman"
        assert application.pipeline.config.system_prompts["en"].startswith("You are Manman")
        assert application.asr.name == "faster-whisper:model"
        assert application.tts.name == "piper:en_US-joe-medium"
    finally:
        application.close()
