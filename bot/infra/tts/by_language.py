"""One voice per language: a reply is spoken by the voice for the language it is in."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from bot.core.language import base_language
from bot.core.ports import SpeechSynthesizer
from bot.core.types import Pcm

log = logging.getLogger(__name__)


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
        """The default voice must load; a language's own voice that can't is dropped (its
        replies get the default voice) rather than keeping the bot from starting."""
        self.default.load()
        for lang, voice in list(self.voices.items()):
            if voice is self.default:
                continue
            try:
                voice.load()
            except Exception as exc:
                log.warning("the %s voice %s could not load (%s: %s): %s replies get %s",
                            lang, voice.name, type(exc).__name__, exc, lang, self.default.name)
                del self.voices[lang]

    def synthesize(self, text: str, language: str) -> Pcm:
        voice = self.voice_for(language)
        try:
            return voice.synthesize(text, language)
        except Exception:
            if voice is self.default:
                raise
            # A reply still gets a voice: the default one, which the fallback logs.
            log.exception("the %s voice failed on a sentence; the default voice says it",
                          language)
            return self.default.synthesize(text, language)
