"""The bot on a real serving engine: `transformers serve` (continuous batching) started on a
free port, serving the starter base and the shipped starter persona's exported folder.

Without a forced model, `transformers serve` loads whatever folder a request names, and its id
is that path: exactly how a version is asked for without LoRA mode (bot/infra/llm/served.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.app import ChatmanApp
from bot.core.persona import load_persona
from bot.core.types import ChatKind, ChatMessage, ChatRef, Incoming, LlmReply, Role, UserRef
from bot.infra.llm.chat_model import GenerationSettings
from bot.infra.llm.openai_model import OpenAIChatModel
from bot.infra.llm.source import resolve_llm
from tests.conftest import MODEL_CACHE, make_settings
from tests.fakes import free_port
from tests.speech_checks import recall

STARTER = "SmolLM2-135M-Instruct.Q4_1"
ERIN = UserRef("test", "erin", "Erin")


@dataclass(frozen=True)
class Served:
    url: str  # the API root, .../v1
    base: Path  # the de-quantised starter base folder
    export: Path  # the shipped starter persona merged into it: model/ and adapter/
    warm_s: float  # the first answer from each folder, model loading included


def _post(url: str, body: dict[str, object], timeout: float) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, object] = json.loads(response.read())
    return answer


@pytest.fixture(scope="session")
def served_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from training.starter import merge_adapter, starter_release

    persona = load_persona("manman")
    release = starter_release(persona)
    assert release is not None
    base = Path(resolve_llm("starter", MODEL_CACHE).load_from)
    # As install_starter exports it: the adapter merged into the base, beside the adapter.
    export = tmp_path_factory.mktemp("engine") / release.version
    merge_adapter(release.adapter_dir, "starter", MODEL_CACHE, export,
                  system_prompt=persona.prompt_for("en", release.info["config"].get(
                      "system_prompt", "full")), info=release.info)
    port = free_port()
    log_path = export.parent / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # --log-level info: uvicorn says when it listens, which is the signal we wait for.
    command = [str(Path(sys.executable).with_name("transformers")), "serve",
               "--continuous-batching", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "info"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, start_new_session=True)
    listening = threading.Event()

    def copy_output() -> None:
        """The server's output into its log (read all along, so it never blocks on a full
        pipe); sets ``listening`` at uvicorn's "running on" line."""
        assert process.stdout is not None
        with log_path.open("wb") as log_file:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if b"Uvicorn running on" in line:
                    listening.set()
        listening.set()  # the server exited: stop waiting, the check below says so

    threading.Thread(target=copy_output, name="serve-log", daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not listening.wait(120) or process.poll() is not None:
            raise RuntimeError(f"transformers serve did not come up:\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        started = time.monotonic()
        for folder in (base, export / "model"):  # the first answer loads the model (~20 s)
            _post(f"{url}/v1/chat/completions", {
                # Greedy, as the tests decode: with continuous batching, `transformers serve`
                # keeps the sampling settings of a model's first request.
                "model": str(folder), "max_tokens": 1, "temperature": 0,
                "messages": [{"role": "user", "content": "Hi"}]}, timeout=300)
        yield Served(f"{url}/v1", base, export, round(time.monotonic() - started, 1))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def engine_settings(tmp_path: Path, served: Served, **overrides: object):
    return make_settings(tmp_path / "data", llm_backend="openai", llm_base_url=served.url,
                         llm_retries=0, llm_timeout_seconds=120, **overrides)


def register_starter(app: ChatmanApp, served: Served) -> str:
    v = app.registry.create_candidate(base_model="starter", config={}, job_id=None,
                                      created_by="test").version
    app.registry.record_result(v, base_version=STARTER, directory=served.export,
                               model_dir=served.export / "model", dataset_sha256="0" * 64,
                               dataset_rows=4, steps=10, metrics={}, reasons=[])
    return v


def loaded_models(served: Served) -> set[str]:
    with urllib.request.urlopen(f"{served.url}/models", timeout=10) as response:
        listing = json.loads(response.read())
    return {m["id"] for m in listing["data"] if m.get("status", {}).get("value") == "loaded"}


async def test_a_voice_note_is_answered_through_the_engine(tmp_path, served_engine, asr, tts,
                                                           speak, caplog):
    caplog.set_level(logging.WARNING)
    app = ChatmanApp.from_settings(engine_settings(tmp_path, served_engine), asr=asr, tts=tts)
    async with app.running(load_models=False):
        version = register_starter(app, served_engine)
        app.registry.activate(version, "test:ada")
        await app.sync_model()
        started = time.monotonic()
        turn = await app.pipeline.handle(Incoming(ChatRef("test", "v1", ChatKind.PRIVATE), ERIN,
                                                  audio=speak("What is your name?"),
                                                  message_id="m1"))
        took = time.monotonic() - started
    assert recall("what is your name", turn.transcript) == 1.0, turn.transcript
    assert turn.reply.strip() and turn.voice is not None and turn.voice.data[:4] == b"OggS"
    assert turn.model_version == version and turn.reply_tokens > 0
    [row] = app.store.exchanges()
    assert (row.reply_text, row.model_version) == (turn.reply, version)
    # transformers serve takes no repetition_penalty (422): learned once, then left out.
    assert "refuses repetition_penalty" in caplog.text
    print(f"\nengine: warm-up {served_engine.warm_s} s; voice turn {took:.1f} s "
          f"(timings {turn.timings_ms})")


async def test_streamed_pieces_are_the_in_process_greedy_reply(tmp_path, served_engine, llm):
    settings = engine_settings(tmp_path, served_engine, llm_repetition_penalty=1.0,
                               llm_max_new_tokens=24)
    app = ChatmanApp.from_settings(settings)
    try:
        engine_llm = app.llm
        assert isinstance(engine_llm, OpenAIChatModel)
        local = copy.copy(llm)
        local.generation = GenerationSettings(max_new_tokens=24, temperature=0.0,
                                              repetition_penalty=1.0)
        prompt = [ChatMessage(Role.SYSTEM, "You are a helpful assistant."),
                  ChatMessage(Role.USER, "What is the capital of France?")]

        def read() -> tuple[list[str], LlmReply]:
            stream = engine_llm.stream(prompt)
            return list(stream), stream.reply

        started = time.monotonic()
        pieces, reply = await asyncio.to_thread(read)
        took = time.monotonic() - started
        assert len(pieces) > 1 and "".join(pieces).strip() == reply.text
        expected = await asyncio.to_thread(local.generate, prompt)
        # Same tokenizer, template, prompt and greedy decoding: the same words.
        assert reply.text == expected.text
        assert reply.prompt_tokens == expected.prompt_tokens
        assert reply.model_version == STARTER
        print(f"\nengine: {reply.new_tokens} tokens streamed in {took:.1f} s")
    finally:
        app.close()


async def test_a_version_switch_asks_the_engine_for_the_other_model(tmp_path, served_engine):
    app = ChatmanApp.from_settings(engine_settings(tmp_path, served_engine))
    chat = ChatRef("test", "swap", ChatKind.PRIVATE)
    async with app.running(load_models=False):
        before = await app.pipeline.handle(Incoming(chat, ERIN, text="Hello!", want_voice=False))
        llm = app.llm
        assert isinstance(llm, OpenAIChatModel)
        assert llm.served_name == str(served_engine.base) and before.model_version == STARTER

        version = register_starter(app, served_engine)
        app.registry.activate(version, "test:ada")
        await app.sync_model()  # loads it: a one-token answer from the engine
        after = await app.pipeline.handle(Incoming(chat, ERIN, text="Who are you?",
                                                   want_voice=False))
        swapped = app.llm
        assert isinstance(swapped, OpenAIChatModel) and swapped is not llm
        assert swapped.served_name == str((served_engine.export / "model").resolve())
        assert after.model_version == version
        assert swapped.served_name in loaded_models(served_engine)
    assert {e.model_version for e in app.store.exchanges()} == {STARTER, version}


async def test_evaluation_on_the_engine_answers_as_in_process(tmp_path, served_engine, llm):
    """`chatman eval --engine`: the answers the gate scores come from the engine, decoded as
    asked, and (greedy) are the in-process model's own."""
    settings = engine_settings(tmp_path, served_engine)
    app = ChatmanApp.from_settings(settings)
    try:
        engine_llm = app.llm
        assert isinstance(engine_llm, OpenAIChatModel)
        greedy = GenerationSettings(max_new_tokens=20, temperature=0.0, repetition_penalty=1.0)
        questions = ["What is the capital of France?", "Name a primary colour.",
                     "How many days are in a week?"]
        conversations = [[ChatMessage(Role.SYSTEM, "You are a helpful assistant."),
                          ChatMessage(Role.USER, q)] for q in questions]
        served = await asyncio.to_thread(engine_llm.answer_many, conversations, greedy, 3)
        local = await asyncio.to_thread(llm.answer_many, conversations, greedy, 1)
    finally:
        app.close()
    assert [a.text for a in served] == [a.text for a in local]
    assert all(a.new_tokens > 0 for a in served)
