"""Small text helpers shared by storage, curation and datasets."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from bot.core.types import ChatMessage, Role

#: Kept in user text: line breaks and tabs; every other control or format character (NUL,
#: zero-width spaces, bidi overrides) is dropped before anything else sees the text.
_KEPT_CONTROLS = {"\n", "\t"}


def clean_user_text(text: str) -> str:
    """What a user typed, without invisible characters, trimmed."""
    return "".join(
        ch for ch in text
        if ch in _KEPT_CONTROLS or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    ).strip()


def question_key(question: str) -> str:
    """Questions differing only in case, whitespace or punctuation share one key."""
    text = unicodedata.normalize("NFKC", question).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")[:512]


def history_pairs(messages: Sequence[ChatMessage]) -> list[list[str]]:
    """[[question, answer], ...] from alternating user/assistant messages (alpaca history)."""
    pairs: list[list[str]] = []
    pending: str | None = None
    for m in messages:
        if m.role is Role.USER:
            pending = m.content
        elif m.role is Role.ASSISTANT and pending is not None:
            pairs.append([pending, m.content])
            pending = None
    return pairs
