"""Several `chatman run` processes on one database, through the durable inbox: webhook updates
behind a round-robin proxy, some delivered twice, one replica SIGKILLed mid-run; and a polling
bot killed between receiving a voice note and answering it."""

from __future__ import annotations

import pytest

from tests.fakes import eventually, free_port
from tests.fakes.proxy import RoundRobinProxy
from tests.fakes.telegram_api import FakeTelegram, private_chat, user
from tests.replicas import (
    WEBHOOK_SECRET,
    InboxView,
    Replica,
    database_path,
    kill_point_is_clean,
    replica_env,
    sends_for,
)

pytestmark = pytest.mark.model

CHATS = 20
UPDATES = 200


async def _kill_mid_run(replica: Replica, view: InboxView, fake: FakeTelegram,
                        timeout: float) -> list[int]:
    """SIGKILL ``replica`` at a moment it holds claims (messages it is answering); returns
    their inbox ids."""
    held: list[int] = []

    def frozen_with_claims() -> bool:
        replica.pause()
        if kill_point_is_clean(view, fake, replica.name):
            held[:] = [h.inbox_id for h in view.held_by(replica.name)]
            return True
        replica.resume()
        return False

    await eventually(frozen_with_claims, timeout, lambda: f"{replica.name} never held a claim")
    await replica.kill()
    return held


async def test_replicas_answer_every_update_once_and_each_chat_in_order(tmp_path, postgres_url):
    fake = FakeTelegram(retry_backoff=0.05, retry_backoff_max=0.5, duplicate_every=7)
    await fake.start()
    proxy = RoundRobinProxy()
    await proxy.start()
    view = InboxView(postgres_url)
    ports = [free_port() for _ in range(3)]
    replicas = []
    for i, port in enumerate(ports):
        proxy.add_backend(f"http://127.0.0.1:{port}")
        replicas.append(Replica(f"r{i}", replica_env(
            tmp_path / "shared", postgres_url, fake, f"r{i}",
            TELEGRAM_WEBHOOK_URL=f"{proxy.url}/telegram/hook",
            TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET, TELEGRAM_WEBHOOK_LISTEN="127.0.0.1",
            TELEGRAM_WEBHOOK_PORT=str(port), CHATMAN_INBOX_LEASE_SECONDS="3",
            # Every question answered (a chat's line may hold all ten of its questions; more
            # would be told "busy" at once, out of order, by design).
            CHATMAN_CHAT_QUEUE_LIMIT=str(UPDATES // CHATS)), tmp_path))
    try:
        # One replica first: it upgrades the schema (the others would wait on its lock anyway).
        await replicas[0].start()
        await fake.wait_for(lambda: fake.webhook.get("url"), timeout=240)
        for r in replicas[1:]:
            await r.start()
        people = [user(2000 + i, f"User{i}") for i in range(CHATS)]
        asked: dict[int, list[int]] = {p["id"]: [] for p in people}
        for k in range(UPDATES):
            p = people[k % CHATS]
            sent = await fake.send_text(private_chat(p), p, f"Question number {k}?")
            asked[p["id"]].append(sent["message_id"])

        def answered() -> int:
            return sum(len(v) for v in fake.answers_by_chat().values())

        await fake.wait_for(lambda: answered() >= UPDATES // 4, timeout=600)
        taken_over = await _kill_mid_run(replicas[0], view, fake, timeout=120)
        await fake.wait_for(lambda: answered() >= UPDATES, timeout=600)
        await eventually(lambda: view.states().keys() <= {"done"}, 120,
                         lambda: f"inbox: {view.states()}")
        await fake.wait_delivered(timeout=60)
    finally:
        codes = [await r.stop() for r in replicas[1:]]
        if replicas[0].process is not None and replicas[0].process.returncode is None:
            await replicas[0].stop()
        view_states = view.states()
        owners = view.owners_of(taken_over) if "taken_over" in locals() else {}
        view.close()
        await proxy.stop()
        await fake.stop()

    answers = fake.answers_by_chat()
    # Every update answered exactly once, each chat in the order its messages were sent.
    assert {chat: answers.get(chat) for chat in asked} == asked
    assert view_states == {"done": UPDATES}
    # What the killed replica was answering was answered by the others.
    assert taken_over and all(owner not in (None, "r0") and state == "done"
                              for owner, state in owners.values()), owners
    # Telegram did deliver some updates twice, and some to the dead replica.
    delivered = fake.delivered()
    assert len(delivered) > len(set(delivered))
    assert any(a.status == 502 for a in fake.deliveries)
    assert codes == [0, 0], [r.log()[-3000:] for r in replicas[1:]]
    for r in replicas:
        assert "TEST-token" not in r.log()


async def test_a_bot_killed_before_answering_a_voice_note_answers_it_once_after_restart(
        tmp_path, speak):
    fake = FakeTelegram()
    await fake.start()
    data = tmp_path / "data"
    url = database_path(data)
    # The same replica id after the restart: it takes its own claim back at once.
    env = replica_env(data, url, fake, "solo")
    alice = user(3001, "Alice")
    bot = Replica("solo", env, tmp_path)
    view = None
    try:
        await bot.start()
        await fake.wait_for(lambda: "getUpdates" in fake.calls, timeout=240)
        asked = await fake.send_voice(private_chat(alice), alice,
                                      speak("What is the capital of Japan?"), duration=2)
        view = InboxView(url)
        await eventually(lambda: view.held_by("solo"), 120, lambda: f"inbox: {view.states()}")
        bot.pause()
        assert sends_for(fake, asked["message_id"]) == 0, "answered before it could be killed"
        await bot.kill()
        bot = Replica("solo", env, tmp_path)
        await bot.start()
        await eventually(lambda: sends_for(fake, asked["message_id"]), 240,
                         lambda: "restarted bot: " + bot.log()[-3000:])
        await eventually(lambda: view.states() == {"done": 1}, 60, lambda: str(view.states()))
    finally:
        code = await bot.stop()
        if view is not None:
            view.close()
        await fake.stop()
    voices = [s for s in fake.sent if s.reply_to == asked["message_id"]]
    assert [s.method for s in voices] == ["sendVoice"]
    assert code == 0, bot.log()[-3000:]
    # Taken back at start (same CHATMAN_REPLICA_ID), not after the lease ran out.
    assert "1 messages solo held when it stopped are answered again" in bot.log()
