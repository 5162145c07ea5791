"""Switching the answering model while people talk to the bot."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import threading

from adapters.app import ChatmanApp
from bot.core.registry import ModelStatus
from bot.core.types import ChatKind, ChatRef, Incoming, UserRef
from bot.infra.storage.models import Exchange
from bot.services.admin import Actor
from tests.conftest import make_settings
from tests.fakes import eventually

STARTER = "SmolLM2-135M-Instruct.Q4_1"
ADMIN = Actor("test", "1", "Ada", granted_admin=True)


def register(app: ChatmanApp, model_dir) -> str:
    """A version that passed the gate, pointing at ``model_dir``."""
    v = app.registry.create_candidate(base_model="starter", config={}, job_id=None,
                                      created_by="test").version
    app.registry.record_result(v, base_version=STARTER, directory=model_dir, model_dir=model_dir,
                               dataset_sha256="0" * 64, dataset_rows=4, steps=10,
                               metrics={"persona_score": 1.0, "retention": 1.0, "leakage": 0.0},
                               reasons=[])
    return v


def incoming(chat: int, n: int) -> Incoming:
    return Incoming(ChatRef("test", f"chat-{chat}", ChatKind.PRIVATE),
                    UserRef("test", str(chat), f"User {chat}"), text=f"Say hello #{n}.",
                    message_id=f"{chat}-{n}", want_voice=False)


async def test_hot_swap_under_concurrent_requests_drops_none(tmp_path, llm, tiny_qwen2_dir):
    starter = copy.copy(llm)
    generating = threading.Event()  # set once a turn is inside the starter's stream()

    def stream(prompt, max_new_tokens=None):
        generating.set()
        return llm.stream(prompt, max_new_tokens)

    starter.stream = stream
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data"), llm=starter)
    await app.start(load_models=False)
    version = register(app, tiny_qwen2_dir)
    try:
        first = [asyncio.create_task(app.pipeline.handle(incoming(c, 1))) for c in range(4)]
        assert await asyncio.to_thread(generating.wait, 120)  # they are on the starter now
        app.registry.activate(version, "test:ada")
        await app.sync_model()
        assert app.llm.version == version and app.served.version == version
        later = [asyncio.create_task(app.pipeline.handle(incoming(c, 2))) for c in range(4)]
        turns = await asyncio.gather(*first, *later)
    finally:
        app.close()

    assert len(turns) == 8 and all(t.exchange_id for t in turns)
    # Turns that began before the swap finished on the model they began with...
    assert [t.model_version for t in turns[:4]].count(STARTER) >= 1
    assert all(t.reply for t in turns[:4] if t.model_version == STARTER)
    # ...and every turn that arrived after it was answered by the new, fully loaded model.
    assert {t.model_version for t in turns[4:]} == {version}
    with app.store.session() as s:
        stored = sorted(s.query(Exchange.model_version).all())
    assert len(stored) == 8 and {v for (v,) in stored} <= {STARTER, version}


async def test_an_unloadable_version_is_failed_and_the_old_model_keeps_answering(
        tmp_path, llm, tiny_qwen2_dir):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data"), llm=llm)
    await app.start(load_models=False)
    good = register(app, tiny_qwen2_dir)
    app.registry.activate(good, "test:ada")
    await app.sync_model()
    broken_dir = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_dir, broken_dir)
    for weights in broken_dir.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    broken = register(app, broken_dir)
    result = app.admin.execute(ADMIN, f"/activate {broken}")
    assert result.message == f"{broken} is now active (was {good}); switching between requests."
    try:
        await app.sync_model()
        turn = await app.pipeline.handle(incoming(1, 1))
    finally:
        app.close()
    assert turn.model_version == good and app.llm.version == good
    failed = app.registry.get(broken)
    assert failed is not None
    assert failed.status == ModelStatus.FAILED and "could not be loaded" in failed.reasons[-1]
    answering = app.registry.active()
    assert answering is not None and answering.version == good


async def test_the_bot_follows_versions_activated_elsewhere_and_rollback(
        tmp_path, llm, tiny_qwen2_dir):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", registry_poll_seconds=0.1),
                                   llm=llm)
    await app.start(load_models=False, background=True)
    try:
        version = register(app, tiny_qwen2_dir)
        # As `chatman models activate` in another process would: only the database changes.
        app.registry.activate(version, "cli:ops")
        await eventually(lambda: app.llm.version == version, 10,
                         lambda: f"still answering with {app.llm.version}")
        status = app.admin.execute(ADMIN, "/trainstatus")
        assert status.message.startswith(f"Answering: {version} — persona 1.00, retention 1.00")
        rolled = app.admin.execute(ADMIN, "/rollback")
        assert rolled.message == (f"Rolled back from {version} to the base model; switching "
                                  "between requests.")
        await eventually(lambda: app.llm.version == STARTER, 10,
                         lambda: f"still answering with {app.llm.version}")
        assert app.served.version is None
        info = app.admin.execute(ADMIN, "/persona").data
        assert info["model_version"] == STARTER
        assert json.dumps(app.admin.execute(ADMIN, "/models").data)  # serialisable
    finally:
        await app.stop()
        app.close()
