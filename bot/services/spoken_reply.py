"""The reply written and voiced sentence by sentence: TTS of sentence k runs while the model
writes sentence k+1, so the first audio exists long before the whole reply does.

The model streams in a worker thread (:meth:`~bot.core.ports.ChatModel.stream`); its pieces
cross to the event loop, where :class:`~bot.core.speech_budget.SentenceStream` cuts them into
final sentences within the persona's speech budget. Each sentence goes to a second worker that
synthesises them in order. Once the budget is spent the model is stopped: nothing more it
wrote would be said. The voice note is the sentences' audio joined with short pauses, so what
is shown (the sentences joined) and what is said are the same reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bot.core.events import OnEvent, ReplyDelta, SentenceSpoken, Stage
from bot.core.ports import AudioCodec, ChatModel, SpeechSynthesizer
from bot.core.speech_budget import SentenceStream, SpeechBudget
from bot.core.streaming import ReplyStream
from bot.core.types import ChatMessage, LlmReply, Pcm

log = logging.getLogger(__name__)

#: Silence between two sentences' audio: what a speaker's breath between sentences sounds like.
SENTENCE_PAUSE_S = 0.18


@dataclass
class SpokenReply:
    text: str
    reply: LlmReply
    audio: Pcm | None
    sentences: list[str] = field(default_factory=list)
    #: since the reply was asked for: first piece of text, first sentence's audio, all text
    first_token_ms: float | None = None
    first_audio_ms: float | None = None
    llm_ms: float = 0.0
    tts_ms: float = 0.0


_END = object()


async def speak_reply(
    llm: ChatModel,
    prompt: Sequence[ChatMessage],
    *,
    budget: SpeechBudget,
    language: str,
    fallback: str,
    tts: SpeechSynthesizer | None,
    codec: AudioCodec | None = None,
    on_event: OnEvent | None = None,
    max_new_tokens: int | None = None,
) -> SpokenReply:
    """Ask ``llm`` and voice its reply with ``tts`` (None: text only) as it is written.

    With ``on_event`` and a ``codec``, each sentence's audio is also encoded on its own, for
    front ends that play the reply while it is being made.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    out = SpokenReply(text="", reply=LlmReply("", 0, 0, llm.version), audio=None)
    pieces: asyncio.Queue[object] = asyncio.Queue()
    to_voice: asyncio.Queue[str | None] = asyncio.Queue()
    # Set from the loop when nothing more the model writes is wanted (budget spent, the voice
    # failed, the turn was cancelled), possibly before the writer has opened its stream.
    abandon = threading.Event()
    holder: list[ReplyStream] = []
    lock = threading.Lock()  # orders the writer's opening against stop_writing

    def write() -> LlmReply:
        """In the writer thread: the model's pieces, handed to the loop as they come. The end
        marker is always queued, whatever happens, so the loop never waits for nothing."""
        try:
            stream = llm.stream(prompt, max_new_tokens)
            with lock:
                holder.append(stream)
                if abandon.is_set():
                    stream.stop()
            try:
                for piece in stream:
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                return stream.reply
            finally:
                stream.close()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is reading
                loop.call_soon_threadsafe(pieces.put_nowait, _END)

    def stop_writing() -> None:
        with lock:
            abandon.set()
            if holder:
                holder[0].stop()

    async def emit(event: Stage | ReplyDelta | SentenceSpoken) -> None:
        if on_event is not None:
            await on_event(event)

    async def voice() -> list[Pcm]:
        """Synthesise sentences in order as they become final."""
        chunks: list[Pcm] = []
        index = 0
        while (sentence := await to_voice.get()) is not None:
            t0 = time.perf_counter()
            pcm = await asyncio.to_thread(tts.synthesize, sentence, language) if tts else None
            out.tts_ms += (time.perf_counter() - t0) * 1000
            note = None
            if pcm is not None:
                chunks.append(pcm)
                if on_event is not None and codec is not None:
                    note = await asyncio.to_thread(codec.encode_voice_note, pcm)
                if out.first_audio_ms is None:
                    out.first_audio_ms = round((time.perf_counter() - started) * 1000, 1)
                    await emit(Stage("speaking"))
            await emit(SentenceSpoken(index, sentence, note))
            index += 1
        return chunks

    writer = _in_own_thread(loop, write)
    voicer = asyncio.ensure_future(voice())
    # A voice that fails stops the model at once rather than after the whole reply.
    def on_voiced(task: asyncio.Future[list[Pcm]]) -> None:
        if not task.cancelled() and task.exception() is not None:
            stop_writing()

    voicer.add_done_callback(on_voiced)
    sentences = SentenceStream(budget, language)
    try:
        while (piece := await pieces.get()) is not _END:
            assert isinstance(piece, str)
            if out.first_token_ms is None:
                out.first_token_ms = round((time.perf_counter() - started) * 1000, 1)
            await emit(ReplyDelta(piece))
            for sentence in sentences.feed(piece):
                to_voice.put_nowait(sentence)
            if sentences.full:
                stop_writing()
        reply = await writer
        out.llm_ms = round((time.perf_counter() - started) * 1000, 1)
        for sentence in sentences.finish(truncated=reply.truncated):
            to_voice.put_nowait(sentence)
        if not sentences.sentences:  # nothing sayable: the fallback is said instead
            to_voice.put_nowait(fallback)
        to_voice.put_nowait(None)
        chunks = await voicer
    except BaseException:
        stop_writing()
        voicer.cancel()
        # The model's thread ends at its next token; wait for it so nothing outlives the turn.
        await asyncio.gather(writer, voicer, return_exceptions=True)
        raise
    out.reply, out.text = reply, sentences.text or fallback
    out.sentences = sentences.sentences or [fallback]
    out.tts_ms = round(out.tts_ms, 1)
    out.audio = join_sentences(chunks) if chunks else None
    return out


def _in_own_thread(loop: asyncio.AbstractEventLoop,
                   fn: Callable[[], LlmReply]) -> asyncio.Future[LlmReply]:
    """``fn`` in a thread of its own. A writer holds its thread for the whole reply: in the
    loop's shared executor, a few of them would leave TTS, ASR and storage waiting behind
    them, undoing the pipelining exactly under load."""
    future: asyncio.Future[LlmReply] = loop.create_future()

    def settle(result: LlmReply | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting turn
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="llm-writer", daemon=True).start()
    return future


def join_sentences(chunks: Sequence[Pcm]) -> Pcm:
    """The sentences' audio in order, a short pause between each two."""
    rate = chunks[0].sample_rate
    pause = np.zeros(int(rate * SENTENCE_PAUSE_S), dtype=np.float32)
    parts: list[np.ndarray] = []
    for n, chunk in enumerate(chunks):
        if chunk.sample_rate != rate:  # one voice per reply; a fallback voice may differ
            chunk = resample(chunk, rate)
        if n:
            parts.append(pause)
        parts.append(chunk.samples.astype(np.float32, copy=False))
    return Pcm(np.concatenate(parts), rate)


def resample(pcm: Pcm, rate: int) -> Pcm:
    """Linear resampling: only for a sentence a fallback voice said at another rate."""
    n = max(1, round(len(pcm.samples) * rate / pcm.sample_rate))
    x = np.linspace(0, len(pcm.samples) - 1, n)
    return Pcm(np.interp(x, np.arange(len(pcm.samples)), pcm.samples).astype(np.float32), rate)
