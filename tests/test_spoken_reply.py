"""Sentence-pipelined replies (issue 15): TTS of sentence k runs while the model writes k+1,
the model stops once the speech budget is spent, front ends hear the turn as it happens, and
the voice note is the sentences joined. Fast tier: model stand-ins, SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Sequence

import pytest
from sqlalchemy import text

from adapters.app import ChatmanApp
from bot.core.events import Heard, ReplyDelta, SentenceSpoken, Stage, TurnEvent
from bot.core.streaming import GeneratorReplyStream, ReplyStream
from bot.core.types import ChatMessage, ChatRef, Incoming, LlmReply, Pcm, UserRef
from bot.services.spoken_reply import SENTENCE_PAUSE_S
from tests.conftest import make_settings
from tests.fakes.models import EchoASR, ScriptedLLM, ToneTTS

ANSWER = "First of all, hello. Second, I am a stand-in. Third, nice to meet you."


class TellingTTS(ToneTTS):
    """Says each sentence as a half-second tone, and tells who waits for it that it began."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self._began = threading.Condition()

    def synthesize(self, text: str, language: str) -> Pcm:
        with self._began:
            self.said.append(text)
            self._began.notify_all()
        return super().synthesize(text, language)

    def wait_for(self, sentences: int, stop: threading.Event) -> bool:
        """Until ``sentences`` have begun (True) or ``stop`` is set; False after 10 s."""
        with self._began:
            return self._began.wait_for(lambda: len(self.said) >= sentences or stop.is_set(),
                                        timeout=10)


class PacedLLM(ScriptedLLM):
    """Writes its answer word by word. A sentence is final once the next word arrives, so
    after each sentence's next word it waits (up to 10 s) until the voice has begun that
    sentence, or it is stopped: a reply only runs to its end if speech overlaps writing.
    Records whether the voice was on time, and how many words it wrote."""

    def __init__(self, answer: str, tts: TellingTTS | None = None,
                 fail_after: int | None = None) -> None:
        super().__init__(answer=answer)
        self.tts, self.fail_after = tts, fail_after
        self.overlapped = True
        self.written = 0

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        return GeneratorReplyStream(lambda stop: self._paced(stop))

    def _paced(self, stop: threading.Event) -> Generator[str, None, LlmReply]:
        words = self.answer.split(" ")
        ended = 0
        for n, word in enumerate(words):
            if stop.is_set():
                break
            if self.fail_after is not None and n == self.fail_after:
                raise ConnectionError("the engine went away")
            yield word if n == 0 else " " + word
            self.written = n + 1
            if n and words[n - 1].endswith(".") and self.tts is not None:
                ended += 1
                self.overlapped &= self.tts.wait_for(ended, stop)
        return LlmReply(" ".join(words[:self.written]), self.written, 10, self.version,
                        stopped=stop.is_set())


def build(tmp_path, llm: ScriptedLLM, tts: ToneTTS) -> ChatmanApp:
    return ChatmanApp.from_settings(make_settings(tmp_path / "data"), asr=EchoASR(), llm=llm,
                                    tts=tts)


def question(text: str = "Who are you?", want_voice: bool = True) -> Incoming:
    return Incoming(ChatRef("web", "c1"), UserRef("web", "u1", "Ada"), text=text,
                    want_voice=want_voice)


async def test_speech_of_the_first_sentence_overlaps_the_writing_of_the_next(tmp_path):
    tts = TellingTTS()
    llm = PacedLLM(ANSWER, tts)
    events: list[TurnEvent] = []

    async def hear(event: TurnEvent) -> None:
        events.append(event)

    async with build(tmp_path, llm, tts).running(load_models=False) as app:
        turn = await app.pipeline.handle(question(), on_event=hear)
    # The model was still writing (waiting after sentence one) when the voice began.
    assert llm.overlapped is True
    assert tts.said == ["First of all, hello.", "Second, I am a stand-in.",
                        "Third, nice to meet you."]
    assert turn.reply == " ".join(tts.said)
    # The note is the three sentences' audio with a pause between each two.
    assert turn.voice is not None
    assert turn.voice.duration_s == pytest.approx(3 * 0.5 + 2 * SENTENCE_PAUSE_S, abs=0.03)
    assert {"first_token", "first_audio", "llm", "tts", "encode"} <= set(turn.timings_ms)
    assert turn.timings_ms["first_audio"] <= turn.timings_ms["total"]

    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["Heard", "Stage"] and events[1] == Stage("thinking")
    assert events[0] == Heard("Who are you?", "en")
    # Text grows before any sentence is spoken; "speaking" comes with the first audio.
    assert kinds.index("ReplyDelta") < kinds.index("SentenceSpoken")
    # "speaking" comes with the first audio: after the text began, before the first sentence.
    assert kinds.index("ReplyDelta") < events.index(Stage("speaking")) < kinds.index(
        "SentenceSpoken")
    spoken = [e for e in events if isinstance(e, SentenceSpoken)]
    assert [s.index for s in spoken] == [0, 1, 2]
    assert [s.text for s in spoken] == tts.said
    assert all(s.audio is not None and s.audio.data.startswith(b"OggS") for s in spoken)
    written = "".join(e.text for e in events if isinstance(e, ReplyDelta))
    assert written == ANSWER


