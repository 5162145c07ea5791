"""The real Telegram adapter, end to end against the local fake Bot API server (real HTTP)."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import sys
from typing import Any

import aiohttp
import httpx
import pytest
from telegram.error import NetworkError, TelegramError, TimedOut

from adapters.app import ChatmanApp
from adapters.telegram import TelegramAdapter, resend_is_safe
from bot.core.inbox import InboxState
from bot.core.jobs import (
    Notice,
    progress_message,
)
from bot.core.messages import Message
from bot.core.types import ChatKind, ChatRef
from bot.infra.llm.chat_model import GenerationSettings
from bot.infra.storage.models import Pair
from tests.conftest import MODEL_CACHE, make_settings
from tests.fakes import free_port
from tests.fakes.telegram_api import (
    BOT,
    CHANNEL_BOT,
    GROUP_ANONYMOUS_BOT,
    TOKEN,
    FakeTelegram,
    channel,
    group_chat,
    private_chat,
    user,
)
from tests.speech_checks import recall
from tests.test_cli import chatman

# A training notice as the runner sends it; its words are the persona's language's.
PROGRESS = Message("notice.progress", {"version": "manman-v1",
                                         "progress": progress_message({"step": 1, "max_steps": 2})})

ADMIN = user(900, "Ada")
ALICE = user(901, "Alice")
BOB = user(902, "Bob")
GROUP = group_chat(-1001234567890)
MENTION = f"@{BOT['username']}"


@pytest.fixture
async def fake():
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


def tg_settings(tmp_path, fake: FakeTelegram, **overrides):
    return make_settings(
        tmp_path / "data", telegram_bot_token=TOKEN, telegram_api_base_url=fake.base_url,
        telegram_file_base_url=fake.base_file_url, admin_ids="telegram:900", **overrides)


async def started(settings, asr, llm, tts, **adapter_options) -> tuple[ChatmanApp, TelegramAdapter]:
    # The session's starter, with short answers: these tests are about Telegram, not prose.
    quick = copy.copy(llm)
    quick.generation = GenerationSettings(max_new_tokens=12, temperature=0.0)
    app = ChatmanApp.from_settings(settings, asr=asr, llm=quick, tts=tts)
    await app.start(load_models=False)
    adapter = TelegramAdapter(app, **adapter_options)
    await adapter.start()
    return app, adapter


@pytest.fixture
async def running(tmp_path, fake, asr, llm, tts):
    app, adapter = await started(tg_settings(tmp_path, fake), asr, llm, tts)
    yield app, adapter
    await adapter.stop()
    await app.stop()
    app.close()


@pytest.fixture
def bot(running: tuple[ChatmanApp, TelegramAdapter]) -> ChatmanApp:
    return running[0]


@pytest.fixture
def adapter(running: tuple[ChatmanApp, TelegramAdapter]) -> TelegramAdapter:
    """Tests wait on its ``handled``: "processed, nothing more to come"."""
    return running[1]


async def handled(fake: FakeTelegram, adapter: TelegramAdapter, message: dict[str, Any]
                  ) -> None:
    """Until the bot has finished with ``message``: answered, retried, refused or ignored."""
    key = (str(message["chat"]["id"]), str(message["message_id"]))
    await fake.wait_for(lambda: key in adapter.handled)


def replies(fake: FakeTelegram, chat_id: int, method: str = "sendMessage"):
    return fake.sent_to(chat_id, method)


async def test_a_private_voice_note_gets_a_voice_note_back(fake, bot, speak, asr, codec):
    ogg = speak("What is the capital of Japan?")
    asked = await fake.send_voice(private_chat(ALICE), ALICE, ogg, duration=2)
    sent = (await fake.wait_for(lambda: replies(fake, ALICE["id"], "sendVoice")))[0]

    assert sent.reply_to == asked["message_id"]
    assert sent.file[:4] == b"OggS" and b"OpusHead" in sent.file[:200]
    assert int(sent.params["duration"]) >= 1
    caption = sent.params["caption"]
    heard = asr.transcribe(codec.decode(sent.file))
    assert recall(caption, heard.text) >= 0.6, (caption, heard.text)
    actions = [s.params["action"] for s in replies(fake, ALICE["id"], "sendChatAction")]
    assert actions[0] == "record_voice" and "upload_voice" in actions
    # The stored exchange learns which Telegram message carried the answer (just after sending).
    exchange = await fake.wait_for(lambda: [e for e in bot.store.exchanges()
                                            if e.reply_message_id])
    assert exchange[0].transcript.lower().startswith("what is the capital of japan")
    assert exchange[0].reply_message_id == str(sent.message["message_id"])


async def test_groups_answer_mentions_and_replies_only(fake, bot, adapter):
    await fake.send_text(GROUP, BOB, "hello everyone, lunch at noon?")
    mention = await fake.send_text(GROUP, BOB, f"{MENTION} what is the capital of Japan?")
    first = (await fake.wait_for(lambda: replies(fake, GROUP["id"])))[0]
    assert first.reply_to == mention["message_id"] and "Tokyo" in first.text
    follow = await fake.send_text(GROUP, ALICE, "And what is it famous for?",
                                  reply_to_message=first.message)
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 2)
    await handled(fake, adapter, await fake.send_text(GROUP, BOB, "thanks!"))
    answered = replies(fake, GROUP["id"])
    assert [s.reply_to for s in answered] == [mention["message_id"], follow["message_id"]]
    # One shared memory, with each speaker's name in it, and the mention removed.
    history = bot.store.recent_history(ChatRef("telegram", str(GROUP["id"]), ChatKind.GROUP), 10)
    assert [(m.speaker, m.content) for m in history if m.role.value == "user"] == [
        ("Bob", "what is the capital of Japan?"), ("Alice", "And what is it famous for?")]


async def test_an_admin_can_make_the_bot_answer_every_voice_note_in_a_group(fake, bot, speak):
    refused = await fake.send_text(GROUP, BOB, "/answerall on")
    await fake.wait_for(lambda: replies(fake, GROUP["id"]))
    assert replies(fake, GROUP["id"])[0].text == "Only admins can do that."
    assert replies(fake, GROUP["id"])[0].reply_to == refused["message_id"]
    await fake.send_text(GROUP, ADMIN, "/answerall on")
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 2)
    assert "every voice note" in replies(fake, GROUP["id"])[1].text
    voice = await fake.send_voice(GROUP, BOB, speak("Hello, who are you?"), duration=2)
    sent = (await fake.wait_for(lambda: replies(fake, GROUP["id"], "sendVoice")))[0]
    assert sent.reply_to == voice["message_id"]


async def test_commands_for_admins_and_everyone(fake, bot):
    await fake.send_text(private_chat(BOB), BOB, "/retrain")
    refusal = (await fake.wait_for(lambda: replies(fake, BOB["id"])))[0]
    assert refusal.text == "Only admins can do that."
    assert bot.jobs.open_jobs() == []
    await fake.send_text(private_chat(BOB), BOB, "/help")
    help_text = (await fake.wait_for(lambda: len(replies(fake, BOB["id"])) == 2
                                     and replies(fake, BOB["id"])))[1].text
    assert "/forget" in help_text and "/retrain" not in help_text
    await fake.send_text(private_chat(ADMIN), ADMIN, "/retrain 5")
    queued = (await fake.wait_for(lambda: replies(fake, ADMIN["id"])))[0].text
    assert queued.startswith("Queued training job #1") and "come here" in queued
    job = bot.jobs.open_jobs()[0]
    assert job.notify.chat_id == str(ADMIN["id"]) and job.max_steps == 5
    # Menus: everyone sees the user commands, the admin's own chat also the admin ones.
    default = fake.commands['{"type": "default"}']
    assert [c["command"] for c in default] == ["start", "help", "forget"]
    admin_scope = fake.commands['{"chat_id": 900, "type": "chat"}']
    assert {"retrain", "trainstatus", "canceltrain", "rollback", "approve"} <= {
        c["command"] for c in admin_scope}
    await fake.send_text(private_chat(ADMIN), ADMIN, "/help")
    await fake.send_text(private_chat(BOB), BOB, "/canceltrain")
    admin_help = (await fake.wait_for(lambda: len(replies(fake, ADMIN["id"])) == 2
                                      and replies(fake, ADMIN["id"])))[1].text
    assert "/retrain" in admin_help and "/canceltrain" in admin_help
    refused = (await fake.wait_for(lambda: len(replies(fake, BOB["id"])) == 3
                                   and replies(fake, BOB["id"])))[2].text
    assert refused == "Only admins can do that." and bot.jobs.open_jobs() == [job]
    await fake.send_text(private_chat(ADMIN), ADMIN, "/canceltrain")
    cancelled = (await fake.wait_for(lambda: len(replies(fake, ADMIN["id"])) == 3
                                     and replies(fake, ADMIN["id"])))[2].text
    assert cancelled.startswith("Training job #1 cancelled; ") and bot.jobs.open_jobs() == []


async def test_approve_as_a_reply_to_the_bots_answer_stores_the_pair(fake, bot):
    await fake.send_text(GROUP, ALICE, f"{MENTION} Who are you?")
    answer = (await fake.wait_for(lambda: replies(fake, GROUP["id"])))[0]
    # The adapter records which message carried the answer right after sending it.
    await fake.wait_for(lambda: [e for e in bot.store.exchanges() if e.reply_message_id])
    await fake.send_text(GROUP, ADMIN, "/approve", reply_to_message=answer.message)
    done = (await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 2
                                and replies(fake, GROUP["id"])))[1]
    assert done.text.startswith("Approved #1: Who are you?")
    with bot.store.session() as s:
        pair = s.query(Pair).one()
    assert pair.status == "approved" and pair.decided_by == "telegram:900"
    assert pair.answer == answer.text


async def test_correct_as_a_reply_takes_all_of_its_text_as_the_answer(fake, bot):
    """Issue 14: replying /correct 2024 was great to an answer took 2024 for a pair id."""
    await fake.send_text(GROUP, ALICE, f"{MENTION} How was last year?")
    answer = (await fake.wait_for(lambda: replies(fake, GROUP["id"])))[0]
    await fake.wait_for(lambda: [e for e in bot.store.exchanges() if e.reply_message_id])
    await fake.send_text(GROUP, ADMIN, "/correct 2024 was great", reply_to_message=answer.message)
    done = (await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 2
                                and replies(fake, GROUP["id"])))[1]
    assert done.text.startswith("Corrected and approved #1: How was last year? → 2024 was great")
    with bot.store.session() as s:
        pair = s.query(Pair).one()
    assert (pair.question, pair.answer, pair.status) == ("How was last year?", "2024 was great",
                                                         "approved")


async def test_a_voice_note_accepted_after_the_timeout_is_sent_exactly_once(
        tmp_path, fake, asr, llm, tts, caplog):
    """Issue 14: a timeout after Telegram took the voice note sent it twice."""
    fake.answer_after["sendVoice"] = answer = asyncio.Event()
    app, adapter = await started(tg_settings(tmp_path, fake, telegram_text_voice=True), asr, llm,
                                 tts, read_timeout=2.0)
    try:
        with caplog.at_level(logging.INFO, logger="adapters.telegram"):
            await fake.send_text(private_chat(ALICE), ALICE, "What is the capital of Japan?")
            # The adapter's last word on the turn: given up, not resent, not stored (or, were
            # it to retry, a second voice note).
            await fake.wait_for(lambda: "not sent again and not stored" in caplog.text
                                or fake.calls.count("sendVoice") > 1)
    finally:
        answer.set()
        await adapter.stop()
        await app.stop()
        app.close()
    assert fake.calls.count("sendVoice") == 1 and len(replies(fake, ALICE["id"], "sendVoice")) == 1
    assert "sendVoice may or may not have been delivered" in caplog.text
    # No "sorry" after an answer that may well have arrived; nothing stored.
    assert replies(fake, ALICE["id"]) == [] and app.store.exchanges() == []


def _failure(exc: NetworkError, cause: BaseException | None) -> NetworkError:
    try:
        raise exc from cause
    except NetworkError as raised:
        return raised


@pytest.mark.parametrize(("failure", "safe"), [
    (_failure(NetworkError("Bad Gateway"), None), True),  # the Bot API's own error answer
    (_failure(NetworkError("httpx.ConnectError: refused"), httpx.ConnectError("refused")), True),
    (_failure(TimedOut(), httpx.ConnectTimeout("connect")), True),
    (_failure(TimedOut("pool"), httpx.PoolTimeout("pool")), True),
    (_failure(TimedOut(), httpx.ReadTimeout("read")), False),
    (_failure(TimedOut(), httpx.WriteTimeout("write")), False),
    (_failure(NetworkError("gone"), httpx.RemoteProtocolError("gone")), False),
    (_failure(NetworkError("reset"), httpx.ReadError("reset")), False),
    # A proxy's HTML error page: not the Bot API's answer, so it proves nothing.
    (_failure(NetworkError("Bad Gateway (502)"), TelegramError("Invalid server response")), False),
])
def test_only_failures_that_delivered_nothing_are_resent(failure, safe):
    assert resend_is_safe(failure) is safe


async def test_rate_limits_and_server_errors_deliver_exactly_one_reply(fake, adapter):
    fake.fail_next["sendMessage"] = [(429, {"retry_after": 1}), (502, None)]
    asked = await fake.send_text(private_chat(ALICE), ALICE, "What is the capital of Japan?")
    await handled(fake, adapter, asked)
    sent = replies(fake, ALICE["id"])
    assert len(sent) == 1 and sent[0].reply_to == asked["message_id"]
    assert fake.calls.count("sendMessage") == 3


async def test_a_user_who_blocked_the_bot_is_logged_not_retried(fake, bot, adapter, caplog):
    fake.fail_next["sendMessage"] = [(403, None)]
    with caplog.at_level(logging.WARNING, logger="adapters.telegram"):
        await handled(fake, adapter, await fake.send_text(private_chat(BOB), BOB,
                                                          "What is the capital of Japan?"))
    assert fake.calls.count("sendMessage") == 1 and replies(fake, BOB["id"]) == []
    assert "not allowed to send" in caplog.text
    # Nothing reached the user, so nothing was stored.
    assert "nothing stored" in caplog.text and bot.store.exchanges() == []


async def test_group_admins_may_set_their_group_but_not_run_the_persona(fake, bot):
    """Issue 12, item 6: platform admins administer their chat, never the shared persona."""
    fake.chat_admins[(GROUP["id"], BOB["id"])] = "administrator"
    await fake.send_text(GROUP, BOB, "/answerall on")
    await fake.wait_for(lambda: replies(fake, GROUP["id"]))
    assert "every voice note" in replies(fake, GROUP["id"])[0].text
    assert bot.store.answers_every_voice(ChatRef("telegram", str(GROUP["id"]), ChatKind.GROUP))
    for command in ("/pending", "/retrain", "/rollback", "/approve 1", "/dataset"):
        await fake.send_text(GROUP, BOB, command)
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 6)
    assert {r.text for r in replies(fake, GROUP["id"])[1:]} == {"Only admins can do that."}
    assert bot.jobs.open_jobs() == []
    # A member who is not an admin of the group may not change it either.
    await fake.send_text(GROUP, ALICE, "/answerall off")
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 7)
    assert replies(fake, GROUP["id"])[6].text == "Only admins can do that."


async def test_anonymous_admins_and_channels_are_different_senders(fake, bot):
    """Issue 12, item 8: one placeholder user in ``from``; ``sender_chat`` tells them apart."""
    news = channel(-1009999, "News")
    await fake.send_text(GROUP, GROUP_ANONYMOUS_BOT, f"{MENTION} I am the admin.",
                         sender_chat=GROUP)
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 1)
    await fake.send_text(GROUP, CHANNEL_BOT, f"{MENTION} We are the news.", sender_chat=news,
                         is_automatic_forward=True)
    await fake.wait_for(lambda: len([e for e in bot.store.exchanges()]) == 2)
    # Only the group itself (an anonymous admin) may change the group's settings.
    await fake.send_text(GROUP, CHANNEL_BOT, "/answerall on", sender_chat=news)
    await fake.send_text(GROUP, GROUP_ANONYMOUS_BOT, "/answerall on", sender_chat=GROUP)
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 4)
    assert replies(fake, GROUP["id"])[2].text == "Only admins can do that."
    assert "every voice note" in replies(fake, GROUP["id"])[3].text
    # The channel forgets itself; the anonymous admin's words stay.
    await fake.send_text(GROUP, CHANNEL_BOT, "/forget", sender_chat=news)
    await fake.wait_for(lambda: len(replies(fake, GROUP["id"])) == 5)
    assert replies(fake, GROUP["id"])[4].text.startswith("Done: I deleted 1 of your messages")
    assert [e.transcript for e in bot.store.exchanges()] == ["I am the admin."]


async def test_voice_over_the_limits_is_refused_before_download(fake, bot, speak):
    ogg = speak("Hello.")
    await fake.send_voice(private_chat(ALICE), ALICE, ogg, duration=2,
                          declared_size=30 * 2**20)
    await fake.send_voice(private_chat(ALICE), ALICE, ogg, duration=600)
    await fake.wait_for(lambda: len(replies(fake, ALICE["id"])) == 2)
    big, long = (s.text for s in replies(fake, ALICE["id"]))
    assert big == "That file is too big (30.0 MB); I accept up to 20 MB."
    assert long == "That recording is too long (600 s); please keep it under 120 seconds."
    assert "getFile" not in fake.calls


async def test_five_chats_at_once_are_answered_in_order_within_each(fake, bot):
    people = [user(910 + i, f"User{i}") for i in range(5)]
    asked: dict[int, list[int]] = {}
    for n in (1, 2):
        for p in people:
            m = await fake.send_text(private_chat(p), p, f"Say the number {n}.")
            asked.setdefault(p["id"], []).append(m["message_id"])
    await fake.wait_for(lambda: sum(len(replies(fake, p["id"])) for p in people) == 10,
                        timeout=240)
    for p in people:
        assert [s.reply_to for s in replies(fake, p["id"])] == asked[p["id"]]


async def test_a_flood_in_one_chat_gets_busy_replies(tmp_path, fake, asr, llm, tts):
    app, adapter = await started(tg_settings(tmp_path, fake, chat_queue_limit=2), asr, llm, tts)
    try:
        sent = [await fake.send_text(private_chat(ALICE), ALICE, f"Question {i}?")
                for i in range(4)]
        await fake.wait_for(lambda: len(replies(fake, ALICE["id"])) == 4)
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    out = {s.reply_to: s.text for s in replies(fake, ALICE["id"])}
    busy = [m["message_id"] for m in sent if out[m["message_id"]].startswith("I'm still working")]
    assert busy == [sent[2]["message_id"], sent[3]["message_id"]]


async def test_training_notices_reach_the_admins_chat(fake, bot, tmp_path):
    png = tmp_path / "loss.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    await bot.notify(ChatRef("telegram", "900"), Notice(1, PROGRESS,
                                                          image=png, final=True))
    assert [s.method for s in fake.sent_to(900)] == ["sendMessage", "sendPhoto"]
    assert fake.sent_to(900)[1].file == png.read_bytes()


async def test_webhook_mode_checks_the_secret_token(tmp_path, fake, asr, llm, tts):
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    app, adapter = await started(tg_settings(
        tmp_path, fake, telegram_webhook_url=url, telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port), asr, llm, tts)
    try:
        assert fake.webhook["url"] == url
        secret = fake.webhook["secret_token"]
        update = {"update_id": 1, "message": {
            "message_id": 7, "date": 0, "chat": private_chat(ALICE), "from": ALICE,
            "text": "What is the capital of Japan?"}}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}) as r:
                assert r.status == 403
            # Hostile bodies with the right secret: refused before anything is stored.
            ok = {"X-Telegram-Bot-Api-Secret-Token": secret}
            for body, status in [(b"x" * (1024 * 1024 + 1), 413), (b"{not json", 400),
                                 (b'{"message": {}}', 400), (b'[1, 2]', 400),
                                 (b'{"update_id": "7"}', 400)]:
                async with http.post(url, data=body, headers=ok) as r:
                    assert r.status == status, body[:20]
            assert app.inbox.stats().depth == 0
            async with http.post(url, json=update, headers=ok) as r:
                assert r.status == 200
            async with http.post(url, json=update, headers=ok) as r:
                assert r.status == 200  # Telegram sending it again: accepted, ignored
        sent = (await fake.wait_for(lambda: replies(fake, ALICE["id"])))
    finally:
        await adapter.stop()
        await app.stop()
        app.close()
    assert len(sent) == 1 and sent[0].reply_to == 7
    assert app.inbox.state_of("telegram", "1") is InboxState.DONE


def test_chatman_run_without_a_platform_says_what_to_set(tmp_path):
    result = chatman(tmp_path, "run", CHATMAN_WEB_ENABLED="false")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: nothing to run: the web console is off (CHATMAN_WEB_ENABLED=false) and no "
        "TELEGRAM_BOT_TOKEN or DISCORD_BOT_TOKEN is set")


async def test_chatman_run_serves_telegram_until_sigterm(tmp_path, fake):
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHATMAN_", "TELEGRAM_"))}
    environ.update(CHATMAN_DATA_DIR=str(tmp_path / "data"), CHATMAN_MODEL_CACHE_DIR=str(MODEL_CACHE),
                   CHATMAN_LLM_TEMPERATURE="0", CHATMAN_LLM_MAX_NEW_TOKENS="12",
                   TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=fake.base_url,
                   TELEGRAM_FILE_BASE_URL=fake.base_file_url, HF_HUB_OFFLINE="1",
                   CHATMAN_WEB_PORT="0")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters", "run", cwd=tmp_path, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await fake.wait_for(lambda: "getUpdates" in fake.calls, timeout=180)
        asked = await fake.send_text(private_chat(ALICE), ALICE, "What is the capital of Japan?")
        sent = (await fake.wait_for(lambda: replies(fake, ALICE["id"])))[0]
        assert sent.reply_to == asked["message_id"] and "Tokyo" in sent.text
    finally:
        process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    assert TOKEN not in output and "TEST-token" not in output
    assert "ChatMan web console: http://127.0.0.1:" in output  # beside Telegram by default


def test_replicas_of_one_bot_expect_the_same_webhook_secret_without_setting_one():
    from adapters.telegram import derived_webhook_secret

    secret = derived_webhook_secret(TOKEN)
    assert secret == derived_webhook_secret(TOKEN)  # every replica, every start
    assert secret != derived_webhook_secret(TOKEN + "x")  # another bot, another secret
    assert "TEST-token" not in secret and len(secret) == 48
    assert secret.isalnum()  # Telegram allows A-Z, a-z, 0-9, _ and -
