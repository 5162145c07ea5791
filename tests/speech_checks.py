"""Comparing what was said with what was heard."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("’", "'"))


def recall(expected: str, heard: str) -> float:
    """Share of the expected words that were heard (order-free, as ASR errors are local)."""
    want = words(expected)
    if not want:
        return 1.0
    got = set(words(heard))
    return sum(w in got for w in want) / len(want)
