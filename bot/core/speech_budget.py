"""How long the persona speaks, and replies cut to fit it.

A voice bot's reply is heard, not read: three short sentences (about 12 s) is a turn in a
conversation, thirty seconds is a lecture. The persona sets the budget (``speech:`` in
persona.yaml); the LLM's token cap follows from it, and a reply that runs into the cap is cut
back to its last complete sentence, so the text shown and the voice note say the same thing
and neither stops mid-word.
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, ConfigDict, Field

# A sentence ends at . ! ? … (or their CJK forms), with any closing quotes or brackets after
# it; Latin marks only count before whitespace or the end, so "3.5" and "e.g.x" stay whole.
_SENTENCE = re.compile(
    r".*?(?:[。！？!?…]+[\"'”’」』)\]]*|\.+[\"'”’)\]]*(?=\s|$)|[.!?]+[\"'”’)\]]*(?=\s|$))",
    re.S,
)
_CLAUSE_END = "，,；;：:、"
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


class SpeechBudget(BaseModel):
    """The persona's ``speech:`` block. Rates are for the starter voices at speed 1.0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sentences: int = Field(default=3, ge=1, description="Sentences in one reply, at most")
    max_seconds: float = Field(default=12.0, gt=0, description="Seconds of speech, at most")
    words_per_second: float = Field(default=2.6, gt=0, description="English speaking rate")
    chars_per_second: float = Field(default=4.5, gt=0,
                                    description="Chinese speaking rate (characters)")
    # LLM tokens per second of speech, per language: ~1.4 tokens per English word on the
    # starter's tokenizer; Chinese costs more tokens per character on English-first models.
    tokens_per_second: dict[str, float] = Field(default_factory=lambda: {"en": 4.0, "zh": 6.0})

    def max_new_tokens(self, language: str) -> int:
        """The generation cap: room for a whole budget's worth of speech, plus the stop."""
        rate = self.tokens_per_second.get(language, self.tokens_per_second.get("en", 4.0))
        return math.ceil(self.max_seconds * rate) + 4

    def seconds(self, text: str, language: str | None = None) -> float:
        """Estimated speaking time: Chinese characters and English words at their rates."""
        cjk = len(_CJK.findall(text))
        words = len(_WORD.findall(_CJK.sub(" ", text)))
        return round(cjk / self.chars_per_second + words / self.words_per_second, 2)

    def fits(self, text: str, language: str | None = None) -> bool:
        """Said within the budget as it stands (no cut needed)."""
        return (len(split_sentences(text)) <= self.max_sentences
                and self.seconds(text, language) <= self.max_seconds)


def split_sentences(text: str) -> list[str]:
    """Sentences with their punctuation; a trailing piece without an end mark comes last."""
    text = text.strip()
    out, pos = [], 0
    for m in _SENTENCE.finditer(text):
        piece = m.group().strip()
        if piece:
            out.append(piece)
        pos = m.end()
    rest = text[pos:].strip()
    if rest:
        out.append(rest)
    return out


def ends_sentence(text: str) -> bool:
    pieces = split_sentences(text)
    return bool(pieces) and _SENTENCE.fullmatch(pieces[-1]) is not None


def shape_reply(text: str, budget: SpeechBudget, language: str, *, truncated: bool) -> str:
    """``text`` cut to the budget, ending on a sentence.

    ``truncated``: generation stopped at the token cap, so the last piece is unfinished and
    goes. A reply the model ended itself keeps its last piece even without a full stop. At
    least one sentence stays, whatever its length: silence is worse than a long sentence.
    """
    pieces = split_sentences(text)
    if truncated and pieces and not ends_sentence(pieces[-1]):
        unfinished = pieces.pop()
        if not pieces:
            return _cut_at_clause(unfinished, language)
    pieces = pieces[: budget.max_sentences]
    joiner = "" if language == "zh" else " "
    while len(pieces) > 1 and budget.seconds(joiner.join(pieces), language) > budget.max_seconds:
        pieces.pop()
    return joiner.join(pieces)


def _cut_at_clause(text: str, language: str) -> str:
    """An unfinished first sentence: keep up to its last clause boundary, closed with a stop."""
    stop = "。" if language == "zh" or _CJK.search(text[-1:] or "") else "."
    cut = max(text.rfind(c) for c in _CLAUSE_END)
    if cut > 0:
        return text[:cut].rstrip() + stop
    # No clause boundary at all: whole words only, and say it trails off.
    words = text.rsplit(" ", 1)[0] if " " in text else text
    return words.rstrip(" ,;:") + "…"


class SentenceStream:
    """The reply's sentences as the model writes them, cut to the budget as :func:`shape_reply`
    cuts the whole text: what it emits, joined, is ``shape_reply(everything fed, ...)``.

    A sentence is final once something follows it (or whitespace follows its end mark), so
    "3." waits to see whether "5" comes. Once the budget is spent, :attr:`full` says so and the
    caller can stop the model: nothing it writes after that would be said.
    """

    def __init__(self, budget: SpeechBudget, language: str) -> None:
        self.budget, self.language = budget, language
        self._joiner = "" if language == "zh" else " "
        self._raw = ""
        self.sentences: list[str] = []
        self.full = False

    @property
    def text(self) -> str:
        """What has been emitted so far, joined as the reply is."""
        return self._joiner.join(self.sentences)

    def _take(self, piece: str) -> bool:
        """Emit ``piece`` if the budget allows; False (and :attr:`full`) when it does not."""
        if self.full:
            return False
        if self.sentences and (
                len(self.sentences) >= self.budget.max_sentences
                or self.budget.seconds(self._joiner.join([*self.sentences, piece]),
                                       self.language) > self.budget.max_seconds):
            self.full = True
            return False
        self.sentences.append(piece)
        if len(self.sentences) >= self.budget.max_sentences:
            self.full = True
        return True

    def feed(self, delta: str) -> list[str]:
        """Add the model's next text; returns the sentences that became final and fit."""
        self._raw += delta
        pieces = split_sentences(self._raw)
        done = len(pieces) - 1
        if pieces and self._raw[-1:].isspace() and ends_sentence(pieces[-1]):
            done = len(pieces)
        out = []
        for piece in pieces[len(self.sentences):done]:
            if not self._take(piece):
                break
            out.append(piece)
        return out

    def finish(self, *, truncated: bool) -> list[str]:
        """The model stopped (``truncated``: at its token cap); returns the last sentences."""
        pieces = split_sentences(self._raw)
        rest = pieces[len(self.sentences):]
        if self.full or not rest:
            return []
        if truncated and not ends_sentence(rest[-1]):
            unfinished = rest.pop()
            if not pieces[:-1]:
                rest = [_cut_at_clause(unfinished, self.language)]
        return [piece for piece in rest if self._take(piece)]
