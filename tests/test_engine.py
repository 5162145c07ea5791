"""The LLM on a serving engine (CHATMAN_LLM_BACKEND=openai), against a local fake of vLLM's
API over real HTTP: names, runtime LoRA adapters on a hot swap, decoding, the engine down.

The real engine (`transformers serve`) answers in tests/test_engine_serve.py (model tier).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.core.errors import EngineUnavailable
from bot.core.types import ChatKind, ChatMessage, ChatRef, Incoming, LlmReply, Role, UserRef
from bot.core.wording import word
from bot.infra.llm.openai_model import OpenAIChatModel
from bot.infra.llm.served import ServedNames, adapter_dir, served_model_name
from tests.conftest import make_settings
from tests.fakes import free_port
from tests.fakes.models import EchoASR, ToneTTS, write_tiny_tokenizer
from tests.fakes.vllm_api import FakeVllm

KEY = "sk-engine-secret-4242"
DANA = UserRef("test", "dana", "Dana")


# --- served names ---------------------------------------------------------------------
def test_a_version_is_asked_for_by_name_in_lora_mode_else_by_its_folder(tmp_path):
    folder = tmp_path / "manman-v3" / "model"
    names = ServedNames(cache_dir=tmp_path)
    assert served_model_name(str(folder), "manman-v3", names) == str(folder.resolve())
    lora = ServedNames(cache_dir=tmp_path, lora_adapters=True)
    assert served_model_name(str(folder), "manman-v3", lora) == "manman-v3"
    assert adapter_dir(str(folder)) == (tmp_path / "manman-v3" / "adapter").resolve()
    # An explicit name wins over both: the operator started the engine with it.
    mapped = ServedNames(cache_dir=tmp_path, served_versions={"manman-v3": "persona-v3"},
                         lora_adapters=True)
    assert served_model_name(str(folder), "manman-v3", mapped) == "persona-v3"
    assert served_model_name(str(folder), "manman-v4", mapped) == "manman-v4"


def test_the_base_is_the_served_model_setting_else_its_resolved_folder_or_hub_id(tmp_path):
    base = write_tiny_tokenizer(tmp_path / "base")
    assert served_model_name(str(base), None, ServedNames(cache_dir=tmp_path)) == str(
        base.resolve())
    assert served_model_name("Qwen/Qwen2.5-7B-Instruct", None,
                             ServedNames(cache_dir=tmp_path)) == "Qwen/Qwen2.5-7B-Instruct"
    named = ServedNames(cache_dir=tmp_path, served_model="qwen")
    assert served_model_name(str(base), None, named) == "qwen"


def test_the_engine_backend_needs_an_address_and_version_pairs(monkeypatch):
    monkeypatch.setenv("CHATMAN_LLM_BACKEND", "openai")
    with pytest.raises(ValidationError, match="CHATMAN_LLM_BASE_URL"):
        Settings(_env_file=None)
    monkeypatch.setenv("CHATMAN_LLM_BASE_URL", "http://127.0.0.1:8000/v1")
    monkeypatch.setenv("CHATMAN_LLM_SERVED_VERSIONS", "manman-v2=persona-v2, manman-v3 = v3")
    assert Settings(_env_file=None).served_versions == {"manman-v2": "persona-v2",
                                                        "manman-v3": "v3"}
    monkeypatch.setenv("CHATMAN_LLM_SERVED_VERSIONS", "manman-v2")
    with pytest.raises(ValidationError, match="not version=served-name"):
        Settings(_env_file=None)


def test_the_api_key_is_a_secret_masked_in_logs_and_settings(monkeypatch):
    monkeypatch.setenv("CHATMAN_LLM_API_KEY", KEY)
    s = Settings(_env_file=None)
    assert KEY in s.secret_values() and s.masked()["llm_api_key"] == "***"


# --- against the fake vLLM --------------------------------------------------------------
@pytest.fixture
async def vllm():
    server = FakeVllm(api_key=KEY, answer="Hello there, I am the engine answering you.")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "base")


def engine_app(tmp_path: Path, base_url: str, tokenizer_dir: Path, **overrides) -> ChatmanApp:
    settings = make_settings(tmp_path / "data", llm_backend="openai", llm_base_url=base_url,
                             llm_api_key=KEY, llm_model=str(tokenizer_dir),
                             llm_served_model="base-model", **overrides)
    app = ChatmanApp.from_settings(settings, asr=EchoASR(), tts=ToneTTS())
    return app


def export(tmp_path: Path, tokenizer_dir: Path, name: str) -> Path:
    """A version folder as training/export.py writes it: model/ and adapter/ side by side."""
    folder = tmp_path / "runs" / name
    shutil.copytree(tokenizer_dir, folder / "model")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    return folder


def register(app: ChatmanApp, folder: Path) -> str:
    v = app.registry.create_candidate(base_model="base", config={}, job_id=None,
                                      created_by="test").version
    app.registry.record_result(v, base_version="base", directory=folder,
                               model_dir=folder / "model", dataset_sha256="0" * 64,
                               dataset_rows=4, steps=10, metrics={}, reasons=[])
    return v


def text(chat: str, words: str = "hello there") -> Incoming:
    return Incoming(ChatRef("test", chat, ChatKind.PRIVATE), DANA, text=words, want_voice=False)


async def test_lora_mode_loads_the_version_adapter_on_activate_once(tmp_path, vllm,
                                                                     tokenizer_dir, caplog):
    caplog.set_level(logging.DEBUG)
    app = engine_app(tmp_path, vllm.url, tokenizer_dir, llm_lora_adapters=True)
    await app.start(load_models=True)
    try:
        first = await app.pipeline.handle(text("c1"))
        assert vllm.chats[-1].model == "base-model"  # nothing active: the base answers
        assert first.model_version == tokenizer_dir.name

        folder = export(tmp_path, tokenizer_dir, "v1")
        version = register(app, folder)
        app.registry.activate(version, "test:ada")
        await app.sync_model()
        assert vllm.loads == [{"lora_name": version,
                               "lora_path": str((folder / "adapter").resolve())}]
        assert vllm.adapters == {version: str((folder / "adapter").resolve())}
        turn = await app.pipeline.handle(text("c1"))
        assert vllm.chats[-1].model == version and turn.model_version == version
        assert turn.reply == "Hello there, I am the engine answering you."
        assert sorted(e.model_version for e in app.store.exchanges()) == sorted(
            [version, tokenizer_dir.name])
    finally:
        await app.stop()
        app.close()

    # A bot restarting against the same engine loads it again: "already loaded" is fine.
    again = engine_app(tmp_path, vllm.url, tokenizer_dir, llm_lora_adapters=True)
    async with again.running(load_models=True):
        assert again.served.version == version
        assert len(vllm.loads) == 2 and list(vllm.adapters) == [version]
        await again.pipeline.handle(text("c2"))
        assert vllm.chats[-1].model == version
        # An engine restarted under the bot forgot the adapter: the next turn loads it again.
        vllm.restart()
        turn = await again.pipeline.handle(text("c2"))
        assert turn.model_version == version and list(vllm.adapters) == [version]
    assert all(a == f"Bearer {KEY}" for a in vllm.authorizations)
    assert KEY not in caplog.text


@pytest.mark.parametrize("lora", [True, False])
async def test_a_training_worker_loads_a_version_that_passed_into_the_engine(tmp_path, vllm,
                                                                             tokenizer_dir, lora):
    # `chatman worker`: the job runner alone, nothing served by this process.
    app = engine_app(tmp_path, vllm.url, tokenizer_dir, llm_lora_adapters=lora)
    async with app.running(load_models=False, background=False, training=True):
        assert app.runner is not None
        version = register(app, export(tmp_path, tokenizer_dir, "v1"))
        app.registry.activate(version, "test:ada")  # as the trainer does when the gate passes
        problem = await app.runner.on_release(version)
    assert problem is None
    if lora:  # loaded (and checked with one token) before any replica's turn needs it
        assert [b["lora_name"] for b in vllm.loads] == [version]
        assert [c.model for c in vllm.chats] == [version]
    else:  # the replicas' followers load it; the worker touches nothing
        assert vllm.loads == [] and vllm.chats == []


async def test_streamed_pieces_join_into_the_reply_decoded_as_served(tmp_path, vllm,
                                                                     tokenizer_dir):
    app = engine_app(tmp_path, vllm.url, tokenizer_dir, llm_temperature=0.5, llm_top_p=0.8,
                     llm_seed=7, llm_repetition_penalty=1.2, llm_max_new_tokens=4)
    llm = app.llm
    assert isinstance(llm, OpenAIChatModel)

    def read(stop_at_first: bool = False) -> tuple[list[str], LlmReply]:
        # In a thread, as the pipeline calls it: the fake engine answers on this test's loop.
        messages = llm.fit_history("You are helpful.", [], ChatMessage(Role.USER, "hello there"))
        stream = llm.stream(messages)
        pieces = []
        for piece in stream:
            pieces.append(piece)
            if stop_at_first:
                stream.stop()
        return pieces, stream.reply

    try:
        pieces, reply = await asyncio.to_thread(read)
        assert pieces == ["Hello", " there,", " I", " am"]
        assert reply.text == "".join(pieces) and reply.truncated and not reply.stopped
        assert reply.new_tokens == 4 and reply.prompt_tokens > 0
        body = vllm.chats[-1].body
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"],
                body["repetition_penalty"]) == (4, 0.5, 0.8, 7, 1.2)
        assert body["messages"] == [{"role": "system", "content": "You are helpful."},
                                    {"role": "user", "content": "hello there"}]

        pieces, reply = await asyncio.to_thread(read, True)
        assert pieces == ["Hello"] and reply.text == "Hello"
        assert reply.stopped and not reply.truncated
    finally:
        app.close()


async def test_engine_down_the_user_is_told_quickly_and_nothing_is_stored(tmp_path,
                                                                         tokenizer_dir, caplog):
    url = f"http://127.0.0.1:{free_port()}/v1"
    app = engine_app(tmp_path, url, tokenizer_dir, llm_retries=0, llm_timeout_seconds=2)
    # The bot starts while the engine does not answer (vLLM takes minutes to come up).
    async with app.running(load_models=True):
        started = time.monotonic()
        with pytest.raises(EngineUnavailable) as raised:
            await app.pipeline.handle(text("c1"))
        assert time.monotonic() - started < 5
        err = raised.value
        assert word(err.message, "en") == ("I can't answer right now: my language engine isn't "
                                           "responding. Please try again in a minute.")
        assert word(err.message, "zh") == "我现在没法回答：语言引擎没有响应。请过一分钟再试。"
        assert "is not reachable" in str(err) and url in str(err)
        assert app.store.exchanges() == []
    assert "is not reachable" in caplog.text and KEY not in caplog.text


async def test_engine_down_the_web_console_says_so_with_503_and_retry_after(tmp_path,
                                                                           tokenizer_dir):
    import httpx

    from adapters.web.server import WebAdapter

    url = f"http://127.0.0.1:{free_port()}/v1"
    app = engine_app(tmp_path, url, tokenizer_dir, llm_retries=0, llm_timeout_seconds=2,
                     web_port=0)
    async with app.running(load_models=False):
        web = WebAdapter(app)
        await web.start()
        try:
            async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
                answer = await client.post("/api/chat", headers={"X-ChatMan": "1"},
                                           data={"text": "Hello?"})
        finally:
            await web.stop()
        # The server's fault, not the user's: 503, and when to try again.
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) > 0
        assert answer.json()["code"] == "llm.unavailable"
        assert "language engine" in answer.json()["error"]
        assert app.store.exchanges() == []
