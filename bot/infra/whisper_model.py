"""faster-whisper's WhisperModel, detecting a note's language on the encoder pass that
transcribes it.

faster-whisper detects the language on an encoder pass of its own, then transcription encodes
the same first 30 s window again: for a short note that second pass is as long as the rest of
the transcription (a bilingual bot's ASR took 0.64 x real time, 0.34 told the language).
Here detection encodes exactly the window transcription starts on and keeps the output, and
the transcription's first ``encode`` takes it instead of running the encoder again.

Imported when the ASR loads (faster-whisper's import is not free).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

from bot.core.language import base_language


def _key(features: np.ndarray) -> bytes:
    array = np.ascontiguousarray(features)
    digest = hashlib.blake2b(array.tobytes(), digest_size=16)
    digest.update(repr((array.shape, array.dtype.str)).encode())
    return digest.digest()


class OneEncodeWhisperModel(WhisperModel):  # type: ignore[misc]  # untyped upstream
    """A WhisperModel whose :meth:`detect_among` leaves its encoder output for the
    transcription of the same audio on the same thread.

    The kept output is a cache, never an input: it is used only for features byte-equal to the
    ones it was computed from, so if faster-whisper ever prepares its first window differently
    the transcription simply encodes again.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per thread: each conversation's note is detected and transcribed on one worker
        # thread, and two notes transcribed at once must not take each other's output.
        self._kept = threading.local()
        #: Encoder passes run (not the ones taken from detection): a metric for tests/bench.
        self.encoder_passes = 0
        self._passes_lock = threading.Lock()

    def encode(self, features: np.ndarray) -> Any:
        kept = getattr(self._kept, "entry", None)
        self._kept.entry = None
        if kept is not None and kept[0] == _key(features):
            return kept[1]
        with self._passes_lock:
            self.encoder_passes += 1
        return super().encode(features)

    def detect_among(self, audio: np.ndarray, languages: Sequence[str], *, vad: bool) -> str:
        """The spoken language of ``audio`` (16 kHz mono): the likeliest of ``languages``
        (base codes; any language when empty), as a code faster-whisper takes.

        Prepares the audio as ``transcribe(audio, vad_filter=vad)`` does, so the window
        encoded here is the one transcription starts on."""
        if vad:
            speech = get_speech_timestamps(audio, VadOptions())
            audio = np.concatenate(collect_chunks(audio, speech)[0], axis=0)
        features = self.feature_extractor(audio)
        # generate_segments' first window: the content frames (the extractor's padding frame
        # left out), at most 30 s, padded to 30 s.
        content = features.shape[-1] - 1
        first = pad_or_trim(features[..., : min(self.feature_extractor.nb_max_frames, content)])
        output = self.encode(first)
        self._kept.entry = (_key(first), output)
        # [(token like "<|zh|>", probability)], likeliest first.
        scored = [(token[2:-2], p) for token, p in self.model.detect_language(output)[0]]
        allowed = [(p, code) for code, p in scored if base_language(code) in languages]
        if allowed:
            return str(max(allowed)[1])
        return str(scored[0][0])
