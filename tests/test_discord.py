"""The real Discord adapter, end to end against the local fake (real HTTP and websocket)."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.app import ChatmanApp
from adapters.discord_bot import DiscordAdapter
from bot.core.errors import Busy
from bot.core.inbox import InboxState
from bot.core.jobs import progress_message
from bot.core.messages import Message
from bot.core.wording import word
from bot.infra.llm.chat_model import GenerationSettings
from bot.infra.storage.models import Chat, Pair
from tests.conftest import make_settings
from tests.fakes.discord_api import (
    BOT_USER,
    EPHEMERAL,
    GUILD_ID,
    OTHER_CHANNEL,
    SHARD1_CHANNEL,
    SHARD1_GUILD_ID,
    TEXT_CHANNEL,
    TOKEN,
    VOICE_FLAG,
    FakeDiscord,
    user,
)
from tests.speech_checks import recall

# A training notice as the runner sends it; its words are the persona's language's.
PROGRESS = Message("notice.progress", {"version": "manman-v1",
                                         "progress": progress_message({"step": 1, "max_steps": 2})})

ALICE = user("1015000000000000301", "Alice")
BOB = user("1015000000000000302", "Bob")
ADMIN = user("1015000000000000303", "Ada")
GUS = user("1015000000000000304", "Gus")  # Administrator of the guild, not a bot admin
DM_CHANNEL = "1015000000000000400"
MENTION = f"<@{BOT_USER['id']}>"


@pytest.fixture
async def fake():
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def _restore_discord_endpoints():
    # The adapter points discord.py's class-level endpoints at the fake; put them back.
    base, gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    yield
    Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


async def started(tmp_path: Path, fake: FakeDiscord, asr: Any, llm: Any, tts: Any, *,
                  before: Callable[[ChatmanApp], None] | None = None,
                  **overrides: Any) -> tuple[ChatmanApp, DiscordAdapter]:
    """An app and its Discord adapter, signed in; ``before`` runs between the two (what the
    database holds when the adapter starts)."""
    settings = make_settings(tmp_path / "data", discord_bot_token=TOKEN,
                             discord_api_base_url=fake.api_base,
                             discord_gateway_url=fake.gateway_url, discord_guild_ids=GUILD_ID,
                             **overrides)
    quick = copy.copy(llm)
    quick.generation = GenerationSettings(max_new_tokens=12, temperature=0.0)
    app = ChatmanApp.from_settings(settings, asr=asr, llm=quick, tts=tts)
    await app.start(load_models=False)
    if before is not None:
        before(app)
    adapter = DiscordAdapter(app)
    await asyncio.wait_for(adapter.start(), 30)
    return app, adapter



async def handled(fake: FakeDiscord, adapter: DiscordAdapter, message: dict[str, Any]) -> None:
    """Until the bot has finished with ``message``: answered, retried, refused or ignored."""
    key = (str(message["channel_id"]), str(message["id"]))
    await fake.wait_for(lambda: key in adapter.handled)

@pytest.fixture
async def running(tmp_path, fake, asr, llm, tts):
    # Ada is a bot admin (CHATMAN_ADMIN_IDS) as well as an Administrator of the guild.
    app, adapter = await started(tmp_path, fake, asr, llm, tts,
                                 admin_ids=f"discord:{ADMIN['id']}")
    yield app, adapter
    await adapter.stop()
    await app.stop()
    app.close()


@pytest.fixture
def bot(running: tuple[ChatmanApp, DiscordAdapter]) -> ChatmanApp:
    return running[0]


@pytest.fixture
def adapter(running: tuple[ChatmanApp, DiscordAdapter]) -> DiscordAdapter:
    """Tests wait on its ``handled``: "processed, nothing more to come"."""
    return running[1]


async def test_a_dm_voice_message_gets_a_native_voice_message_back(fake, bot, speak, asr, codec):
    ogg = speak("What is the capital of Japan?")
    asked = await fake.send_message(DM_CHANNEL, ALICE, guild=False, flags=VOICE_FLAG,
                                    attachments=[fake.voice_attachment(ogg, 2.0)])
    voice = (await fake.wait_for(lambda: [p for p in fake.replies_in(DM_CHANNEL)
                                          if p.flags & VOICE_FLAG]))[0]
    assert voice.reply_to == asked["id"] and voice.content == ""
    (name, ctype, data), = voice.files
    meta = voice.payload["attachments"][0]
    assert ctype == "audio/ogg" and data[:4] == b"OggS"
    assert meta["duration_secs"] > 0.5 and 0 < len(base64.b64decode(meta["waveform"])) <= 256
    text = (await fake.wait_for(lambda: [p for p in fake.replies_in(DM_CHANNEL)
                                         if not p.flags & VOICE_FLAG]))[0]
    heard = asr.transcribe(codec.decode(data))
    assert recall(text.content, heard.text) >= 0.6, (text.content, heard.text)
    assert DM_CHANNEL in fake.typing


async def test_guild_messages_need_a_mention_or_a_reply(fake, adapter):
    await fake.send_message(TEXT_CHANNEL, BOB, "lunch at noon, anyone?")
    asked = await fake.send_message(TEXT_CHANNEL, BOB, f"{MENTION} what is the capital of Japan?",
                                    mentions=[BOT_USER])
    first = (await fake.wait_for(lambda: fake.replies_in(TEXT_CHANNEL)))[0]
    assert first.reply_to == asked["id"] and "Tokyo" in first.content
    follow = await fake.send_message(TEXT_CHANNEL, ALICE, "And what is it famous for?",
                                     reply_to=first.message)
    await fake.wait_for(lambda: len(fake.replies_in(TEXT_CHANNEL)) == 2)
    await handled(fake, adapter, await fake.send_message(TEXT_CHANNEL, BOB, "thanks"))
    assert [p.reply_to for p in fake.replies_in(TEXT_CHANNEL)] == [asked["id"], follow["id"]]


async def test_a_refused_voice_message_falls_back_to_an_attachment(fake, bot, speak):
    fake.refuse_voice_messages = True
    asked = await fake.send_message(DM_CHANNEL, ALICE, guild=False, flags=VOICE_FLAG,
                                    attachments=[fake.voice_attachment(speak("Hello."), 1.0)])
    await fake.wait_for(lambda: len(fake.replies_in(DM_CHANNEL)) == 2)
    audio, text = fake.replies_in(DM_CHANNEL)
    assert not audio.flags & VOICE_FLAG and audio.reply_to == asked["id"]
    assert audio.files[0][0] == "reply.ogg" and audio.files[0][2][:4] == b"OggS"
    assert text.content


async def test_slash_commands_check_admins_and_approve_stores_the_pair(fake, bot):
    scoped = fake.commands[GUILD_ID]
    names = {c["name"] for c in scoped}
    assert {"retrain", "canceltrain", "approve", "forget", "Approve answer"} <= names
    retrain = next(c for c in scoped if c["name"] == "retrain")
    assert retrain["default_member_permissions"] == "8"
    cancel = next(c for c in scoped if c["name"] == "canceltrain")
    assert cancel["default_member_permissions"] == "8"
    assert [(o["name"], o.get("required", False)) for o in cancel["options"]] == [
        ("job_id", False)]

    refused = await fake.slash("retrain", BOB)
    reply = (await fake.wait_for(lambda: fake.interaction_replies(refused)))[0]
    assert reply.content == "Only admins can do that." and reply.flags & EPHEMERAL
    assert bot.jobs.open_jobs() == []

    asked = await fake.send_message(TEXT_CHANNEL, ALICE, f"{MENTION} Who are you?",
                                    mentions=[BOT_USER])
    answer = (await fake.wait_for(lambda: fake.replies_in(TEXT_CHANNEL)))[0]
    assert answer.reply_to == asked["id"]
    await fake.wait_for(lambda: [e for e in bot.store.exchanges() if e.reply_message_id])
    approved = await fake.slash("Approve answer", ADMIN, admin=True, command_type=3,
                                target=answer.message)
    done = await fake.wait_for(lambda: [p for p in fake.interaction_replies(approved)
                                        if p.kind == "followup"])
    assert done[0].content.startswith("Approved #1: Who are you?")
    with bot.store.session() as s:
        pair = s.query(Pair).one()
    assert pair.status == "approved" and pair.decided_by == f"discord:{ADMIN['id']}"


async def test_a_guild_administrator_is_no_bot_admin(fake, bot):
    """Issue 12, item 6: any guild's Administrator could run the persona everybody shares."""
    bot.curation.add("What is ChatMan?", "A voice bot.", "test")
    asked = []
    for name, options in (("pending", None), ("retrain", None), ("rollback", None),
                          ("approve", [{"name": "pair_id", "type": 4, "value": 1}]),
                          ("dataset", None), ("activate", [{"name": "version", "type": 3,
                                                            "value": "manman-v1"}])):
        asked.append(await fake.slash(name, GUS, admin=True, options=options))
    for interaction in asked:
        reply = (await fake.wait_for(lambda i=interaction: fake.interaction_replies(i)))[0]
        assert reply.content == "Only admins can do that." and reply.flags & EPHEMERAL
    assert bot.jobs.open_jobs() == []
    # Their own channel's setting is theirs to change.
    switched = await fake.slash("answerall", GUS, admin=True,
                                options=[{"name": "on", "type": 5, "value": True}])
    done = await fake.wait_for(lambda: [p for p in fake.interaction_replies(switched)
                                        if p.kind == "followup"])
    assert "every voice note" in done[0].content
    refused = await fake.slash("answerall", BOB, options=[{"name": "on", "type": 5,
                                                           "value": False}])
    no = (await fake.wait_for(lambda: fake.interaction_replies(refused)))[0]
    assert no.content == "Only admins can do that."
    from bot.core.types import ChatKind, ChatRef

    assert bot.store.answers_every_voice(ChatRef("discord", TEXT_CHANNEL, ChatKind.GROUP))


