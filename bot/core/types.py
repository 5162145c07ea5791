"""Typed values that cross stage and module boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from bot.core.inbox import Receipt


class ChatKind(StrEnum):
    PRIVATE = "private"
    GROUP = "group"


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Pcm:
    """Mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)


@dataclass(frozen=True, slots=True)
class VoiceNote:
    """An encoded reply: OGG/Opus bytes plus what chat platforms want alongside."""

    data: bytes
    duration_s: float
    waveform: bytes  # 256 amplitude points, 0..255
    mime_type: str = "audio/ogg"


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    language: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    speaker: str | None = None  # display name of the user who said it, in groups


@dataclass(frozen=True, slots=True)
class LlmReply:
    text: str
    new_tokens: int
    prompt_tokens: int
    model_version: str
    # Generation hit the token cap: the text may end mid-sentence (see bot/core/speech_budget.py).
    truncated: bool = False
    # The caller stopped it early (its speech budget was spent): the text ends wherever it was.
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class ChatRef:
    platform: str
    chat_id: str
    kind: ChatKind = ChatKind.PRIVATE
    title: str | None = None


@dataclass(frozen=True, slots=True)
class UserRef:
    platform: str
    user_id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class Incoming:
    """One user message, as an adapter hands it to the pipeline."""

    chat: ChatRef
    user: UserRef
    audio: bytes | None = None
    text: str | None = None
    message_id: str | None = None
    want_voice: bool = True
    #: the inbox claim it is answered under (see bot/core/inbox.py); None: not through the inbox
    receipt: Receipt | None = None


@dataclass(slots=True)
class Turn:
    """What the pipeline did with one :class:`Incoming`."""

    transcript: str
    language: str
    reply: str
    voice: VoiceNote | None
    audio_duration_s: float | None
    model_version: str
    exchange_id: int | None = None
    reply_tokens: int = 0
    persona: str = ""
    # The earlier turns the model saw with this question (no system prompt, no question).
    context: list[ChatMessage] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
