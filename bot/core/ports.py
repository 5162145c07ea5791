"""The small interfaces each pipeline stage sits behind.

Implementations live in ``bot/infra`` (``audio``, ``asr``, ``llm``, ``tts``, ``storage``,
``reply_audio``); the composition root (``adapters/app.py``) wires them from settings, and
tests can hand it any other implementation. Services (``bot/services``) see only these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.core.inbox import Receipt
from bot.core.streaming import ReplyStream
from bot.core.types import ChatMessage, ChatRef, LlmReply, Pcm, Transcript, Turn, UserRef, VoiceNote


@runtime_checkable
class AudioCodec(Protocol):
    def decode(self, data: bytes) -> Pcm:
        """Any supported container → 16 kHz mono float32. Raises UserFacingError."""

    def encode_voice_note(self, audio: Pcm) -> VoiceNote:
        """PCM → OGG/Opus voice note with duration and waveform."""

    def check_declared(self, size_bytes: int | None, duration_s: float | None,
                       platform_max_bytes: int | None = None) -> None:
        """Raise UserFacingError if a file's declared size or duration is over the limits."""


class Decoder(Protocol):
    """Where uploads are decoded, away from the event loop (``bot.infra.audio.isolated``:
    niced worker processes, so hostile files never compete with the models)."""

    async def warm_up(self) -> None: ...

    async def decode(self, data: bytes) -> Pcm:
        """As :meth:`AudioCodec.decode`; raises UserFacingError."""

    def close(self) -> None: ...


@runtime_checkable
class SpeechRecognizer(Protocol):
    name: str

    def load(self) -> None: ...

    def transcribe(self, audio: Pcm) -> Transcript: ...


@runtime_checkable
class ChatModel(Protocol):
    version: str

    def load(self) -> None: ...

    def fit_history(
        self, system: str, history: Sequence[ChatMessage], user: ChatMessage
    ) -> list[ChatMessage]:
        """The messages to send: system + as much recent history as the budget allows + user."""

    def generate(self, messages: Sequence[ChatMessage]) -> LlmReply: ...

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        """The reply as it is written (see :mod:`bot.core.streaming`): pieces of text, then
        the whole reply; it can be stopped early. ``max_new_tokens``: this reply's cap (the
        speech budget of the language it is in); default the model's own."""

    def count_conversation_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a whole conversation as the model's chat template renders it."""


class ModelFactory(Protocol):
    """Builds (does not load) the chat model for a registry entry: what a hot swap switches
    to. ``model_ref`` is a version's exported folder or the base model's reference."""

    def __call__(self, model_ref: str, version: str | None) -> ChatModel: ...


@runtime_checkable
class SpeechSynthesizer(Protocol):
    @property
    def name(self) -> str:
        """The backend answering (a fallback reports which one stands in)."""

    def load(self) -> None: ...

    def synthesize(self, text: str, language: str) -> Pcm: ...


@runtime_checkable
class Store(Protocol):
    def recent_history(self, chat: ChatRef, limit: int) -> list[ChatMessage]: ...

    def record_turn(self, chat: ChatRef, user: UserRef, message_id: str | None, turn: Turn,
                    input_kind: str, reply_message_id: str | None = None,
                    receipt: Receipt | None = None) -> int:
        """Persist the exchange and its history messages atomically; returns the exchange id.

        With ``receipt`` (the message came through the inbox), its inbox message is marked done
        in the same transaction, or :class:`bot.core.inbox.ClaimLost` is raised and nothing is
        stored."""

    def answers_every_voice(self, chat: ChatRef) -> bool:
        """Whether an admin set this chat to have every voice note answered (/answerall on)."""

    def set_answer_every_voice(self, chat: ChatRef, on: bool) -> bool:
        """Set it (the chat is created if new); returns whether it changed."""


class ReplyAudio(Protocol):
    """Reply voice notes kept on disk (web console, CLI); /forget deletes a user's."""

    def folder(self, platform: str) -> Path: ...

    def save(self, platform: str, data: bytes) -> str:
        """Store one voice note; returns its name."""

    def path(self, platform: str, name: str) -> Path | None: ...

    def forget(self, platform: str, exchange_id: int, reply_message_id: str | None) -> int:
        """Delete the audio of one exchange; returns how many files went."""