async def test_typed_options_reach_the_service_unparsed(fake, bot):
    bot.curation.add("How do I find foo?", "No idea.", "test")
    fixed = await fake.slash("correct", ADMIN, admin=True, options=[
        {"name": "pair_id", "type": 4, "value": 1},
        {"name": "answer", "type": 3, "value": "Run ls | grep foo."}])
    done = await fake.wait_for(lambda: [p for p in fake.interaction_replies(fixed)
                                        if p.kind == "followup"])
    assert done[0].content.startswith("Corrected and approved #1")
    added = await fake.slash("add", ADMIN, admin=True, options=[
        {"name": "question", "type": 3, "value": "How do I list foo files?"},
        {"name": "answer", "type": 3, "value": "ls | grep foo"}])
    done = await fake.wait_for(lambda: [p for p in fake.interaction_replies(added)
                                        if p.kind == "followup"])
    assert done[0].content.startswith("Added #2")
    with bot.store.session() as s:
        corrected, new = s.get(Pair, 1), s.get(Pair, 2)
        assert (corrected.question, corrected.answer) == ("How do I find foo?",
                                                          "Run ls | grep foo.")
        assert (new.question, new.answer, new.status) == ("How do I list foo files?",
                                                          "ls | grep foo", "approved")


async def test_a_429_then_success_delivers_exactly_one_reply(fake, adapter):
    fake.fail_next[f"POST channels/{OTHER_CHANNEL}/messages"] = [(429, {"retry_after": 0.5}),
                                                                 (500, None)]
    asked = await fake.send_message(OTHER_CHANNEL, ALICE, f"{MENTION} capital of Japan?",
                                    mentions=[BOT_USER])
    await handled(fake, adapter, asked)
    sent = fake.replies_in(OTHER_CHANNEL)
    assert len(sent) == 1 and sent[0].reply_to == asked["id"]
    assert fake.calls.count(f"POST channels/{OTHER_CHANNEL}/messages") == 3


