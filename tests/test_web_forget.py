"""Forget on the web console while the conversation's turn is still being answered (its page
was reloaded: the turn goes on). Fast tier: model stand-ins, SQLite, real HTTP."""

from __future__ import annotations

import asyncio

import httpx

from adapters.app import ChatmanApp
from adapters.web.server import WebAdapter
from bot.core.types import ChatKind, ChatRef
from tests.conftest import make_settings
from tests.fakes import eventually
from tests.fakes.models import EchoASR, ScriptedLLM, ToneTTS, hold_replies

CSRF = {"X-ChatMan": "1"}
CONVERSATION = "forget-me-while-answering"


async def test_forget_waits_for_the_running_turn_and_leaves_nothing(tmp_path, monkeypatch):
    llm = ScriptedLLM(answer="I will be forgotten.")
    held = hold_replies(monkeypatch, llm)
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", web_port=0),
                                   asr=EchoASR(), llm=llm, tts=ToneTTS())
    async with app.running(load_models=False):
        web = WebAdapter(app)
        await web.start()
        try:
            async with httpx.AsyncClient(base_url=web.url, timeout=30) as client:
                turn = asyncio.create_task(client.post(
                    "/api/chat", headers=CSRF,
                    data={"text": "Remember this.", "conversation_id": CONVERSATION}))
                assert await asyncio.to_thread(held.entered.wait, 10)
                forget = asyncio.create_task(client.post(
                    "/api/forget", headers=CSRF, json={"conversation_id": CONVERSATION}))
                # Forget queues behind the turn (two in the conversation's line)...
                chat = ChatRef("web", CONVERSATION, ChatKind.PRIVATE)
                await eventually(lambda: app.queues._pending.get(chat) == 2, 10,
                                 lambda: f"line: {app.queues._pending}")
                assert not forget.done()
                # ...the turn then completes and is stored...
                held.release.set()
                answered, forgot = await turn, await forget
                listed = await client.get(f"/api/conversation/{CONVERSATION}")
        finally:
            await web.stop()
    assert answered.status_code == 200 and forgot.status_code == 200
    # ...and is forgotten with the rest: nothing of it is left, audio included.
    assert listed.json()["turns"] == []
    assert app.store.exchanges() == []
    assert not any(app.reply_audio.folder("web").glob("*.ogg"))
