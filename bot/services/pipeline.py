"""decode → ASR → LLM ⇉ TTS (sentence by sentence) → encode → deliver → store, one
:class:`Incoming` at a time per chat.

Every model call runs in a worker thread, so the event loop (and the text commands it serves)
stays responsive; user files are decoded in worker processes of their own
(:mod:`bot.infra.audio.isolated`), so hostile uploads queue among themselves at a lower CPU priority
and never compete with the models for the GIL. Two bounds
hold for everybody: uploads being decoded, and turns in flight (counted from a decoded
question, so refused files never take a turn's place). Different chats proceed
concurrently; within one chat, turns are strictly ordered so each sees the history the
previous one wrote. A turn is stored only after the adapter's ``deliver`` has put everything
the user receives in place (sent it, or written it to disk): a failed delivery stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from bot.core.errors import EmptyInput, NoSpeech, ServerBusy, TextTooLong, UserFacingError
from bot.core.events import Heard, OnEvent, Stage
from bot.core.language import answer_language, script_language
from bot.core.loudness import is_silent
from bot.core.messages import Message
from bot.core.observe import NoObserver, TurnObserver, failure_kind
from bot.core.ports import (
    AudioCodec,
    ChatModel,
    Decoder,
    SpeechRecognizer,
    SpeechSynthesizer,
    Store,
)
from bot.core.speech_budget import SpeechBudget
from bot.core.textkeys import clean_user_text
from bot.core.tracing import ensure_turn
from bot.core.types import ChatKind, ChatMessage, Incoming, Pcm, Role, Transcript, Turn
from bot.core.wording import word
from bot.services.chat_queue import InFlight
from bot.services.spoken_reply import speak_reply

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Said when the model wrote nothing sayable (in the language of the question).
FALLBACK_REPLY = Message("reply.fallback")
#: Processes that decode user files: at most this many decodes run at once, and this many
#: more (or as many as the turns in flight, if more) may wait; beyond that an upload is
#: refused as busy.
DECODE_WORKERS = 2
DECODE_WAITING = 4

#: Puts the reply in front of the user (sends it, writes its audio); returns the id under
#: which the reply can be found again (a platform message id, a file name) or None.
Deliver = Callable[[Turn], Awaitable[str | None]]


@dataclass(frozen=True)
class PipelineConfig:
    """``system_prompts``: the persona's prompt in every language it speaks; a turn is answered
    in the speaker's language when it is one of them, else in ``language`` (the persona's).
    ``reply_tokens``: each language's reply cap (its speech budget; default: the model's)."""

    persona: str
    system_prompts: Mapping[str, str]
    language: str
    reply_tokens: Mapping[str, int] = field(default_factory=dict)
    speech: SpeechBudget = SpeechBudget()
    history_max_messages: int = 40
    max_text_chars: int = 2000
    max_turns_in_flight: int = 8


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round((time.perf_counter() - start) * 1000, 1)


class VoicePipeline:
    def __init__(
        self,
        *,
        codec: AudioCodec,
        asr: SpeechRecognizer,
        llm: ChatModel,
        tts: SpeechSynthesizer,
        store: Store,
        config: PipelineConfig,
        decoder: Decoder | None = None,
        observer: TurnObserver | None = None,
    ) -> None:
        """``decoder``: where uploads are decoded (the composition root hands over worker
        processes at a low CPU priority); without one, ``codec.decode`` runs in a thread.
        ``observer`` hears every turn's outcome and timings (metrics)."""
        self.codec, self.asr, self.llm, self.tts, self.store = codec, asr, llm, tts, store
        # The prompts the answering model is served with (one per language): a version answers
        # with the system prompt it was trained with, so they are swapped with the model.
        self.system_prompts: Mapping[str, str] = dict(config.system_prompts)
        self.config = config
        self._chat_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._decoder = decoder
        self.observer: TurnObserver = observer or NoObserver()
        # A burst of legitimate voice notes (as many as may be answered at once) queues for the
        # decoders rather than being refused; each decode is bounded in CPU time, so the wait
        # stays short even when the queue is all hostile files.
        waiting = max(DECODE_WAITING, config.max_turns_in_flight)
        self.decodes = InFlight(DECODE_WORKERS + waiting, lambda n: ServerBusy(
            f"{n} uploads being decoded"))
        self.turns = InFlight(config.max_turns_in_flight, lambda n: ServerBusy(
            f"{n} turns in flight (limit {config.max_turns_in_flight})"))

    def _lock_for(self, msg: Incoming) -> asyncio.Lock:
        key = (msg.chat.platform, msg.chat.chat_id)
        lock = self._chat_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._chat_locks[key] = lock
        return lock

    async def warm_up(self) -> None:
        """Start the decoder processes (models are loaded by the application)."""
        if self._decoder is not None:
            await self._decoder.warm_up()

    def close(self) -> None:
        """Stop the decoder processes (the application closes the pipeline)."""
        if self._decoder is not None:
            self._decoder.close()

    @staticmethod
    async def _run(fn: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(fn, *args)

    async def _decode(self, msg: Incoming, timer: _Timer) -> Pcm:
        """The upload as PCM, decoded in bounded, low-priority worker processes (hostile files
        stop here)."""
        assert msg.audio is not None
        with self.decodes.claim(), timer.stage("decode"):
            pcm = await (self._decoder.decode(msg.audio) if self._decoder is not None
                         else self._run(self.codec.decode, msg.audio))
        if is_silent(pcm):
            raise NoSpeech(f"silent audio ({pcm.duration_s:.1f}s)")
        return pcm

    def _text(self, msg: Incoming) -> Transcript:
        """The text as sent, cleaned and bounded before any model sees it."""
        raw, limit = msg.text or "", self.config.max_text_chars
        # Far too long is refused before cleaning: cleaning a megabyte costs the event loop
        # (which serves everybody) a noticeable moment.
        text = raw if len(raw) > 4 * limit else clean_user_text(raw)
        if not text:
            raise EmptyInput("no audio and no text")
        if len(text) > limit:
            raise TextTooLong(f"{len(text)} characters > {limit}",
                              params={"length": len(text), "limit": limit})
        return Transcript(text=text, language=script_language(text) or self.config.language,
                          duration_s=0.0)

    async def _transcribe(self, pcm: Pcm, timer: _Timer) -> Transcript:
        with timer.stage("asr"):
            transcript = await self._run(self.asr.transcribe, pcm)
        if not transcript.text.strip():
            raise NoSpeech(f"no speech recognised in {pcm.duration_s:.1f}s of audio")
        return transcript

    async def handle(self, msg: Incoming, deliver: Deliver | None = None,
                     on_event: OnEvent | None = None) -> Turn:
        """Answer ``msg``; ``deliver`` runs before the turn is stored (see the module doc).

        ``on_event`` hears the turn as it happens (:mod:`bot.core.events`): the web console
        shows the text growing and plays each sentence as soon as it is voiced."""
        # Every log line of the turn, in this task and the threads it uses, carries its id
        # (the inbox worker's, when the message came through the inbox).
        with ensure_turn():
            try:
                turn = await self._in_chat_order(msg, deliver, on_event)
            except Exception as err:
                self.observer.turn_failed(msg.chat.platform, failure_kind(err))
                raise
            self.observer.turn_done(msg.chat.platform, turn)
            return turn

    async def _in_chat_order(self, msg: Incoming, deliver: Deliver | None,
                             on_event: OnEvent | None) -> Turn:
        # The chat's lock is taken on arrival (asyncio locks are FIFO), so a quick text message
        # cannot overtake a voice note sent before it that is still being transcribed.
        async with self._lock_for(msg):
            try:
                return await self._handle_in_order(msg, deliver, on_event)
            except UserFacingError as err:
                log.info("refused input in %s/%s: %s", msg.chat.platform, msg.chat.chat_id, err)
                raise

    async def _handle_in_order(self, msg: Incoming, deliver: Deliver | None,
                               on_event: OnEvent | None) -> Turn:
        timer = _Timer()
        started = time.perf_counter()
        if on_event is not None and msg.audio is not None:
            await on_event(Stage("listening"))
        pcm = await self._decode(msg, timer) if msg.audio is not None else None
        typed = self._text(msg) if pcm is None else None
        # A turn's place is taken only by input that is fit to answer.
        with self.turns.claim():
            transcript = typed if pcm is None else await self._transcribe(pcm, timer)
            assert transcript is not None
            if on_event is not None:
                await on_event(Heard(transcript.text, transcript.language))
            return await self._answer(msg, deliver, transcript, timer, started, on_event)

    async def _answer(self, msg: Incoming, deliver: Deliver | None, transcript: Transcript,
                      timer: _Timer, started: float, on_event: OnEvent | None) -> Turn:
        speaker = msg.user.display_name if msg.chat.kind is ChatKind.GROUP else None
        user_turn = ChatMessage(Role.USER, transcript.text, speaker)

        history = await self._run(
            self.store.recent_history, msg.chat, self.config.history_max_messages
        )
        if msg.chat.kind is not ChatKind.GROUP:
            history = [ChatMessage(m.role, m.content) for m in history]
        # One model for the whole turn: a hot swap (see ChatmanApp.sync_model) replaces
        # self.llm between turns, never under one.
        llm, prompts = self.llm, self.system_prompts
        # The speaker's language if the persona speaks it: the prompt in that language, the
        # voice for it, its speech budget (what is stored is the language answered in).
        language = answer_language(transcript.language, prompts, self.config.language)
        system_prompt = prompts[language]
        with timer.stage("prompt"):
            prompt = await self._run(llm.fit_history, system_prompt, history, user_turn)
        if on_event is not None:
            await on_event(Stage("thinking"))
        # What is shown is what is said: both are the reply cut to the persona's budget,
        # sentence by sentence as the model writes it (see bot/services/spoken_reply.py).
        asked_ms = (time.perf_counter() - started) * 1000
        spoken = await speak_reply(
            llm, prompt, budget=self.config.speech, language=language,
            fallback=word(FALLBACK_REPLY, language), tts=self.tts if msg.want_voice else None,
            codec=self.codec, on_event=on_event,
            max_new_tokens=self.config.reply_tokens.get(language))
        reply, text = spoken.reply, spoken.text
        # "llm" is the model's whole reply (TTS overlaps it); the first_* marks count from the
        # turn's start, as the user waits.
        timer.ms["llm"] = spoken.llm_ms
        if spoken.first_token_ms is not None:
            timer.ms["first_token"] = round(asked_ms + spoken.first_token_ms, 1)
        voice = None
        if spoken.audio is not None:
            timer.ms["tts"] = spoken.tts_ms
            if spoken.first_audio_ms is not None:
                timer.ms["first_audio"] = round(asked_ms + spoken.first_audio_ms, 1)
            with timer.stage("encode"):
                voice = await self._run(self.codec.encode_voice_note, spoken.audio)
        timer.ms["total"] = round((time.perf_counter() - started) * 1000, 1)
        turn = Turn(
            transcript=transcript.text,
            language=language,
            reply=text,
            voice=voice,
            audio_duration_s=transcript.duration_s if msg.audio is not None else None,
            model_version=reply.model_version,
            reply_tokens=reply.new_tokens,
            persona=self.config.persona,
            context=list(prompt[1:-1]),
            timings_ms=dict(timer.ms),
        )
        reply_id = await deliver(turn) if deliver is not None else None
        turn.exchange_id = await self._run(
            self.store.record_turn,
            msg.chat,
            msg.user,
            msg.message_id,
            turn,
            "voice" if msg.audio is not None else "text",
            reply_id,
            msg.receipt,
        )
        log.info(
            "turn %s/%s exchange=%s tokens=%d timings=%s",
            msg.chat.platform, msg.chat.chat_id, turn.exchange_id, reply.new_tokens, turn.timings_ms,
        )
        return turn