async def test_a_gateway_drop_mid_conversation_resumes(fake, bot):
    await fake.send_message(DM_CHANNEL, ALICE, "What is the capital of Japan?", guild=False)
    await fake.wait_for(lambda: fake.replies_in(DM_CHANNEL))
    await fake.drop_connection()
    # Sent while the bot is reconnecting: RESUME replays it.
    later = await fake.send_message(DM_CHANNEL, ALICE, "And of France?", guild=False)
    await fake.wait_for(lambda: len(fake.replies_in(DM_CHANNEL)) == 2, timeout=60)
    assert fake.resumes == 1 and fake.identifies == 1
    assert fake.replies_in(DM_CHANNEL)[1].reply_to == later["id"]


async def test_listed_admins_may_use_admin_commands_without_the_guild_permission(
        tmp_path, fake, asr, llm, tts):
    app, adapter = await started(tmp_path, fake, asr, llm, tts,
                                 admin_ids=f"discord:{BOB['id']}")
    try:
        queued = await fake.slash("retrain", BOB, options=[{"name": "max_steps", "type": 4,
                                                            "value": 5}])
        done = await fake.wait_for(lambda: [p for p in fake.interaction_replies(queued)
                                            if p.kind == "followup"])
        refused = await fake.slash("trainstatus", ALICE)
        no = (await fake.wait_for(lambda: fake.interaction_replies(refused)))[0]
        job = app.jobs.open_jobs()[0]
        not_yours = await fake.slash("canceltrain", ALICE)
        no_cancel = (await fake.wait_for(lambda: fake.interaction_replies(not_yours)))[0]
        assert no_cancel.content == "Only admins can do that."
        assert app.jobs.open_jobs() == [job]
        cancel = await fake.slash("canceltrain", BOB, options=[{"name": "job_id", "type": 4,
                                                                "value": job.id}])
        cancelled = await fake.wait_for(lambda: [p for p in fake.interaction_replies(cancel)
                                                 if p.kind == "followup"])
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    assert done[0].content.startswith("Queued training job #1") and done[0].flags & EPHEMERAL
    assert job.max_steps == 5 and job.notify is not None and job.notify.chat_id == TEXT_CHANNEL
    assert no.content == "Only admins can do that."
    assert cancelled[0].content.startswith("Training job #1 cancelled; ")
    stopped = app.jobs.get(job.id)
    assert stopped is not None and stopped.error == f"cancelled by discord:{BOB['id']}"


