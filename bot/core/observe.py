"""The port the pipeline reports its turns through (metrics; ``bot/infra/metrics.py``).

Kept apart from the stage ports in :mod:`bot.core.ports`: observing a turn never changes it,
so the pipeline works the same with the no-op :class:`NoObserver`.
"""

from __future__ import annotations

from typing import Protocol

from bot.core.errors import NotDelivered, UserFacingError
from bot.core.types import Turn

#: The kind of a failure that is not the user's (a bug, a crashed backend).
INTERNAL = "internal"
#: The reply could not be handed to the user (the platform refused it); nothing was stored.
NOT_DELIVERED = "not_delivered"


class TurnObserver(Protocol):
    def turn_done(self, platform: str, turn: Turn) -> None:
        """A turn was answered, delivered and stored; ``turn.timings_ms`` says how long each
        stage took (decode, asr, prompt, first_token, llm, first_audio, tts, encode, total:
        whichever ran)."""

    def turn_failed(self, platform: str, kind: str) -> None:
        """A turn was refused or failed: ``kind`` is the error's code (``input.empty``,
        ``busy.server``...), :data:`NOT_DELIVERED` or :data:`INTERNAL`."""


class NoObserver:
    """Observes nothing (tests, one-off commands)."""

    def turn_done(self, platform: str, turn: Turn) -> None:
        pass

    def turn_failed(self, platform: str, kind: str) -> None:
        pass


def failure_kind(err: BaseException) -> str:
    """What a failed turn is counted as: a user-facing error's code (a small fixed set, so a
    label), :data:`NOT_DELIVERED`, else :data:`INTERNAL`."""
    if isinstance(err, UserFacingError):
        return err.code
    return NOT_DELIVERED if isinstance(err, NotDelivered) else INTERNAL
