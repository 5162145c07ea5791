"""The Chinese starters are put back together from their packages' parts, once, and checked
(issue 17); ChatTTS weights are verified against the official release's digests. Fast tier:
small fake parts and files, nothing loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bot.infra import starter_models
from bot.infra.tts.chattts_tts import check_assets


@pytest.fixture
def packages(tmp_path, monkeypatch) -> dict[str, Path]:
    """Fake installed packages (module name → folder) and a fresh starters folder."""
    found: dict[str, Path] = {}
    monkeypatch.setattr(starter_models, "package_dir", lambda module: found.get(module))
    monkeypatch.setattr(starter_models, "starters_dir", lambda: tmp_path / "share")
    return found


def fake_package(packages: dict[str, Path], root: Path, module: str,
                 files: dict[str, bytes]) -> None:
    folder = root / module
    for name, data in files.items():
        (folder / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "data" / name).write_bytes(data)
    packages[module] = folder


def test_the_multilingual_whisper_is_assembled_once_from_its_two_packages(tmp_path, packages,
                                                                          monkeypatch):
    assert not starter_models.multilingual_whisper_installed()
    with pytest.raises(FileNotFoundError, match="LANGS=en,zh"):
        starter_models.multilingual_whisper_dir()
    first, second = starter_models.WHISPER_BASE_PARTS
    fake_package(packages, tmp_path, first, {"model.bin.part1": b"AAAA"})
    fake_package(packages, tmp_path, second, {
        "model.bin.part2": b"BB", "config.json": b"{}", "tokenizer.json": b"{}",
        "vocabulary.json": b"[]"})
    # Parts that don't make the published model are refused, and nothing is left behind.
    with pytest.raises(FileNotFoundError, match="don't make"):
        starter_models.multilingual_whisper_dir()
    assert not list((tmp_path / "share").iterdir())
    monkeypatch.setattr(starter_models, "WHISPER_BASE_SHA256",
                        hashlib.sha256(b"AAAABB").hexdigest())
    folder = starter_models.multilingual_whisper_dir()
    assert (folder / "model.bin").read_bytes() == b"AAAABB"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    # Once: the packages can go, the assembled model stays.
    packages.clear()
    assert starter_models.multilingual_whisper_dir() == folder


def test_the_chinese_llm_is_assembled_in_order_and_checked(tmp_path, packages, monkeypatch):
    parts = [bytes([i]) * (i + 1) for i in range(6)]
    for i, module in enumerate(starter_models.QWEN_PARTS):
        fake_package(packages, tmp_path, module, {f"part{i + 1:02d}.bin": parts[i]})
    # Parts that don't make the published file are refused, and nothing is left behind.
    with pytest.raises(FileNotFoundError, match="don't make"):
        starter_models.multilingual_llm_gguf()
    assert not list((tmp_path / "share").iterdir())
    whole = b"".join(parts)
    monkeypatch.setattr(starter_models, "QWEN_SHA256", hashlib.sha256(whole).hexdigest())
    gguf = starter_models.multilingual_llm_gguf()
    assert gguf.name.endswith(".gguf") and gguf.read_bytes() == whole


def test_chattts_weights_are_checked_file_by_file(tmp_path):
    layout = ["asset/Decoder.safetensors", "asset/DVAE.safetensors", "asset/Embed.safetensors",
              "asset/Vocos.safetensors", "asset/gpt/config.json", "asset/gpt/model.safetensors",
              "asset/tokenizer/special_tokens_map.json", "asset/tokenizer/tokenizer_config.json",
              "asset/tokenizer/tokenizer.json"]
    for rel in layout:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"not the release")
    found = check_assets(tmp_path)
    assert not found.missing and sorted(found.differing) == sorted(layout)
    assert not found.official and "differ from the official release" in found.describe()
    (tmp_path / "asset" / "gpt" / "model.safetensors").unlink()
    missing = check_assets(tmp_path)
    assert missing.missing == ("asset/gpt/model.safetensors",)
    assert "lacks asset/gpt/model.safetensors" in missing.describe()
