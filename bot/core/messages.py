"""What the bot says, as data: a :class:`Message` is a code and its parameters.

Services and errors say *what* happened (``Message("pair.approved", {"id": 3, ...})``); the
words, in the persona's language, come from :mod:`bot.core.wording`, and each front end lays
them out its own way (Telegram text, Discord embeds, web JSON, a CLI table). A parameter may
itself be a message (a piece whose words also depend on the language, e.g. "the base model"),
or a list of messages (one line each).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

#: Plain values, messages (rendered in the same language) and lists of messages (lines).
Param = Union[str, int, float, bool, None, "Message", list["Message"]]

#: The code of text that is already words (an error raised the old way, with English
#: ``user_message`` text): rendered as given, in every language.
TEXT = "text"


@dataclass(frozen=True)
class Message:
    code: str
    params: Mapping[str, Param] = field(default_factory=dict)

    @classmethod
    def text(cls, text: str) -> Message:
        """Words that are already written (no catalog entry): shown as they are."""
        return cls(TEXT, {"text": text})

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``{"code": …, "params": {…}}``, nested messages likewise."""
        return {"code": self.code, "params": {k: _plain(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Message:
        """The message :meth:`to_dict` made (a stored notice). A parameter that is a mapping
        is a nested message: plain values never are."""
        params = data.get("params") or {}
        assert isinstance(params, Mapping)
        return cls(str(data["code"]), {str(k): _param(v) for k, v in params.items()})


def _plain(value: Param) -> object:
    if isinstance(value, Message):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _param(value: object) -> Param:
    if isinstance(value, Mapping):
        return Message.from_dict(value)
    if isinstance(value, list):
        return [Message.from_dict(v) for v in value]
    assert value is None or isinstance(value, str | int | float | bool), value
    return value
