"""Errors a user can cause. Each carries the message the user is shown.

Adapters catch :class:`UserFacingError`, send ``user_message`` back, and log ``str(err)``;
anything else is a bug and is reported as a generic failure.
"""

from __future__ import annotations


class UserFacingError(Exception):
    user_message = "Sorry, something went wrong with that message."

    def __init__(self, detail: str = "", user_message: str | None = None) -> None:
        super().__init__(detail or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class EmptyInput(UserFacingError):
    user_message = "That message was empty — send me a voice note or some text."


class UnsupportedAudio(UserFacingError):
    user_message = (
        "I couldn't read that file as audio. Send a voice note or an audio file "
        "(OGG/Opus, MP3, M4A, WAV, WebM or FLAC)."
    )


class AudioTooLarge(UserFacingError):
    pass


class AudioTooLong(UserFacingError):
    pass


class TextTooLong(UserFacingError):
    pass


class Busy(UserFacingError):
    """Refused because too much is in flight; ``retry_after`` seconds is a fair wait."""

    user_message = ("I'm still working on your earlier messages here. Please try again in a "
                    "minute.")
    retry_after = 30


class ServerBusy(Busy):
    user_message = ("I'm answering a lot of people right now. Please try again in a "
                    "minute.")
    retry_after = 20


class NotDelivered(Exception):
    """An adapter could not hand the reply to the user; the turn is not stored."""


class NoSpeech(UserFacingError):
    user_message = "I couldn't hear anything — could you say it again?"
