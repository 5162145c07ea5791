"""What a turn reports while it runs, for front ends that show it as it happens (the web
console streams them; Telegram and Discord send one voice note at the end).

The pipeline emits, in order: ``Stage("listening")`` for a voice note, ``Heard`` (what it
understood), ``Stage("thinking")``, ``ReplyDelta``s as the model writes, ``Stage("speaking")``
with the first sentence's audio, one ``SentenceSpoken`` per sentence of the reply as it is
voiced (the reply shown and said is exactly their concatenation), and nothing after the turn
is stored. A refused turn stops wherever it was refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bot.core.types import VoiceNote

StageName = Literal["listening", "thinking", "speaking"]


@dataclass(frozen=True, slots=True)
class Stage:
    name: StageName


@dataclass(frozen=True, slots=True)
class Heard:
    """The question as the persona understood it (a voice note's transcript, or the text)."""

    text: str
    language: str


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """New text from the model, as written (before the reply is cut to the speech budget)."""

    text: str


@dataclass(frozen=True, slots=True)
class SentenceSpoken:
    """One sentence of the reply, final, and its audio when the user asked for voice."""

    index: int
    text: str
    audio: VoiceNote | None


TurnEvent = Stage | Heard | ReplyDelta | SentenceSpoken

#: Receives a turn's events on the event loop; it should return quickly (queue, not send).
OnEvent = Callable[[TurnEvent], Awaitable[None]]
