"""A Chinese persona's admins read Chinese, on every front end; front ends with typed input
(Discord options, the web console's JSON) build requests without any text round trip.

No models: the application is built but never started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.app import ChatmanApp
from adapters.telegram import render_result
from bot.core.commands import Actor, Approve, Correct, Pending, ReplyTarget
from bot.core.errors import UserFacingError
from bot.core.types import ChatKind, ChatRef, Turn, UserRef
from bot.core.wording import word
from tests.conftest import make_settings

TOKEN = "test-admin-token-123"
ADMIN_HEADERS = {"X-ChatMan": "1", "Authorization": f"Bearer {TOKEN}"}
TG_ADMIN = Actor("telegram", "1", "Ada")
STRANGER = Actor("telegram", "2", "Mallory")


@pytest.fixture
def zh_app(tmp_path):
    application = ChatmanApp.from_settings(make_settings(
        tmp_path / "d", language="zh", admin_ids="telegram:1, discord:7",
        discord_bot_token="not-a-token"))
    application.migrate()
    yield application
    application.close()


class Recorder:
    """Wraps ``admin.run``: the requests front ends hand over; text must never be parsed."""

    def __init__(self, app: ChatmanApp, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[object] = []
        real = app.admin.run

        def run(actor, request, origin=None):
            self.requests.append(request)
            return real(actor, request, origin)

        def no_text(*args, **kwargs):
            raise AssertionError("a typed front end went through command text")

        monkeypatch.setattr(app.admin, "run", run)
        monkeypatch.setattr(app.admin, "execute", no_text)


def said(app: ChatmanApp, actor: Actor, text: str, **kwargs) -> str:
    """What the Telegram adapter answers ``text`` with (the text route, rendered)."""
    try:
        return render_result(app.admin.execute(actor, text, **kwargs), app.language)
    except UserFacingError as err:
        return word(err.message, app.language)


def test_a_chinese_personas_admin_gets_chinese_on_the_text_route(zh_app):
    assert zh_app.language == "zh"
    assert said(zh_app, TG_ADMIN, "/add 你最喜欢吃什么？ | 饺子。") == "已添加 #1：你最喜欢吃什么？ → 饺子。"
    assert said(zh_app, TG_ADMIN, "/approve 1") == "问答对 #1 本来就是「已通过」，没有改动。"
    assert said(zh_app, TG_ADMIN, "/pending") == "没有等待审核的内容。"
    assert said(zh_app, TG_ADMIN, "/approve 99") == "没有编号为 #99 的问答对。"
    assert said(zh_app, TG_ADMIN, "/launch").startswith("没有 /launch 这个命令。可用的命令：/approve")
    assert said(zh_app, TG_ADMIN, "/pending x") == "用法：/pending [页码]"
    assert said(zh_app, STRANGER, "/approve 1") == "只有管理员才能这么做。"
    # Permission comes before the arguments, as before: a stranger learns no usage.
    assert said(zh_app, STRANGER, "/pending x") == "只有管理员才能这么做。"
    assert said(zh_app, TG_ADMIN, "/answerall on").startswith("请在要生效的群组或频道里发 /answerall")
    group = ChatRef("telegram", "-100", ChatKind.GROUP, "Friends")
    assert said(zh_app, TG_ADMIN, "/answerall on", origin=group) == "好的，这里的每条语音我都会回复。"
    assert said(zh_app, TG_ADMIN, "/models").startswith("还没有训练好的版本")
    assert said(zh_app, STRANGER, "/forget").startswith("好了：我删除了你的 0 条消息")
    # The English of every result stays available (logs, older callers).
    assert zh_app.admin.execute(TG_ADMIN, "/pending").message == "Nothing is waiting for review."


def test_a_chinese_personas_web_console_gets_chinese_json_with_codes(zh_app, monkeypatch):
    from adapters.web.server import create_api

    recorded = Recorder(zh_app, monkeypatch)
    zh_app.curation.add("你是谁？", "我是慢慢。", "test")  # pair #1, approved
    with TestClient(create_api(zh_app, TOKEN)) as web:
        fixed = web.post("/api/admin/pairs/1/correct", headers=ADMIN_HEADERS,
                         json={"answer": "运行 ls | grep foo", "question": "怎么找文件？"})
        assert fixed.status_code == 200, fixed.text
        body = fixed.json()
        assert set(body) >= {"command", "message", "pairs", "data", "code", "params"}
        assert body["command"] == "correct" and body["code"] == "pair.corrected"
        assert body["message"] == "已修改并通过 #1：怎么找文件？ → 运行 ls | grep foo"
        assert body["params"]["id"] == 1 and body["pairs"][0]["answer"] == "运行 ls | grep foo"
        assert body["data"]["changed"] is True

        missing = web.post("/api/admin/pairs/99/approve", headers=ADMIN_HEADERS)
        assert missing.status_code == 400
        assert missing.json() == {"error": "没有编号为 #99 的问答对。", "code": "pair.missing",
                                  "params": {"id": 99}}
        pending = web.get("/api/admin/pending", params={"page": 2}, headers=ADMIN_HEADERS).json()
        assert pending["message"] == "没有等待审核的内容。" and pending["data"]["page"] == 2
        empty = web.post("/api/chat", headers={"X-ChatMan": "1"}, data={"text": "  "})
        assert empty.status_code == 400 and empty.json()["code"] == "input.empty"
        assert empty.json()["error"] == "这条消息是空的——发条语音或文字给我吧。"
    # The JSON fields became the request as they were: the bar stayed in the answer.
    assert recorded.requests == [Correct("运行 ls | grep foo", 1, "怎么找文件？"), Approve(99),
                                 Pending(2)]


class FakeInteraction:
    """What a slash command's callback reads from discord.py's Interaction."""

    def __init__(self, user_id: str, *, admin: bool = False) -> None:
        self.user = SimpleNamespace(id=int(user_id), display_name="Ada")
        self.permissions = SimpleNamespace(administrator=admin, manage_guild=False,
                                           manage_channels=False)
        self.guild_id = 1
        self.channel = None
        self.sent: list[dict[str, Any]] = []
        self.response = SimpleNamespace(send_message=self._send, defer=self._defer)
        self.followup = SimpleNamespace(send=self._send)

    async def _send(self, content: str | None = None, **kwargs: Any) -> None:
        self.sent.append({"content": content, **kwargs})

    async def _defer(self, **kwargs: Any) -> None:
        pass


async def test_discord_options_become_typed_requests_and_replies_are_chinese(zh_app, monkeypatch):
    import discord
    from discord import app_commands

    from adapters.discord_bot import DiscordAdapter

    recorded = Recorder(zh_app, monkeypatch)
    adapter = DiscordAdapter(zh_app)
    zh_app.curation.add("你是谁？", "我是慢慢。", "test")  # pair #1

    async def slash(name: str, interaction: FakeInteraction, **options: Any
                    ) -> list[dict[str, Any]]:
        command = adapter.tree.get_command(name)
        assert isinstance(command, app_commands.Command)
        # Called as discord.py would, with the fake in place of its Interaction.
        callback: Callable[..., Awaitable[None]] = command.callback
        await callback(interaction, **options)
        return interaction.sent

    fixed = await slash("correct", FakeInteraction("7"), pair_id=1, answer="运行 ls | grep foo")
    assert fixed == [{"content": "已修改并通过 #1：你是谁？ → 运行 ls | grep foo", "ephemeral": True}]
    missing = await slash("approve", FakeInteraction("7"), pair_id=99)
    assert missing[0]["content"] == "没有编号为 #99 的问答对。" and missing[0]["ephemeral"]
    refused = await slash("pending", FakeInteraction("8", admin=True))
    assert refused == [{"content": "只有管理员才能这么做。", "ephemeral": True}]

    # Lists are embeds: /pending shows each pair waiting as a field.
    channel = ChatRef("discord", "444", ChatKind.GROUP, "general")
    turn = Turn(transcript="你好吗？", language="zh", reply="很好。", voice=None,
                audio_duration_s=None, model_version="v1", persona="manman", context=[])
    zh_app.store.record_turn(channel, UserRef("discord", "9", "Carol"), "m1", turn, "voice",
                             "555")
    listed = await slash("pending", FakeInteraction("7"), page=1)
    embed = listed[0]["embed"]
    assert listed[0]["ephemeral"] and embed.title == "待审核的问答对：1 条（第 1/1 页，最早的在前）"
    assert [(f.name, f.value) for f in embed.fields] == [("#2 — Carol", "问：你好吗？\n答：很好。")]
    assert embed.footer.text == "回复 /approve 编号、/correct 编号 <回答> 或 /reject 编号。"
    # The context menu on an answer: the message it was used on names the pair.
    menu = adapter.tree.get_command("Approve answer", type=discord.AppCommandType.message)
    assert menu is not None
    approved = FakeInteraction("7")
    on_message: Callable[..., Awaitable[None]] = menu.callback
    await on_message(approved, SimpleNamespace(id=555, channel=SimpleNamespace(id=444)))
    assert approved.sent[0]["content"] == "已通过 #2：你好吗？ → 很好。"
    assert recorded.requests == [
        Correct("运行 ls | grep foo", 1, None), Approve(99), Pending(1),
        Approve(None, ReplyTarget("discord", "444", "555"))]
