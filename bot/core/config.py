"""Settings, read from the environment and `.env` (prefix ``CHATMAN_``).

Every field here is documented in `.env.example`; `chatman doctor` prints them with
secrets masked (see :func:`Settings.masked`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from bot.core.language import base_language

#: The value that selects the small model shipped in a PyPI package (see README).
STARTER = "starter"
#: The Chinese-speaking starter LLM (``make setup LANGS=en,zh``); ``starter`` means it for a
#: persona whose language is Chinese (see :func:`starter_for`).
STARTER_ZH = "starter-zh"


def _pairs(value: str) -> dict[str, str]:
    """``a=b,c=d`` as a mapping (entries without both sides are left out)."""
    pairs = (entry.partition("=") for entry in value.split(","))
    return {k.strip(): v.strip() for k, _, v in pairs if k.strip() and v.strip()}


def starter_for(model: str, language: str) -> str:
    """``starter`` for a persona speaking ``language``: the English starter LLM can't speak
    Chinese, so a Chinese persona's starter is the Chinese-speaking one."""
    if model == STARTER and base_language(language) == "zh":
        return STARTER_ZH
    return model

Device = Literal["auto", "cpu", "cuda"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATMAN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # `CHATMAN_X=` in .env means "use the default", as in .env.example.
        env_ignore_empty=True,
        # Platform variables go by their platform's usual names (TELEGRAM_BOT_TOKEN);
        # code and tests use the field names.
        populate_by_name=True,
        # str(ValidationError) would otherwise quote the rejected value, secrets included.
        hide_input_in_errors=True,
    )

    data_dir: Path = Path("./data")
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite file under data_dir"
    )
    model_cache_dir: Path | None = Field(
        default=None, description="De-quantised model cache; default data_dir/models"
    )

    persona: str = "manman"
    persona_dir: Path | None = Field(default=None, description="Default: the bundled persona/ folder")
    language: str | None = Field(default=None, description="Default: the persona's own")
    languages: str = Field(
        default="", description="Languages a turn may be answered in (comma-separated), the "
                                "speaker's if listed; default: every language the persona has a "
                                "system prompt in")

    asr_model: str = STARTER
    asr_device: Device = "auto"
    asr_compute_type: str = "auto"
    asr_language: str | None = None
    asr_vad: bool = True
    asr_beam_size: int = Field(default=1, ge=1, le=10)

    llm_model: str = STARTER
    llm_device: Device = "auto"
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    llm_max_new_tokens: int | None = Field(
        default=None, ge=1, le=4096,
        description="Token cap per reply; default: from the persona's speech budget")
    llm_temperature: float = Field(default=0.3, ge=0.0, le=2.0)
    llm_top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    llm_repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    llm_seed: int | None = None
    starter_persona: bool = Field(
        default=True, description="Install the persona's shipped starter version (starter LLM)")
    llm_context_tokens: int = Field(default=1536, ge=64)
    # --- where the LLM runs: in this process, or on an OpenAI-compatible engine (vLLM...) ---
    llm_backend: Literal["transformers", "openai"] = Field(
        default="transformers",
        description="transformers: in process; openai: an OpenAI-compatible chat-completions "
                    "server at CHATMAN_LLM_BASE_URL")
    llm_base_url: str | None = Field(
        default=None, description="The engine's API root, e.g. http://127.0.0.1:8000/v1")
    llm_api_key: SecretStr | None = Field(default=None, description="The engine's API key")
    llm_served_model: str | None = Field(
        default=None,
        description="The base model's name on the engine; default: CHATMAN_LLM_MODEL's folder")
    llm_served_versions: str = Field(
        default="", description="version=served-name pairs (comma-separated) for engines that "
                                "serve each exported version under a name of their own")
    llm_lora_adapters: bool = Field(
        default=False, description="Load each version's LoRA adapter into the engine at run "
                                   "time (vLLM --enable-lora) and ask for it by version name")
    llm_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    llm_retries: int = Field(default=2, ge=0, le=10,
                             description="Retries (with backoff) on 5xx and connection errors")
    llm_batch_window_ms: float = Field(
        default=15.0, ge=0, le=1000,
        description="In process: how long a reply waits for others to share its batch")
    llm_max_batch: int = Field(default=8, ge=1, le=64,
                               description="In process: replies generated together, at most")
    history_max_messages: int = Field(default=40, ge=0)

    tts_backend: Literal["piper", "chattts"] = "piper"
    chattts_path: str | None = Field(
        default=None, description="ChatTTS asset folder; default the hub's 2Noise/ChatTTS")
    tts_fallback: bool = True
    tts_voice: str = STARTER
    tts_voices: str = Field(
        default="", description="language=voice pairs (comma-separated) for Piper, e.g. "
                                "zh=/voices/zh_CN-huayan-medium.onnx; `starter` is that "
                                "language's starter voice. Default: the starter voices installed")
    tts_device: Device = "auto"
    tts_speed: float = Field(default=1.0, gt=0.2, le=3.0)

    max_voice_seconds: float = Field(default=120.0, gt=0)
    max_upload_mb: float = Field(default=20.0, gt=0)
    decode_cpu_seconds: float = Field(
        default=1.0, gt=0, le=60, description="CPU budget of decoding one audio file")
    max_text_chars: int = Field(default=2000, ge=1, le=100_000,
                                description="Longest text message the persona answers")
    max_turns_in_flight: int = Field(
        default=8, ge=1, description="Turns answered or waiting, all chats together")
    admin_ids: str = ""

    # --- local web console ---
    web_enabled: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8765, ge=0, le=65535)
    web_admin_token: SecretStr | None = None
    web_allowed_hosts: str = Field(
        default="", description="Extra Host names the console answers (comma-separated)")
    web_header_timeout_seconds: float = Field(default=10.0, gt=0)
    web_body_timeout_seconds: float = Field(default=60.0, gt=0)

    # --- chat platforms ---
    chat_queue_limit: int = Field(default=5, ge=1, description="Messages per chat in flight")
    telegram_bot_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN",
                                                    "CHATMAN_TELEGRAM_BOT_TOKEN"))
    telegram_api_base_url: str = Field(
        default="https://api.telegram.org/bot",
        validation_alias=AliasChoices("TELEGRAM_API_BASE_URL", "CHATMAN_TELEGRAM_API_BASE_URL"))
    telegram_file_base_url: str = Field(
        default="https://api.telegram.org/file/bot",
        validation_alias=AliasChoices("TELEGRAM_FILE_BASE_URL", "CHATMAN_TELEGRAM_FILE_BASE_URL"))
    telegram_webhook_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TELEGRAM_WEBHOOK_URL", "CHATMAN_TELEGRAM_WEBHOOK_URL"))
    telegram_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TELEGRAM_WEBHOOK_SECRET",
                                                    "CHATMAN_TELEGRAM_WEBHOOK_SECRET"))
    telegram_webhook_listen: str = Field(
        default="0.0.0.0", validation_alias=AliasChoices("TELEGRAM_WEBHOOK_LISTEN",
                                                         "CHATMAN_TELEGRAM_WEBHOOK_LISTEN"))
    telegram_webhook_port: int = Field(
        default=8443, ge=1, le=65535,
        validation_alias=AliasChoices("TELEGRAM_WEBHOOK_PORT", "CHATMAN_TELEGRAM_WEBHOOK_PORT"))
    telegram_reply_text: Literal["caption", "message", "none"] = "caption"
    telegram_text_voice: bool = False
    discord_bot_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_BOT_TOKEN",
                                                    "CHATMAN_DISCORD_BOT_TOKEN"))
    discord_api_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DISCORD_API_BASE_URL", "CHATMAN_DISCORD_API_BASE_URL"))
    discord_gateway_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DISCORD_GATEWAY_URL", "CHATMAN_DISCORD_GATEWAY_URL"))
    discord_guild_ids: str = Field(
        default="", validation_alias=AliasChoices("DISCORD_GUILD_IDS", "CHATMAN_DISCORD_GUILD_IDS"))
    discord_shard_count: int | None = Field(
        default=None, ge=1, description="Shards of the whole bot; default: Discord's advice",
        validation_alias=AliasChoices("DISCORD_SHARD_COUNT", "CHATMAN_DISCORD_SHARD_COUNT"))
    discord_shard_ids: str = Field(
        default="", description="Shards this replica runs (e.g. 0,1); default: all",
        validation_alias=AliasChoices("DISCORD_SHARD_IDS", "CHATMAN_DISCORD_SHARD_IDS"))
    discord_reply_text: Literal["message", "none"] = "message"
    discord_text_voice: bool = False

    train_base_model: str | None = Field(
        default=None, description="Base to fine-tune; default the persona's training.base_model"
    )
    train_max_steps: int | None = Field(default=None, ge=1, description="Default: 60")
    train_progress_seconds: float = Field(default=60.0, ge=0)
    registry_poll_seconds: float = Field(default=10.0, gt=0)
    run_training: bool = Field(
        default=True, description="`chatman run` also runs training jobs (off: `chatman worker`s do)")

    # --- replicas: the durable inbox ---
    replica_id: str | None = Field(
        default=None, max_length=64, description="This process's name in claims; default host-pid")
    inbox_lease_seconds: float = Field(
        default=30.0, ge=1.0, le=3600.0,
        description="A claimed message whose replica stops renewing it is answered elsewhere after this")
    inbox_workers: int | None = Field(
        default=None, ge=1, le=256, description="Chats answered at once; default max_turns_in_flight")

    # --- observability ---
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="/metrics, /healthz and /readyz on their own port (the web console has them too)")
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("asr_language", mode="before")
    @classmethod
    def _empty_language_is_auto(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here so that nothing later (secret_values, make_engine) fails on it with a
        # traceback. The message never repeats the URL: it may hold a password.
        if value is not None:
            try:
                make_url(value.get_secret_value())
            except Exception:  # ArgumentError, or ValueError for a port that isn't a number
                raise ValueError(
                    "not a database URL: write it like postgresql+psycopg://user:password@host"
                    ":5432/chatman or sqlite:////absolute/path/chatman.db (percent-encode special "
                    "characters in the password)") from None
        return value

    @model_validator(mode="after")
    def _engine_has_an_address(self) -> Settings:
        if self.llm_backend == "openai" and not self.llm_base_url:
            raise ValueError("CHATMAN_LLM_BACKEND=openai needs CHATMAN_LLM_BASE_URL (the "
                             "engine's API root, e.g. http://127.0.0.1:8000/v1)")
        return self

    @model_validator(mode="after")
    def _shards_fit_the_count(self) -> Settings:
        try:
            ids = self.discord_shards
        except ValueError as exc:
            raise ValueError("DISCORD_SHARD_IDS: comma-separated shard numbers, e.g. 0,1") from exc
        if ids is not None:
            if self.discord_shard_count is None:
                raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (all replicas' shards)")
            if any(not 0 <= i < self.discord_shard_count for i in ids):
                raise ValueError(f"DISCORD_SHARD_IDS must be between 0 and "
                                 f"{self.discord_shard_count - 1}")
        return self

    @property
    def language_list(self) -> list[str]:
        """CHATMAN_LANGUAGES as a list (empty: the persona's)."""
        return [x.strip() for x in self.languages.split(",") if x.strip()]

    @property
    def voices_by_language(self) -> dict[str, str]:
        """CHATMAN_TTS_VOICES as a mapping (language → Piper voice)."""
        return _pairs(self.tts_voices)

    @property
    def served_versions(self) -> dict[str, str]:
        """CHATMAN_LLM_SERVED_VERSIONS as a mapping (version → the engine's name for it)."""
        return _pairs(self.llm_served_versions)

    @field_validator("tts_voices", "llm_served_versions")
    @classmethod
    def _are_pairs(cls, value: str, info: ValidationInfo) -> str:
        form = "language=voice" if info.field_name == "tts_voices" else "version=served-name"
        for entry in (x.strip() for x in value.split(",")):
            if entry and not all(part.strip() for part in entry.partition("=")[::2]):
                raise ValueError(f"{entry!r} is not {form}")
        return value

    @field_validator("admin_ids")
    @classmethod
    def _admin_ids_name_their_platform(cls, value: str) -> str:
        for entry in (x.strip() for x in value.split(",")):
            platform, sep, user = entry.partition(":")
            if entry and (not sep or not platform.isalpha() or not user or " " in user):
                raise ValueError(f"{entry!r} is not platform:user_id (e.g. telegram:123)")
        return value

    # --- derived values -------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'chatman.db').resolve()}"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    @property
    def resolved_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def resolved_inbox_workers(self) -> int:
        return self.inbox_workers or self.max_turns_in_flight

    @property
    def discord_shards(self) -> list[int] | None:
        """The shard ids this replica runs, or None for all of them."""
        ids = [int(x) for x in self.discord_shard_ids.split(",") if x.strip()]
        return ids or None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def admin_id_set(self) -> frozenset[str]:
        return frozenset(x.strip() for x in self.admin_ids.split(",") if x.strip())

    def train_overrides(self, max_steps: int | None = None) -> dict[str, int]:
        """TrainConfig fields these settings (or a /retrain argument) override."""
        steps = max_steps or self.train_max_steps
        return {"max_steps": steps} if steps else {}

    def for_worker(self) -> dict[str, object]:
        """Every field with secrets revealed, for a child process's stdin (never argv/env)."""
        data: dict[str, object] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, Path):
                value = str(value.resolve())
            data[name] = value
        return data

    def secret_values(self) -> list[str]:
        """Raw secret strings, for the log filter that masks them."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                if name == "database_url":
                    password = make_url(raw).password
                    if password:
                        values.append(str(password))
                elif raw:
                    values.append(raw)
        # An engine URL may carry credentials (http://user:password@host/v1).
        engine_password = urlsplit(self.llm_base_url or "").password
        if engine_password:
            values.append(engine_password)
        return values

    def masked(self) -> dict[str, str]:
        """Effective settings for display: secrets masked, DB passwords hidden."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                shown[name] = mask_url(self.resolved_database_url)
            elif name == "llm_base_url" and value and urlsplit(value).password:
                parts = urlsplit(value)
                shown[name] = parts._replace(netloc=parts.netloc.replace(
                    f":{parts.password}@", ":***@")).geturl()
            elif isinstance(value, SecretStr):
                shown[name] = "***" if value.get_secret_value() else ""
            else:
                shown[name] = "" if value is None else str(value)
        return shown


def mask_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _field_name(loc: str) -> str | None:
    """The field a validation error is about: pydantic-settings reports aliased fields by alias."""
    if loc in Settings.model_fields:
        return loc
    for name, info in Settings.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices) and loc in info.validation_alias.choices:
            return name
    return None


def env_var(field: str) -> str:
    """The environment variable that sets ``field`` (TELEGRAM_BOT_TOKEN, CHATMAN_DATA_DIR)."""
    info = Settings.model_fields.get(field)
    if info is None:
        return field
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"CHATMAN_{field.upper()}"


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each rejected variable and why; secret values are never shown."""
    parts = []
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = _field_name(loc)
        info = Settings.model_fields[field] if field else None
        # Unknown fields count as secret: better an unhelpful message than a leaked token.
        secret = info is None or "SecretStr" in str(info.annotation)
        shown = "" if secret or "input" not in error else f"={error['input']!r}"
        reason = error["msg"].removeprefix("Value error, ")
        parts.append(f"{env_var(field) if field else loc or 'settings'}{shown}: {reason}")
    return "; ".join(parts)