async def test_the_model_stops_once_the_speech_budget_is_spent(tmp_path):
    many = " ".join(f"Sentence number {n} is here." for n in range(1, 21))
    tts = TellingTTS()
    llm = PacedLLM(many, tts)
    app = build(tmp_path, llm, tts)
    async with app.running(load_models=False):
        turn = await app.pipeline.handle(question())
    budget = app.persona.speech.max_sentences
    assert turn.reply == " ".join(f"Sentence number {n} is here." for n in range(1, budget + 1))
    assert tts.said == [f"Sentence number {n} is here." for n in range(1, budget + 1)]
    # Stopped at the word after the last sentence it needed, not at the end of twenty.
    assert llm.overlapped and llm.written == 5 * budget + 1


async def test_text_only_turns_speak_nothing_but_still_stream(tmp_path):
    llm, tts = PacedLLM(ANSWER), TellingTTS()
    events: list[TurnEvent] = []

    async def hear(event: TurnEvent) -> None:
        events.append(event)

    async with build(tmp_path, llm, tts).running(load_models=False) as app:
        turn = await app.pipeline.handle(question(want_voice=False), on_event=hear)
    assert turn.voice is None and tts.said == []
    spoken = [e for e in events if isinstance(e, SentenceSpoken)]
    assert [s.text for s in spoken] == split(ANSWER) and all(s.audio is None for s in spoken)
    assert Stage("speaking") not in events


def split(text: str) -> list[str]:
    from bot.core.speech_budget import split_sentences

    return split_sentences(text)


async def test_a_model_failing_mid_reply_stores_nothing_and_stops_the_voice(tmp_path):
    llm, tts = PacedLLM(ANSWER, fail_after=6), TellingTTS()
    app = build(tmp_path, llm, tts)
    async with app.running(load_models=False):
        with pytest.raises(ConnectionError, match="went away"):
            await app.pipeline.handle(question())
        with app.store.engine.connect() as db:
            assert db.execute(text("select count(*) from exchanges")).scalar() == 0
    # The first sentence may have been voiced; nothing after the failure was.
    assert tts.said in ([], ["First of all, hello."])


async def test_an_empty_reply_says_the_fallback(tmp_path):
    llm, tts = PacedLLM(""), TellingTTS()
    async with build(tmp_path, llm, tts).running(load_models=False) as app:
        turn = await app.pipeline.handle(question())
    assert turn.reply == tts.said[0] and "Sorry" in turn.reply


class OpeningLLM(PacedLLM):
    """Opening its stream fails, or waits for ``release`` (a model loading, a lock, an
    adapter being loaded into the engine)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(ANSWER)
        self.fail = fail
        self.opening, self.release = threading.Event(), threading.Event()

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        self.opening.set()
        if self.fail:
            raise RuntimeError("the model has been closed")
        assert self.release.wait(10)
        return super().stream(messages)


async def test_a_model_failing_to_open_its_stream_ends_the_turn(tmp_path):
    llm = OpeningLLM(fail=True)
    app = build(tmp_path, llm, TellingTTS())
    async with app.running(load_models=False):
        with pytest.raises(RuntimeError, match="closed"):
            await asyncio.wait_for(app.pipeline.handle(question()), 10)
        assert app.store.exchanges() == []
        # The chat is not left locked: the next message is answered.
        llm.fail = False
        llm.release.set()
        turn = await asyncio.wait_for(app.pipeline.handle(question()), 10)
    assert turn.reply.startswith("First of all")


async def test_a_turn_cancelled_while_the_model_opens_writes_nothing(tmp_path):
    llm = OpeningLLM()
    app = build(tmp_path, llm, TellingTTS())
    async with app.running(load_models=False):
        turn = asyncio.create_task(app.pipeline.handle(question()))
        assert await asyncio.to_thread(llm.opening.wait, 10)
        turn.cancel()
        llm.release.set()  # the stream opens after the turn was given up...
        with pytest.raises(asyncio.CancelledError):
            await turn
    assert llm.written == 0  # ...and is stopped before its first word
    assert app.store.exchanges() == []
