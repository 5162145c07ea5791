"""Persona profiles load, validate, and pick the prompt for the language."""

from __future__ import annotations

import pytest

from adapters.app import ChatmanApp
from bot.core.persona import PersonaError, load_persona
from tests.conftest import make_settings


def test_manman_profile():
    p = load_persona("manman")
    assert p.display_name == "Manman" and p.language == "en"
    assert p.prompt_for("en").startswith("You are Manman")
    assert p.prompt_for("zh").startswith("你是慢慢")
    with pytest.raises(PersonaError, match="no system prompt for language 'fr'"):
        p.prompt_for("fr")


def test_unknown_persona_lists_the_available_ones():
    with pytest.raises(PersonaError, match=r"no persona 'nobody'.*available: manman"):
        load_persona("nobody")


@pytest.mark.parametrize(
    ("yaml_text", "complaint"),
    [
        ("name: x\n  bad: [indent", "not valid YAML"),
        ("name: x\ndisplay_name: X\nlanguage: en\n", "system_prompt"),
        ("name: x\ndisplay_name: X\nlanguage: de\nsystem_prompt: {en: hi}\n", "language 'de'"),
        ("name: Bad Name\ndisplay_name: X\nlanguage: en\nsystem_prompt: {en: hi}\n", "name"),
    ],
)
def test_invalid_profiles_are_refused_with_the_reason(tmp_path, yaml_text, complaint):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "persona.yaml").write_text(yaml_text)
    with pytest.raises(PersonaError, match=complaint):
        load_persona("x", tmp_path)


def test_language_setting_overrides_the_personas_own(tmp_path):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "d", language="zh"))
    try:
        assert app.pipeline.config.language == "zh"
        assert app.pipeline.config.system_prompts["zh"].startswith("你是慢慢")
        assert list(app.pipeline.config.system_prompts) == ["zh", "en"]
    finally:
        app.close()


def test_persona_voice_settings_apply_unless_the_environment_sets_them(tmp_path, monkeypatch):
    import shutil

    from adapters.app import build_tts
    from bot.core.persona import bundled_persona_dir
    from bot.infra.tts.piper_tts import PiperTTS

    root = tmp_path / "personas"
    shutil.copytree(bundled_persona_dir() / "manman", root / "manman")
    yaml_path = root / "manman" / "persona.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("speed: 1.0", "speed: 1.25"))
    persona = load_persona("manman", root)

    tts = build_tts(make_settings(tmp_path), persona)
    assert isinstance(tts, PiperTTS) and tts.speed == 1.25
    monkeypatch.setenv("CHATMAN_TTS_SPEED", "0.9")
    from bot.core.config import Settings
    tts = build_tts(Settings(_env_file=None), persona)
    assert isinstance(tts, PiperTTS) and tts.speed == 0.9
