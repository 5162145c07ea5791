"""decode → ASR → LLM → TTS → encode → deliver → store, one :class:`Incoming` at a time per chat.

Every model call runs in a worker thread, so the event loop (and the text commands it serves)
stays responsive; decoding user files has threads of its own, so hostile uploads queue among
themselves and never hold the threads database calls use. Different chats proceed
concurrently; within one chat, turns are strictly ordered so each sees the history the
previous one wrote. A turn is stored only after the adapter's ``deliver`` has put everything
the user receives in place (sent it, or written it to disk): a failed delivery stores nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from bot.audio.codec import is_silent
from bot.errors import EmptyInput, NoSpeech, TextTooLong, UserFacingError
from bot.protocols import AudioCodec, ChatModel, SpeechRecognizer, SpeechSynthesizer, Store
from bot.textkeys import clean_user_text
from bot.types import ChatKind, ChatMessage, Incoming, Role, Transcript, Turn

log = logging.getLogger(__name__)

T = TypeVar("T")

FALLBACK_REPLY = "Sorry, I don't have an answer to that right now."
#: Threads that decode user files: at most this many decodes run at once.
DECODE_THREADS = 2

#: Puts the reply in front of the user (sends it, writes its audio); returns the id under
#: which the reply can be found again (a platform message id, a file name) or None.
Deliver = Callable[[Turn], Awaitable[str | None]]


@dataclass(frozen=True)
class PipelineConfig:
    persona: str
    system_prompt: str
    language: str
    history_max_messages: int = 40
    max_text_chars: int = 2000


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
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
    ) -> None:
        self.codec, self.asr, self.llm, self.tts, self.store = codec, asr, llm, tts, store
        self.config = config
        self._chat_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._decoders = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")

    def _lock_for(self, msg: Incoming) -> asyncio.Lock:
        key = (msg.chat.platform, msg.chat.chat_id)
        lock = self._chat_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._chat_locks[key] = lock
        return lock

    @staticmethod
    async def _run(fn: Callable[..., T], *args) -> T:
        return await asyncio.to_thread(fn, *args)

    async def understand(self, msg: Incoming, timer: _Timer) -> Transcript:
        """The user's words: transcribed from audio, or the text as sent."""
        if msg.audio is not None:
            with timer.stage("decode"):
                pcm = await asyncio.get_running_loop().run_in_executor(
                    self._decoders, self.codec.decode, msg.audio)
            if is_silent(pcm):
                raise NoSpeech(f"silent audio ({pcm.duration_s:.1f}s)")
            with timer.stage("asr"):
                transcript = await self._run(self.asr.transcribe, pcm)
            if not transcript.text.strip():
                raise NoSpeech(f"no speech recognised in {pcm.duration_s:.1f}s of audio")
            return transcript
        text = clean_user_text(msg.text or "")
        if not text:
            raise EmptyInput("no audio and no text")
        limit = self.config.max_text_chars
        if len(text) > limit:
            raise TextTooLong(f"{len(text)} characters > {limit}", user_message=(
                f"That message is too long for me ({len(text)} characters); please keep it "
                f"under {limit}."))
        return Transcript(text=text, language=self.config.language, duration_s=0.0)

    async def handle(self, msg: Incoming, deliver: Deliver | None = None) -> Turn:
        """Answer ``msg``; ``deliver`` runs before the turn is stored (see the module doc)."""
        # The chat's lock is taken on arrival (asyncio locks are FIFO), so a quick text message
        # cannot overtake a voice note sent before it that is still being transcribed.
        async with self._lock_for(msg):
            try:
                return await self._handle_in_order(msg, deliver)
            except UserFacingError as err:
                log.info("refused input in %s/%s: %s", msg.chat.platform, msg.chat.chat_id, err)
                raise

    async def _handle_in_order(self, msg: Incoming, deliver: Deliver | None) -> Turn:
        timer = _Timer()
        started = time.perf_counter()
        transcript = await self.understand(msg, timer)
        speaker = msg.user.display_name if msg.chat.kind is ChatKind.GROUP else None
        user_turn = ChatMessage(Role.USER, transcript.text, speaker)

        history = await self._run(
            self.store.recent_history, msg.chat, self.config.history_max_messages
        )
        if msg.chat.kind is not ChatKind.GROUP:
            history = [ChatMessage(m.role, m.content) for m in history]
        # One model for the whole turn: a hot swap (see ChatmanApp.sync_model) replaces
        # self.llm between turns, never under one.
        llm = self.llm
        with timer.stage("llm"):
            prompt = await self._run(llm.fit_history, self.config.system_prompt, history, user_turn)
            reply = await self._run(llm.generate, prompt)
        text = reply.text or FALLBACK_REPLY
        voice = None
        if msg.want_voice:
            with timer.stage("tts"):
                pcm = await self._run(self.tts.synthesize, text, transcript.language)
            with timer.stage("encode"):
                voice = await self._run(self.codec.encode_voice_note, pcm)
        timer.ms["total"] = round((time.perf_counter() - started) * 1000, 1)
        turn = Turn(
            transcript=transcript.text,
            language=transcript.language,
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
        )
        log.info(
            "turn %s/%s exchange=%s tokens=%d timings=%s",
            msg.chat.platform, msg.chat.chat_id, turn.exchange_id, reply.new_tokens, turn.timings_ms,
        )
        return turn
