"""The application object's guarded lifecycle and the hot swap's model-factory port (issue
14). Fast tier: model stand-ins from tests/fakes/models.py, SQLite, no model loaded."""

from __future__ import annotations

import asyncio

import pytest

from adapters.app import AppState, ChatmanApp, LifecycleError
from bot.core.ports import ChatModel
from bot.core.types import ChatRef, Incoming, UserRef
from bot.infra.storage.registry import SqlRegistry
from tests.conftest import make_settings
from tests.fakes.models import EchoASR, ScriptedLLM, ToneTTS
from tests.test_registry import statuses, trained


def state(app: ChatmanApp) -> AppState:
    """``app.state`` read afresh: mypy keeps an earlier narrowing across the calls that change it."""
    return app.state


def build(tmp_path, llm: ScriptedLLM | None = None) -> ChatmanApp:
    return ChatmanApp.from_settings(make_settings(tmp_path / "data"), asr=EchoASR(),
                                    llm=llm or ScriptedLLM(), tts=ToneTTS())


async def test_an_app_starts_once_and_closes_once(tmp_path):
    app = build(tmp_path)
    assert state(app) is AppState.NEW
    await app.start(load_models=False)
    assert state(app) is AppState.RUNNING
    with pytest.raises(LifecycleError, match="running"):
        await app.start()
    await app.stop()
    await app.stop()  # idempotent
    assert state(app) is AppState.STOPPED
    with pytest.raises(LifecycleError, match="stopped"):
        await app.start()  # a stopped app is not restarted: its runner and tasks are gone
    app.close()
    app.close()
    assert state(app) is AppState.CLOSED


async def test_closing_while_background_work_runs_is_refused(tmp_path):
    app = build(tmp_path)
    await app.start(load_models=False, background=True)
    assert app.runner is not None
    with pytest.raises(LifecycleError, match="stop"):
        app.close()
    # Refused means untouched: the job runner, the notice relay and the registry follower
    # still run.
    assert [t.get_name() for t in app._tasks if not t.done()] == [
        "training-jobs", "training-notices", "model-registry"]
    await app.stop()
    app.close()
    assert state(app) is AppState.CLOSED


async def test_a_running_block_stops_and_closes_even_when_it_raises(tmp_path):
    app = build(tmp_path)
    with pytest.raises(ValueError, match="boom"):
        async with app.running(load_models=False, background=True):
            tasks = list(app._tasks)
            raise ValueError("boom")
    assert state(app) is AppState.CLOSED
    assert tasks and all(t.done() for t in tasks)


async def test_async_with_loads_the_models_and_answers(tmp_path):
    asr, llm = EchoASR("who are you"), ScriptedLLM(answer="I am a stand-in. Nice to meet you.")
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data"), asr=asr, llm=llm,
                                   tts=ToneTTS())
    async with app:
        assert state(app) is AppState.RUNNING and (asr.loads, llm.loads) == (1, 1)
        turn = await app.pipeline.handle(Incoming(ChatRef("cli", "c1"), UserRef("cli", "u", "U"),
                                                  text="Who are you?"))
    assert state(app) is AppState.CLOSED
    assert turn.reply == "I am a stand-in. Nice to meet you."
    assert turn.voice is not None and turn.voice.duration_s > 0.3
    assert turn.exchange_id is not None


async def test_hot_swap_builds_models_through_the_factory_and_survives_a_broken_version(
        tmp_path):
    app = build(tmp_path)
    built: list[tuple[str, str | None]] = []

    def factory(model_ref: str, version: str | None) -> ChatModel:
        built.append((model_ref, version))
        # The second version's export is broken: it cannot be loaded.
        return ScriptedLLM(version or "base", fail_load=version == "manman-v2")

    app.models.factory = factory
    async with app.running(load_models=False):
        registry = SqlRegistry(app.store, app.persona.name)
        folder = tmp_path / "versions"
        v1, v2 = trained(registry, folder), trained(registry, folder)
        registry.activate(v1, "test:ada")
        await app.sync_model()
        assert app.llm.version == v1 and app.served.version == v1

        registry.activate(v2, "test:ada")
        await app.sync_model()
        # v2 failed to load: marked failed, and the version before it answers again.
        assert app.llm.version == v1 and app.served.version == v1
        assert statuses(registry) == {v1: "active", v2: "failed"}
        assert built == [(str(folder / v1), v1), (str(folder / v2), v2)]

        # An admin's command reaches the switcher through request() (thread-safe) too.
        registry.rollback("test:ada")
        await asyncio.to_thread(app.request_model_sync)
        await app.sync_model()
        served = app.served  # read afresh after the swap
        assert served.version is None and app.llm.version == "base"
        assert built[-1] == (app.settings.llm_model, None)