async def test_training_notices_reach_the_channel(fake, bot, tmp_path):
    from bot.core.jobs import Notice
    from bot.core.types import ChatRef

    png = tmp_path / "loss.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    await bot.notify(ChatRef("discord", TEXT_CHANNEL), Notice(1, PROGRESS,
                                                             image=png, final=True))
    text, image = fake.replies_in(TEXT_CHANNEL)
    assert text.content == "Training manman-v1: step 1/2 (50%)"
    assert image.files[0][0] == "loss.png" and image.files[0][2] == png.read_bytes()


# --- the durable inbox and sharding (issue 16) ----------------------------------------------

def inbox_payload(message_id: str, channel_id: str, author: dict[str, Any], content: str, *,
                  guild_id: str | None = None, channel_name: str | None = None,
                  mentions: tuple[str, ...] = ()) -> dict[str, Any]:
    """A message as a replica's gateway stores it in the inbox (adapters/discord_ingress.py)."""
    return {"v": 1, "id": message_id, "channel_id": channel_id, "guild_id": guild_id,
            "channel_name": channel_name,
            "author": {"id": author["id"], "name": author["global_name"], "bot": False},
            "content": content, "attachments": [], "mentions": list(mentions),
            "reference": None, "flags": 0}


def put(app: ChatmanApp, payload: dict[str, Any], limit: int | None = None) -> None:
    assert app.inbox.put("discord", payload["id"], f"discord:{payload['channel_id']}", payload,
                         limit)


