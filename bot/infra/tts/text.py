"""Making LLM text speakable: TTS engines read markup and emoji literally or not at all."""

from __future__ import annotations

import re

_CODE_BLOCK = re.compile(r"```.*?(?:```|$)", re.S)  # an unclosed block runs to the end
_INLINE_CODE = re.compile(r"`([^`]*)`")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^)]+)\)")
# Stops at CJK punctuation, which often follows a URL without a space.
_URL = re.compile(r"(?:https?://|www\.)[^\s，。！？、）)]+", re.I)
_MARKUP = re.compile(r"[*_#>~|]+")
# Emoji, pictographs, dingbats, variation selectors and joiners.
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f900-\U0001f9ff\ufe0f\u200d]+"
)
_SPACES = re.compile(r"\s+")


def strip_markup(text: str, url_word: str = " ") -> str:
    """Code blocks, images and emoji out; inline code and link texts kept; URLs → ``url_word``."""
    text = _CODE_BLOCK.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(url_word, text)
    return _EMOJI.sub(" ", text)


def clean_for_speech(text: str) -> str:
    text = strip_markup(text)
    text = _MARKUP.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
