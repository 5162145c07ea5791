"""Turn a chat reply into text a TTS model can say: ChatTTS silently drops what it can't read.

Numbers, dates, times, percentages and money are spelled out in the reply's language (Chinese via
cn2an, English via num2words); URLs, code, markdown and emoji are dropped or named (see
:func:`bot.infra.tts.text.strip_markup`); long replies
are cut at sentence boundaries so they can be synthesised in batches.
"""

from __future__ import annotations

import re

import cn2an
from num2words import num2words

from bot.infra.tts.text import strip_markup

MD_PREFIX = re.compile(r"^\s{0,3}(?:#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)", re.M)
MD_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
# Digit lookarounds rather than \b: CJK characters count as word characters.
ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
MONEY_PREFIX = re.compile(r"([$€£¥￥])\s?(\d[\d,]*(?:\.\d+)?)")
ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.I)
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
SENTENCE_END = re.compile(r"(?<=[。！？!?；;…])|(?<=[.])(?=\s)|\n+")

CURRENCY = {
    "en": {"$": "USD", "€": "EUR", "£": "GBP", "¥": "yuan", "￥": "yuan"},
    "zh": {"$": "美元", "€": "欧元", "£": "英镑", "¥": "元", "￥": "元"},
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
SYMBOLS = {
    "en": {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "/": " or ", "#": " number "},
    "zh": {"&": "和", "+": "加", "=": "等于", "@": "at", "/": "或", "#": "号"},
}
# What survives: letters (any script), spaces and the punctuation TTS models use for prosody.
UNSAYABLE = re.compile(r"[^\w\s，。！？、；：,.!?;:'\-]", re.U)


def _lang(language: str) -> str:
    return "zh" if language.lower().startswith("zh") else "en"


def _plain(text: str, lang: str) -> str:
    text = strip_markup(text, "链接" if lang == "zh" else "a link")
    text = MD_PREFIX.sub("", text)
    return MD_EMPHASIS.sub(r"\2", text)


def _number_en(raw: str) -> str:
    value = raw.replace(",", "")
    words: str = num2words(float(value) if "." in value else int(value))
    return words


def _money_en(symbol: str, raw: str) -> str:
    value = float(raw.replace(",", ""))
    code = CURRENCY["en"][symbol]
    if code == "yuan":
        return f"{_number_en(raw)} yuan"
    words: str = num2words(value, to="currency", currency=code)
    return words.replace(",", "")


def _spell_en(text: str) -> str:
    text = ISO_DATE.sub(lambda m: f"{MONTHS[int(m[2]) - 1]} {num2words(int(m[3]), to='ordinal')}, "
                                  f"{num2words(int(m[1]), to='year')}"
                        if 1 <= int(m[2]) <= 12 else m[0], text)
    text = TIME.sub(lambda m: f"{num2words(int(m[1]))} "
                              + ("o'clock" if m[2] == "00" else
                                 ("oh " if m[2].startswith("0") else "") + num2words(int(m[2]))),
                    text)
    text = MONEY_PREFIX.sub(lambda m: _money_en(m[1], m[2]), text)
    text = PERCENT.sub(lambda m: f"{_number_en(m[1])} percent", text)
    text = ORDINAL.sub(lambda m: num2words(int(m[1]), to="ordinal"), text)
    text = re.sub(r"\b(in|since|by|until|of)\s+(1[1-9]\d\d|20\d\d)\b",
                  lambda m: f"{m[1]} {num2words(int(m[2]), to='year')}", text, flags=re.I)
    return NUMBER.sub(lambda m: _number_en(m[0]), text)


def _spell_zh(text: str) -> str:
    text = ISO_DATE.sub(lambda m: f"{m[1]}年{int(m[2])}月{int(m[3])}日", text)
    text = TIME.sub(lambda m: f"{int(m[1])}点" + ("整" if m[2] == "00" else f"{int(m[2])}分"), text)
    text = MONEY_PREFIX.sub(lambda m: f"{m[2].replace(',', '')}{CURRENCY['zh'][m[1]]}", text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    # cn2an reads years digit by digit, percentages as 百分之…, decimals with 点.
    spelled: str = cn2an.transform(text, "an2cn")
    return spelled


def spoken(text: str, language: str) -> str:
    """``text`` as words a TTS model can pronounce, in ``language`` (zh or en)."""
    lang = _lang(language)
    text = _plain(text, lang)
    text = _spell_zh(text) if lang == "zh" else _spell_en(text)
    for symbol, word in SYMBOLS[lang].items():
        text = text.replace(symbol, word)
    text = UNSAYABLE.sub(" ", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\s*\n\s*", "\n", text).strip()


def sentences(text: str, max_chars: int = 120) -> list[str]:
    """Sentence-sized pieces (merged while short, cut at commas when one runs too long)."""
    pieces: list[str] = []
    for part in SENTENCE_END.split(text):
        part = part.strip()
        if not part:
            continue
        while len(part) > max_chars:
            cut = max(part.rfind(c, 0, max_chars) for c in "，,、；; ")
            cut = cut + 1 if cut > 0 else max_chars
            pieces.append(part[:cut].strip())
            part = part[cut:].strip()
        if part:
            pieces.append(part)
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) + len(piece) + 1 <= max_chars // 2:
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged
