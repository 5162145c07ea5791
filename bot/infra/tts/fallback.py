"""A TTS that falls back to another (Piper) when the preferred one can't load or fails."""

from __future__ import annotations

import logging
import threading

from bot.core.ports import SpeechSynthesizer
from bot.core.types import Pcm

log = logging.getLogger(__name__)


class FallbackSpeech:
    def __init__(self, preferred: SpeechSynthesizer, fallback: SpeechSynthesizer) -> None:
        self.preferred = preferred
        self.fallback = fallback
        self.unavailable: str | None = None  # why the preferred one is out, once known
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The backend that answers now (what `chatman doctor` reports)."""
        if self.unavailable is None:
            return self.preferred.name
        return f"{self.fallback.name} (fallback: {self.preferred.name} {self.unavailable})"

    def load(self) -> None:
        with self._lock:
            if self.unavailable is not None:
                self.fallback.load()
                return
            try:
                self.preferred.load()
            except Exception as exc:
                self.unavailable = f"failed to load: {type(exc).__name__}: {exc}"
                log.warning("TTS %s unavailable, using %s: %s", self.preferred.name,
                            self.fallback.name, self.unavailable, exc_info=True)
                self.fallback.load()

    def synthesize(self, text: str, language: str) -> Pcm:
        self.load()
        if self.unavailable is None:
            try:
                return self.preferred.synthesize(text, language)
            except Exception:
                # One reply the preferred model can't say still gets a voice.
                log.exception("TTS %s failed on a reply; %s says it instead",
                              self.preferred.name, self.fallback.name)
                self.fallback.load()
        return self.fallback.synthesize(text, language)