async def test_a_message_delivered_twice_is_answered_once(fake, adapter):
    asked = await fake.send_message(DM_CHANNEL, ALICE, "What is the capital of Japan?",
                                    guild=False)
    await fake.wait_for(lambda: fake.replies_in(DM_CHANNEL))
    # The gateway sends it again (as a RESUME may replay what was already received).
    await fake.dispatch("MESSAGE_CREATE", asked)
    key = (DM_CHANNEL, asked["id"])
    await fake.wait_for(lambda: list(adapter.handled).count(key) == 2)
    assert [p.reply_to for p in fake.replies_in(DM_CHANNEL)] == [asked["id"]]


async def test_a_message_another_replica_received_is_answered_here(tmp_path, fake, asr, llm,
                                                                    tts):
    """A replica running another shard (or this one before a restart) stored it: this one has
    never seen the guild or the channel, and answers it from the inbox alone."""
    question = inbox_payload(fake.snowflake(), SHARD1_CHANNEL, ALICE,
                             f"{MENTION} what is the capital of Japan?", guild_id=SHARD1_GUILD_ID,
                             channel_name="shard-one", mentions=(BOT_USER["id"],))
    app, adapter = await started(tmp_path, fake, asr, llm, tts,
                                 before=lambda app: put(app, question))
    try:
        reply = (await fake.wait_for(lambda: fake.replies_in(SHARD1_CHANNEL)))[0]
        await fake.wait_for(lambda: app.inbox.state_of("discord", question["id"])
                            is InboxState.DONE)
        exchange, = app.store.exchanges()
        with app.store.session() as s:
            chat = s.query(Chat).one()
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    assert adapter.client.get_channel(int(SHARD1_CHANNEL)) is None  # never in its cache
    assert reply.reply_to == question["id"] and "Tokyo" in reply.content
    assert SHARD1_CHANNEL in fake.typing
    assert exchange.incoming_message_id == question["id"]
    assert exchange.reply_message_id == reply.message["id"]
    assert (chat.platform_chat_id, chat.kind, chat.title) == (SHARD1_CHANNEL, "group",
                                                              "shard-one")


async def test_answering_again_after_a_crash_does_not_send_the_voice_twice(tmp_path, fake, asr,
                                                                          llm, tts):
    """A replica sent the voice message, then died before storing the turn: the replica that
    answers the message again sends only what the user does not have yet."""
    question = inbox_payload(fake.snowflake(), DM_CHANNEL, ALICE, "What is the capital of Japan?")

    def crashed_after_the_voice(app: ChatmanApp) -> None:
        put(app, question)
        item = app.inbox.claim("dead-replica", 0.0, ["discord"])  # its lease ran out at once
        assert item is not None
        app.inbox.record_sent(item.id, "voice", "1015000000000999999")

    app, adapter = await started(tmp_path, fake, asr, llm, tts, discord_text_voice=True,
                                 before=crashed_after_the_voice)
    try:
        text = (await fake.wait_for(lambda: fake.replies_in(DM_CHANNEL)))[0]
        await fake.wait_for(lambda: app.inbox.state_of("discord", question["id"])
                            is InboxState.DONE)
        await handled(fake, adapter, question)
        exchange, = app.store.exchanges()
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    assert fake.replies_in(DM_CHANNEL) == [text]
    assert not text.flags & VOICE_FLAG and not text.files and text.content
    assert exchange.reply_message_id == text.message["id"]


async def test_a_message_arriving_at_a_full_channel_line_is_told_busy(tmp_path, fake, asr, llm,
                                                                      tts):
    first = inbox_payload(fake.snowflake(), DM_CHANNEL, ALICE, "What is the capital of Japan?")

    def another_replica_is_answering(app: ChatmanApp) -> None:
        put(app, first, limit=1)
        assert app.inbox.claim("other-replica", 120.0, ["discord"]) is not None

    app, adapter = await started(tmp_path, fake, asr, llm, tts, chat_queue_limit=1,
                                 before=another_replica_is_answering)
    try:
        asked = await fake.send_message(DM_CHANNEL, ALICE, "And of France?", guild=False)
        busy = (await fake.wait_for(lambda: fake.replies_in(DM_CHANNEL)))[0]
        await handled(fake, adapter, asked)
        language = app.language
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    assert busy.reply_to == asked["id"]
    assert busy.content == word(Busy("chat line full").message, language)
    assert fake.replies_in(DM_CHANNEL) == [busy]  # the first is the other replica's


