"""How well speech survives a round trip: character error rate, the usual measure for Chinese
ASR (words aren't delimited), and word error rate for English.

Both texts are normalised first, so only what is said counts: case, punctuation and spacing
are dropped, Chinese is compared in simplified characters, and digits are spelled out in
Chinese (Whisper writes "15度" for 十五度).
"""

from __future__ import annotations

import re
import unicodedata

import cn2an

from bot.infra.asr import simplified

_NOT_SPOKEN = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str, language: str) -> str:
    """``text`` reduced to what is said: lower case, no punctuation; Chinese with its digits
    spelled out and without spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    if language.lower().startswith("zh"):
        text = simplified(text)  # 們 and 们 are the same word said
        try:
            text = cn2an.transform(text, "an2cn")
        except (ValueError, KeyError):  # cn2an gives up on some digit strings: keep them
            pass
        return _NOT_SPOKEN.sub("", text)
    return " ".join(_NOT_SPOKEN.sub(" ", text).split())


def _edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """Character error rate for Chinese, word error rate otherwise (edits / reference length;
    1.0 for anything heard when nothing was said)."""
    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    units = (list(ref), list(hyp)) if language.lower().startswith("zh") else (ref.split(),
                                                                              hyp.split())
    if not units[0]:
        return 0.0 if not units[1] else 1.0
    return _edits(*units) / len(units[0])
