"""Shared fixtures: the real starter models (loaded once per session), settings, apps, speech.

No test may reach a hub: the offline switches below make any attempt fail loudly.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.core.jobs import Notice
from bot.core.types import ChatRef
from bot.infra.asr import FasterWhisperASR
from bot.infra.audio.codec import PyAvCodec
from bot.infra.llm.chat_model import GenerationSettings, TransformersChatModel
from bot.infra.tts.piper_tts import PiperTTS

REPO = Path(__file__).resolve().parents[1]
# Survives between local runs so the one-off GGUF de-quantisation is paid once per checkout.
MODEL_CACHE = Path(os.environ.get("CHATMAN_TEST_MODEL_CACHE", REPO / ".cache" / "test-models"))


# The model tier: tests that load a real model (directly or through a fixture that does) or
# run the `chatman` CLI in a subprocess (which loads them). `make check` runs everything else.
MODEL_FIXTURES = {"asr", "llm", "tts", "speak", "tiny_qwen2_dir", "chattts_dir", "served_engine"}
SUBPROCESS_MODULES = {"test_cli", "test_admin_cli", "test_secrets", "test_startup_errors",
                      "test_training", "test_evaluate", "test_starter", "test_tts", "test_chattts"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module_obj = item.module if isinstance(item, pytest.Function) else None
        module = module_obj.__name__.rsplit(".", 1)[-1] if module_obj else ""
        if (MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SUBPROCESS_MODULES
                or "chatman_run" in item.name):
            item.add_marker(pytest.mark.model)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    """Keep a developer's own CHATMAN_* variables and .env out of the tests."""
    for key in list(os.environ):
        if key.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_")) and key not in (
                "CHATMAN_TEST_POSTGRES_URL", "CHATMAN_TEST_MODEL_CACHE"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        model_cache_dir=MODEL_CACHE,
        llm_temperature=0.0,
        llm_max_new_tokens=40,
        starter_persona=False,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def asr() -> FasterWhisperASR:
    model = FasterWhisperASR()
    model.load()
    return model


@pytest.fixture(scope="session")
def llm() -> TransformersChatModel:
    model = TransformersChatModel(
        "starter",
        cache_dir=MODEL_CACHE,
        generation=GenerationSettings(max_new_tokens=40, temperature=0.0),
    )
    model.load()
    return model


@pytest.fixture(scope="session")
def tts() -> PiperTTS:
    model = PiperTTS()
    model.load()
    return model


@pytest.fixture(scope="session")
def codec() -> PyAvCodec:
    return PyAvCodec(max_seconds=120, max_bytes=20 * 2**20)


@pytest.fixture(scope="session")
def speak(tts, codec):
    """Text → an OGG/Opus voice note spoken by the Piper starter voice."""
    cache: dict[str, bytes] = {}

    def _speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = codec.encode_voice_note(tts.synthesize(text, "en")).data
        return cache[text]

    return _speak


@pytest.fixture
def settings(tmp_path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def app(settings, asr, llm, tts) -> Iterator[ChatmanApp]:
    application = ChatmanApp.from_settings(settings, asr=asr, llm=llm, tts=tts)
    application.migrate()
    yield application
    application.close()


async def start_web(tmp_path: Path, asr, llm, tts, *, max_new_tokens: int = 16, **overrides):
    """The app with the session's models (short greedy answers) and its web console on a free
    loopback port; ``stop_web`` undoes it."""
    import copy

    from adapters.web.server import WebAdapter

    quick = copy.copy(llm)
    quick.generation = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", web_port=0, **overrides),
                                   asr=asr, llm=quick, tts=tts)
    await app.start(load_models=False)
    adapter = WebAdapter(app)
    await adapter.start()
    return app, adapter


async def stop_web(app: ChatmanApp, adapter) -> None:
    await adapter.stop()
    await app.stop()
    app.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str | None:
    url = os.environ.get("CHATMAN_TEST_POSTGRES_URL")
    if not url and os.environ.get("CI"):
        pytest.fail("CI must test PostgreSQL: .ci/run sets CHATMAN_TEST_POSTGRES_URL")
    return url


@pytest.fixture
def postgres_url(postgres_admin_url) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_admin_url:
        pytest.skip("CHATMAN_TEST_POSTGRES_URL not set (.ci/run sets it)")
    name = f"chatman_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = request.getfixturevalue("postgres_url")
    assert isinstance(url, str)
    return url


QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory, llm) -> Path:
    """A randomly initialised Qwen2 (two layers, 64 wide) with Qwen2's chat template.

    It borrows the starter's byte-level BPE tokenizer, which has the same <|im_start|> and
    <|im_end|> markers, so the real Qwen2 code paths run without Qwen2's weights.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from bot.infra.llm.source import resolve_llm

    out = tmp_path_factory.mktemp("models") / "tiny-qwen2"
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm("starter", MODEL_CACHE).load_from)
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chattts_dir() -> Path:
    """ChatTTS assets with random weights of the real architecture (cached like the models)."""
    from tests.chattts_assets import build_random_chattts

    return build_random_chattts(MODEL_CACHE / "chattts-random")


@dataclass
class NoticedApp(ChatmanApp):
    """The app with the training notices a test notifier collected, as (chat, notice)."""

    notices: list[tuple[ChatRef, Notice]] = field(default_factory=list)


@pytest.fixture
def job_app(tmp_path, llm, tiny_qwen2_dir) -> Iterator[NoticedApp]:
    """The app training the tiny Qwen2 in a real worker process; notices are collected in
    ``app.notices`` as (chat, notice)."""
    settings = make_settings(tmp_path / "data", train_base_model=str(tiny_qwen2_dir),
                             train_progress_seconds=0, registry_poll_seconds=0.2)
    application = NoticedApp.from_settings(settings, llm=llm)
    assert isinstance(application, NoticedApp)  # from_settings builds its own class
    notices = application.notices

    async def collect(chat: ChatRef, notice: Notice) -> None:
        notices.append((chat, notice))

    application.notifiers["test"] = collect
    yield application
    application.close()


@pytest.fixture
def registry(database_url):
    """A migrated, empty model registry for persona manman on each database."""
    from bot.infra.storage import migrate
    from bot.infra.storage.registry import SqlRegistry
    from bot.infra.storage.store import SqlStore, make_engine

    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield SqlRegistry(SqlStore(engine), "manman")
    engine.dispose()
