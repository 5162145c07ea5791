"""Errors a user can cause. Each says what went wrong as a code with parameters.

Adapters catch :class:`UserFacingError`, show ``word(err.message, language)`` (the words live
in :mod:`bot.core.wording`, in every language the bot speaks) and log ``str(err)``; anything
else is a bug and is reported as a generic failure.

An error raised the old way, with ``user_message="…"`` text (or a subclass with a class-level
``user_message`` string), still shows exactly that text: code :data:`~bot.core.messages.TEXT`.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.core.messages import Message, Param
from bot.core.wording import word


class UserFacingError(Exception):
    code = "error.generic"

    def __init__(self, detail: str = "", user_message: str | None = None, *,
                 code: str | None = None, params: Mapping[str, Param] | None = None) -> None:
        """``detail`` is for the log; ``code`` (default: the class's) and ``params`` for the
        user. ``user_message``: finished words instead (the old way; shown in any language)."""
        if code is not None:
            self.code = code
        self.params: dict[str, Param] = dict(params or {})
        self._words = user_message
        super().__init__(detail or self.user_message)

    @property
    def message(self) -> Message:
        words = self._words if self._words is not None else _class_words(type(self))
        return Message.text(words) if words is not None else Message(self.code, self.params)

    @property
    def user_message(self) -> str:
        """The English words (logs, the CLI's English-only paths, older callers)."""
        return word(self.message, "en")


def _class_words(cls: type) -> str | None:
    """A class-level ``user_message`` string (the old way), unless a more derived class
    gives a ``code``."""
    for klass in cls.__mro__:
        if klass is UserFacingError:
            return None
        words = klass.__dict__.get("user_message")
        if isinstance(words, str):
            return words
        if "code" in klass.__dict__:
            return None
    return None


class EmptyInput(UserFacingError):
    code = "input.empty"


class UnsupportedAudio(UserFacingError):
    code = "audio.unsupported"


class AudioTooLarge(UserFacingError):
    code = "audio.too_large"


class AudioTooLong(UserFacingError):
    code = "audio.too_long"


class TextTooLong(UserFacingError):
    code = "text.too_long"


class Busy(UserFacingError):
    """Refused because too much is in flight; ``retry_after`` seconds is a fair wait."""

    code = "busy.chat"
    retry_after = 30


class ServerBusy(Busy):
    code = "busy.server"
    retry_after = 20


class EngineUnavailable(UserFacingError):
    """The LLM serving engine (CHATMAN_LLM_BASE_URL) did not answer, or answered with an error:
    nothing was generated, so there is no turn to store. ``detail`` says what happened (for the
    log, never the API key)."""

    code = "llm.unavailable"
    #: Seconds a client should wait before asking again (engines restart in about a minute).
    retry_after = 30


class NotDelivered(Exception):
    """An adapter could not hand the reply to the user; the turn is not stored."""


class NoSpeech(UserFacingError):
    code = "speech.none"


class PermissionDenied(UserFacingError):
    code = "admin.only"


class CommandError(UserFacingError):
    """A command that cannot run as given (usage, unknown pair, ...): its code says which."""
