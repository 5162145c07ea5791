"""One voice per language: a reply is spoken by the voice for the language it is in."""

from __future__ import annotations

from collections.abc import Mapping

from bot.core.language import base_language
from bot.core.ports import SpeechSynthesizer
from bot.core.types import Pcm


class VoiceByLanguage:
    """``voices`` by language (``zh``, ``en``); any other language gets ``default``."""

    def __init__(self, voices: Mapping[str, SpeechSynthesizer], default: SpeechSynthesizer) -> None:
        self.voices = {base_language(k): v for k, v in voices.items()}
        self.default = default

    @property
    def name(self) -> str:
        others = ", ".join(f"{lang}: {v.name}" for lang, v in self.voices.items()
                           if v is not self.default)
        return f"{self.default.name} ({others})" if others else self.default.name

    def voice_for(self, language: str) -> SpeechSynthesizer:
        return self.voices.get(base_language(language), self.default)

    def load(self) -> None:
        for voice in {id(v): v for v in (self.default, *self.voices.values())}.values():
            voice.load()

    def synthesize(self, text: str, language: str) -> Pcm:
        return self.voice_for(language).synthesize(text, language)