@asynccontextmanager
async def replica(tmp_path: Path, fake: FakeDiscord, asr: Any, llm: Any, tts: Any,
                  **overrides: Any) -> AsyncIterator[tuple[ChatmanApp, DiscordAdapter]]:
    app, adapter = await started(tmp_path, fake, asr, llm, tts, **overrides)
    try:
        yield app, adapter
    finally:
        await adapter.stop()
        await app.stop()
        app.close()


async def test_two_replicas_run_one_shard_each(tmp_path, asr, llm, tts):
    fake = FakeDiscord(second_guild=True)
    await fake.start()
    try:
        async with replica(tmp_path / "a", fake, asr, llm, tts, discord_shard_count=2,
                           discord_shard_ids="0") as (app0, shard0), \
                replica(tmp_path / "b", fake, asr, llm, tts, discord_shard_count=2,
                        discord_shard_ids="1") as (app1, shard1):
            assert sorted(fake.identified_shards, key=str) == [[0, 2], [1, 2]]
            assert "gateway/bot" not in " ".join(fake.calls)  # the count is set
            # Each replica has its own database here: only its shard's gateway reaches it.
            here = await fake.send_message(TEXT_CHANNEL, BOB, f"{MENTION} capital of Japan?",
                                           mentions=[BOT_USER])
            await fake.wait_for(lambda: fake.replies_in(TEXT_CHANNEL))
            there = await fake.send_message(SHARD1_CHANNEL, BOB, f"{MENTION} capital of Japan?",
                                            mentions=[BOT_USER])
            await fake.wait_for(lambda: fake.replies_in(SHARD1_CHANNEL))
            dm = await fake.send_message(DM_CHANNEL, ALICE, "Hello!", guild=False)
            await fake.wait_for(lambda: fake.replies_in(DM_CHANNEL))
            # Stored once sent: wait for the turns, then for anything more to come of them.
            await fake.wait_for(lambda: len(app0.store.exchanges()) == 2)
            await fake.wait_for(lambda: app1.store.exchanges())
            for adapter, message in ((shard0, here), (shard1, there), (shard0, dm)):
                await handled(fake, adapter, message)
            answered0 = [e.incoming_message_id for e in app0.store.exchanges()]
            answered1 = [e.incoming_message_id for e in app1.store.exchanges()]
            assert shard1.client.get_channel(int(TEXT_CHANNEL)) is None
            assert shard0.client.get_channel(int(SHARD1_CHANNEL)) is None
    finally:
        await fake.stop()
    assert answered0 == [here["id"], dm["id"]]  # DMs come to shard 0
    assert answered1 == [there["id"]]


async def test_without_a_shard_count_discord_recommends_one(tmp_path, asr, llm, tts,
                                                           monkeypatch):
    async def at_once(self: Any, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py waits 5 s between IDENTIFYs, as Discord asks; the fake does not."""

    monkeypatch.setattr(discord.Client, "before_identify_hook", at_once)
    fake = FakeDiscord(recommended_shards=2, second_guild=True)
    await fake.start()
    try:
        async with replica(tmp_path, fake, asr, llm, tts) as (_app, adapter):
            shards = sorted(adapter.client.shards)
            guilds = sorted(g.id for g in adapter.client.guilds)
    finally:
        await fake.stop()
    assert "GET gateway/bot" in fake.calls
    assert sorted(fake.identified_shards, key=str) == [[0, 2], [1, 2]] and shards == [0, 1]
    assert guilds == sorted([int(GUILD_ID), int(SHARD1_GUILD_ID)])
