"""The durable inbox (bot/core/inbox.py) on SQLite and PostgreSQL, and the worker that
answers it: deliveries kept once, chats answered one message at a time in order, claims that
expire when a replica dies, turns stored only under a live claim, sends recorded."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import pytest

from bot.core.inbox import ClaimLost, InboxItem, InboxState, current_item
from bot.core.types import ChatKind, ChatRef, Turn, UserRef
from bot.infra.storage import migrate
from bot.infra.storage.inbox import SqlInbox
from bot.infra.storage.store import SqlStore, make_engine
from bot.services.inbox_worker import InboxWorker
from tests.fakes import eventually

TG = ("telegram",)


@pytest.fixture
def store(database_url):
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield SqlStore(engine)
    engine.dispose()


@pytest.fixture
def inbox(store) -> SqlInbox:
    return SqlInbox(store)


def put(inbox: SqlInbox, key: int, chat: str, limit: int | None = None) -> bool:
    return inbox.put("telegram", str(key), chat, {"update_id": key, "chat": chat}, limit)


def turn(text: str) -> Turn:
    return Turn(transcript=text, language="en", reply="ok.", voice=None, audio_duration_s=None,
                model_version="m-1", persona="manman")


def test_a_redelivered_update_is_kept_once(inbox):
    assert put(inbox, 1, "a") is True
    assert put(inbox, 1, "a") is False
    assert inbox.stats().depth == 1
    # Another platform's delivery with the same id is another message.
    assert inbox.put("discord", "1", "a", {}) is True


def test_one_message_per_chat_at_a_time_in_arrival_order(inbox):
    for key, chat in [(1, "a"), (2, "a"), (3, "b"), (4, "a")]:
        put(inbox, key, chat)
    first = inbox.claim("r1", 30, TG)
    second = inbox.claim("r2", 30, TG)
    assert (first.key, second.key) == ("1", "3")
    assert inbox.claim("r2", 30, TG) is None  # a's line waits for message 1
    assert inbox.finish(first.receipt)
    assert inbox.claim("r2", 30, TG).key == "2"
    assert inbox.claim("r1", 30, ("discord",)) is None  # only the platforms asked for


def test_a_dead_replicas_message_is_answered_once_elsewhere(inbox, store):
    put(inbox, 7, "a")
    dead = inbox.claim("r1", 0.0, TG)  # a lease that is over at once: r1 died
    taken = inbox.claim("r2", 30, TG)
    assert taken.id == dead.id and taken.attempts == 2 and taken.claim != dead.claim
    chat, user = ChatRef("telegram", "a", ChatKind.PRIVATE), UserRef("telegram", "1", "A")
    # r1 comes back to life and finishes its turn: nothing of it is stored.
    with pytest.raises(ClaimLost):
        store.record_turn(chat, user, "7", turn("from r1"), "text", "100", dead.receipt)
    assert store.exchanges() == []
    store.record_turn(chat, user, "7", turn("from r2"), "text", "101", taken.receipt)
    assert [e.transcript for e in store.exchanges()] == ["from r2"]
    assert inbox.state_of("telegram", "7") is InboxState.DONE
    assert inbox.renew([dead.receipt, taken.receipt], 30) == [dead.receipt, taken.receipt]


def test_a_message_that_kills_every_replica_is_given_up(inbox):
    put(inbox, 1, "a")
    put(inbox, 2, "a")
    for _ in range(3):
        assert inbox.claim("r", 0.0, TG).key == "1"
    # The fourth claim gives it up, and the chat's line moves on.
    assert inbox.claim("r", 30, TG).key == "2"
    assert inbox.state_of("telegram", "1") is InboxState.FAILED


def test_a_full_line_makes_an_overflow_answered_at_once(inbox):
    for key in range(1, 5):
        put(inbox, key, "a", limit=2)
    claimed = [inbox.claim("r", 30, TG) for _ in range(4)]
    assert [c.key if c else None for c in claimed] == ["1", "3", "4", None]
    assert [c.overflow for c in claimed[:3]] == [False, True, True]


def test_a_released_message_is_claimable_again_without_counting(inbox):
    put(inbox, 1, "a")
    held = inbox.claim("r1", 30, TG)
    inbox.release(held.receipt)
    again = inbox.claim("r2", 30, TG)
    assert again.id == held.id and again.attempts == 1
    assert not inbox.finish(held.receipt)  # the old claim proves nothing any more


def test_a_replica_restarted_under_its_name_takes_its_claims_back_at_once(inbox):
    put(inbox, 1, "a")
    put(inbox, 2, "b")
    inbox.claim("r1", 30, TG)
    inbox.claim("r2", 30, TG)
    assert inbox.release_owned("r1") == 1
    assert inbox.claim("r1", 30, TG).key == "1"  # not waiting out the lease
    assert inbox.claim("r3", 30, TG) is None  # r2's claim stands


def test_sends_are_recorded_per_message_and_part(inbox):
    put(inbox, 1, "a")
    item = inbox.claim("r", 30, TG)
    inbox.record_sent(item.id, "voice", "1001")
    inbox.record_sent(item.id, "text:0", "1002")
    assert inbox.sent(item.id) == {"voice": "1001", "text:0": "1002"}


def test_stats_count_what_waits_and_for_how_long(inbox):
    assert inbox.stats().depth == 0 and inbox.stats().oldest_age_s is None
    put(inbox, 1, "a")
    put(inbox, 2, "b")
    inbox.finish(inbox.claim("r", 30, TG).receipt)
    stats = inbox.stats()
    assert stats.depth == 1 and stats.oldest_age_s is not None and stats.oldest_age_s >= 0


def test_concurrent_claimers_keep_every_chat_in_order(database_url):
    """Four claimers with their own connections (as four replicas) over 8 chats: every
    message is claimed once, and a chat never has two messages in flight."""
    engines = [make_engine(database_url) for _ in range(4)]
    migrate.upgrade(engines[0])
    inboxes = [SqlInbox(SqlStore(e)) for e in engines]
    for key in range(80):
        put(inboxes[0], key, f"chat{key % 8}")
    seen: dict[str, list[int]] = defaultdict(list)
    in_flight: set[str] = set()
    overlaps: list[str] = []
    guard = threading.Lock()

    def claimer(inbox: SqlInbox, name: str) -> None:
        idle = 0
        while idle < 20:
            item = inbox.claim(name, 30, TG)
            if item is None:
                idle += 1
                continue
            idle = 0
            with guard:
                if item.chat_key in in_flight:
                    overlaps.append(item.chat_key)
                in_flight.add(item.chat_key)
                seen[item.chat_key].append(int(item.key))
            with guard:
                in_flight.discard(item.chat_key)
            assert inbox.finish(item.receipt)

    threads = [threading.Thread(target=claimer, args=(ib, f"r{i}"))
               for i, ib in enumerate(inboxes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in engines:
        e.dispose()
    assert overlaps == []
    assert sum(len(v) for v in seen.values()) == 80
    for chat, keys in seen.items():
        assert keys == sorted(keys), chat
        assert len(keys) == 10


async def test_the_worker_answers_each_chat_in_order_and_fails_what_raises(inbox):
    worker = InboxWorker(inbox, owner="r1", lease_s=30, workers=4, poll_s=0.05)
    answered: dict[str, list[str]] = defaultdict(list)
    seen_items: list[InboxItem | None] = []

    async def handler(item: InboxItem) -> None:
        seen_items.append(current_item.get())
        if item.key == "3":
            raise RuntimeError("a bug")
        await asyncio.sleep(0)
        answered[item.chat_key].append(item.key)

    for key, chat in [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b")]:
        put(inbox, key, chat)
    worker.register("telegram", handler)
    try:
        await eventually(lambda: inbox.stats().depth == 0, 30, lambda: str(inbox.stats()))
    finally:
        await worker.unregister("telegram")
    assert dict(answered) == {"a": ["1", "4"], "b": ["2", "5"]}
    assert inbox.state_of("telegram", "3") is InboxState.FAILED
    assert all(i is not None for i in seen_items)


async def test_stopping_gives_unfinished_messages_back(inbox):
    worker = InboxWorker(inbox, owner="r1", lease_s=30, workers=2, poll_s=0.05)
    started, never = asyncio.Event(), asyncio.Event()

    async def stuck(item: InboxItem) -> None:
        started.set()
        await never.wait()

    put(inbox, 1, "a")
    worker.register("telegram", stuck)
    await asyncio.wait_for(started.wait(), 30)
    await worker.unregister("telegram", drain_s=0.05)
    # Claimable again at once (by another replica, or this one restarted), not after a lease.
    assert inbox.state_of("telegram", "1") is InboxState.PENDING
    assert inbox.claim("r2", 30, TG).attempts == 1
