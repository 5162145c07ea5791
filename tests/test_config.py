"""Settings: defaults, environment, .env, and secrets kept out of output and logs."""

from __future__ import annotations

import logging

import pytest
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo

from bot.core.config import Settings
from bot.infra.logs import SecretMaskingFilter


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings(_env_file=None)
    assert s.persona == "manman"
    assert s.data_dir.as_posix() == "data"
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'data' / 'chatman.db')}"
    assert (s.asr_model, s.llm_model, s.tts_voice, s.tts_backend) == ("starter",) * 3 + ("piper",)
    assert s.max_voice_seconds == 120 and s.max_upload_mb == 20
    assert s.asr_language is None


def test_environment_and_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CHATMAN_PERSONA=other\nCHATMAN_MAX_VOICE_SECONDS=30\n")
    monkeypatch.setenv("CHATMAN_ADMIN_IDS", "telegram:123, discord:456 ,")
    monkeypatch.setenv("CHATMAN_ASR_LANGUAGE", "auto")
    s = Settings()
    assert s.persona == "other" and s.max_voice_seconds == 30
    assert s.admin_id_set == {"telegram:123", "discord:456"}
    assert s.asr_language is None


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("CHATMAN_MAX_VOICE_SECONDS", "-1")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_database_password_is_masked_in_display_and_logs(caplog):
    s = Settings(_env_file=None, database_url="postgresql+psycopg://bot:s3cr3t-pw@db:5432/chatman")
    shown = s.masked()
    assert "s3cr3t-pw" not in str(shown)
    assert shown["database_url"] == "postgresql+psycopg://bot:***@db:5432/chatman"

    logger = logging.getLogger("test.secrets")
    masking = SecretMaskingFilter(s.secret_values())
    logger.addFilter(masking)
    try:
        with caplog.at_level(logging.INFO, logger="test.secrets"):
            logger.info("connecting with %s", s.resolved_database_url)
    finally:
        logger.removeFilter(masking)
    assert "s3cr3t-pw" not in caplog.text
    assert "bot:***@db" in caplog.text


def _env_name(name: str, field: FieldInfo) -> str:
    """The variable a setting reads: its first alias (the platform's own name), else CHATMAN_…."""
    if not field.validation_alias:
        return f"CHATMAN_{name.upper()}"
    assert isinstance(field.validation_alias, AliasChoices), field.validation_alias
    first = field.validation_alias.choices[0]
    assert isinstance(first, str), first
    return first


def test_env_example_documents_every_setting_and_loads_as_the_defaults(tmp_path, monkeypatch):
    from tests.conftest import REPO

    example = (REPO / ".env.example").read_text()
    documented = {
        line.split("=", 1)[0].strip()
        for line in example.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    expected = {_env_name(name, field) for name, field in Settings.model_fields.items()}
    assert documented == expected
    for name in expected:  # each one has a comment right above it or above its group
        assert "\n# " in example.split(f"\n{name}=")[0][-400:], name

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(example)
    assert Settings().model_dump() == Settings(_env_file=None).model_dump()


def test_platform_variables_use_the_platforms_names(monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:abc-secret")
    s = Settings(_env_file=None)
    assert s.telegram_bot_token is not None
    assert s.telegram_bot_token.get_secret_value() == "123:abc-secret"
    assert s.masked()["telegram_bot_token"] == "***"
    assert "123:abc-secret" in s.secret_values()


def test_admin_ids_must_name_their_platform(monkeypatch):
    monkeypatch.setenv("CHATMAN_ADMIN_IDS", "telegram:1,12345")
    with pytest.raises(ValidationError, match="'12345' is not platform:user_id"):
        Settings(_env_file=None)


def test_an_engine_url_with_credentials_is_masked_and_its_password_kept_out_of_logs():
    s = Settings(_env_file=None, llm_backend="openai",
                 llm_base_url="http://bot:s3cret-pw@engine:8000/v1")
    assert s.masked()["llm_base_url"] == "http://bot:***@engine:8000/v1"
    assert "s3cret-pw" in s.secret_values()  # what the log filter masks
