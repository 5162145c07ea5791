"""Which language a turn is answered in: the speaker's, when the persona speaks it.

A voice note's language is what ASR detected; a typed message's is read from its script
(Chinese characters or Latin letters), which is all the persona's languages need to tell
apart. A language the persona has no prompt for is answered in the persona's own language.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection

#: Codes that are the same language to us (ASR and users write them in many ways).
_ALIASES = {"zh-cn": "zh", "zh_cn": "zh", "zh-hans": "zh", "zh-tw": "zh", "zh_tw": "zh",
            "zh-hant": "zh", "cmn": "zh", "yue": "zh", "chinese": "zh", "english": "en"}


def base_language(code: str) -> str:
    """``zh-CN``, ``zh_TW``, ``cmn`` and ``yue`` are ``zh``; ``en-US`` is ``en``."""
    code = code.strip().lower()
    return _ALIASES.get(code, code.replace("_", "-").split("-")[0])


def _is_han(ch: str) -> bool:
    # CJK Unified Ideographs and their extension A, the compatibility block.
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def script_language(text: str) -> str | None:
    """``zh`` when Chinese characters carry at least as much as the Latin letters, ``en`` when
    Latin letters dominate, None when there are no letters to go by (digits, emoji)."""
    han = latin = other = 0
    for ch in text:
        if _is_han(ch):
            han += 1
        elif ch.isalpha():
            if unicodedata.name(ch, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    # One Chinese character carries about as much as a short English word (four letters):
    # "ChatMan 是什么?" is a Chinese question, "Tell me about 慢慢, please" an English one.
    if han and han * 4 >= latin:
        return "zh"
    if latin and latin >= other:
        return "en"
    return None


def answer_language(heard: str | None, spoken: Collection[str], default: str) -> str:
    """The language to answer in: ``heard`` (detected), if the persona speaks it, else its
    own ``default``."""
    if heard:
        lang = base_language(heard)
        for candidate in spoken:
            if base_language(candidate) == lang:
                return candidate
    return default
