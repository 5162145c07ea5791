"""The fakes the multi-replica test stands on: FakeTelegram's webhook delivery and the
round-robin proxy, checked against a tiny endpoint that records what Telegram would send it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import pytest
import telegram
from aiohttp import web
from telegram.error import Conflict

from tests.fakes import Json, LocalServer, eventually, free_port
from tests.fakes.proxy import RoundRobinProxy
from tests.fakes.telegram_api import TOKEN, FakeTelegram, private_chat, user
from tests.fakes.telegram_webhook import SECRET_HEADER

SECRET = "s3cret_token-1"
ALICE, BOB, CAROL = user(901, "Alice"), user(902, "Bob"), user(903, "Carol")


class Endpoint(LocalServer):
    """A bot's webhook: records each request; ``fail`` statuses are answered first, in turn;
    while ``gate`` is clear requests wait (to catch what is in flight at once)."""

    def __init__(self, name: str = "endpoint") -> None:
        self.name = name
        self.received: list[tuple[Json, dict[str, str]]] = []
        self.fail: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.hang_up = False
        self.in_flight: list[int] = []
        self.most_in_flight = 0
        self.most_per_chat: Counter[int] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self._hook)

    def update_ids(self) -> list[int]:
        return [update["update_id"] for update, _ in self.received]

    async def _hook(self, request: web.Request) -> web.Response:
        update = await request.json()
        self.received.append((update, dict(request.headers)))
        if self.hang_up:
            assert request.transport is not None
            request.transport.close()  # a replica killed mid-request
            return web.Response()
        chat = update["message"]["chat"]["id"]
        self.in_flight.append(chat)
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        self.most_per_chat[chat] = max(self.most_per_chat[chat], self.in_flight.count(chat))
        try:
            await self.gate.wait()
        finally:
            self.in_flight.remove(chat)
        if self.fail:
            return web.Response(status=self.fail.pop(0))
        return web.Response()


@pytest.fixture
async def fake():
    server = FakeTelegram(retry_backoff=0.05, retry_backoff_max=0.2)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def endpoint():
    server = Endpoint()
    await server.start()
    yield server
    await server.stop()


async def call(fake: FakeTelegram, method: str, **params: Any) -> tuple[int, Json]:
    """A Bot API call as a client library makes it: form fields, non-strings JSON-encoded."""
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base_url}{TOKEN}/{method}", data=form) as response:
            return response.status, await response.json()


async def webhook_info(fake: FakeTelegram) -> Json:
    status, body = await call(fake, "getWebhookInfo")
    assert status == 200
    result: Json = body["result"]
    return result


async def push_texts(fake: FakeTelegram, who: Json, *texts: str, **options: Any) -> list[Json]:
    return [await fake.push(fake._message(private_chat(who), who, text=text), **options)
            for text in texts]


async def test_updates_arrive_through_the_proxy_as_telegram_sends_them(fake, endpoint):
    other = Endpoint("other")
    await other.start()
    proxy = RoundRobinProxy([endpoint.url, other.url])
    await proxy.start()
    try:
        status, body = await call(fake, "setWebhook", url=proxy.url + "/hook?bot=1",
                                  secret_token=SECRET, max_connections=40,
                                  allowed_updates=["message"], drop_pending_updates=False)
        assert (status, body) == (200, {"ok": True, "result": True})
        sent = await push_texts(fake, ALICE, "one", "two", "three", "four")
        await fake.wait_delivered(timeout=10)
    finally:
        await proxy.stop()
        await other.stop()
    received = sorted(endpoint.received + other.received, key=lambda r: r[0]["update_id"])
    assert [update for update, _ in received] == [
        {"update_id": n, "message": message} for n, message in enumerate(sent, start=1)]
    for _, headers in received:
        assert headers[SECRET_HEADER] == SECRET
        assert headers["Content-Type"] == "application/json"
    # Round robin: the four deliveries alternate between the two replicas.
    assert endpoint.update_ids() == [1, 3] and other.update_ids() == [2, 4]
    assert {b: s.requests for b, s in proxy.stats.items()} == {endpoint.url: 2, other.url: 2}
    assert [f.path_qs for f in proxy.log] == ["/hook?bot=1"] * 4
    assert [(a.update_id, a.outcome, a.attempt) for a in fake.deliveries] == [
        (n, "200", 1) for n in range(1, 5)]
    info = await webhook_info(fake)
    assert info["url"] == proxy.url + "/hook?bot=1" and info["pending_update_count"] == 0
    assert info["max_connections"] == 40 and info["allowed_updates"] == ["message"]
    assert "last_error_date" not in info


async def test_a_failing_endpoint_gets_the_update_again_until_it_answers_2xx(fake, endpoint):
    endpoint.fail = [500, 503]
    endpoint.gate.clear()
    await call(fake, "setWebhook", url=endpoint.url + "/hook", secret_token=SECRET)
    await push_texts(fake, ALICE, "are you there?", "hello?")
    await eventually(lambda: endpoint.in_flight, 5, lambda: "nothing arrived")
    assert (await webhook_info(fake))["pending_update_count"] == 2  # in flight is pending
    endpoint.gate.set()
    await fake.wait_delivered(timeout=10)
    # The chat's next update waits while its first is being retried.
    assert endpoint.update_ids() == [1, 1, 1, 2]
    assert [(a.update_id, a.attempt, a.outcome) for a in fake.deliveries] == [
        (1, 1, "500"), (1, 2, "503"), (1, 3, "200"), (2, 1, "200")]
    info = await webhook_info(fake)
    assert info["pending_update_count"] == 0
    assert info["last_error_message"] == "Wrong response from the webhook: 503 Service Unavailable"
    assert isinstance(info["last_error_date"], int)


async def test_no_answer_in_time_counts_as_a_failure(endpoint):
    fake = FakeTelegram(webhook_timeout=0.3, retry_backoff=0.05)
    await fake.start()
    try:
        endpoint.gate.clear()
        await call(fake, "setWebhook", url=endpoint.url + "/hook")
        await push_texts(fake, ALICE, "hello?")
        await eventually(lambda: len(endpoint.received) >= 2, 5, lambda: "no second try")
        endpoint.gate.set()
        await fake.wait_delivered(timeout=10)
        outcomes = [a.outcome for a in fake.deliveries]
        assert outcomes[0] == "timeout" and outcomes[-1] == "200"
        assert (await webhook_info(fake))["last_error_message"] == "Read timeout expired"
        assert SECRET_HEADER not in endpoint.received[0][1]  # set without a secret_token
    finally:
        await fake.stop()


async def test_a_chat_has_one_update_in_flight_at_a_time_and_in_order(fake, endpoint):
    endpoint.gate.clear()
    await call(fake, "setWebhook", url=endpoint.url + "/hook", max_connections=40)
    for who in (ALICE, BOB, CAROL):
        await push_texts(fake, who, "1", "2", "3")
    # Three chats: their heads go out together, and nothing after them.
    await eventually(lambda: len(endpoint.in_flight) == 3, 5,
                     lambda: f"in flight {endpoint.in_flight}")
    assert sorted(fake.webhook_sender.in_flight) == [1, 4, 7]
    endpoint.gate.set()
    await fake.wait_delivered(timeout=10)
    assert endpoint.most_per_chat == {901: 1, 902: 1, 903: 1}
    by_chat: dict[int, list[int]] = {}
    for update, _ in endpoint.received:
        by_chat.setdefault(update["message"]["chat"]["id"], []).append(update["update_id"])
    assert by_chat == {901: [1, 2, 3], 902: [4, 5, 6], 903: [7, 8, 9]}


async def test_max_connections_limits_requests_in_flight(fake, endpoint):
    await call(fake, "setWebhook", url=endpoint.url + "/hook", max_connections=2)
    endpoint.gate.clear()
    for who in (ALICE, BOB, CAROL):
        await push_texts(fake, who, "hi")
    await eventually(lambda: len(endpoint.in_flight) == 2, 5,
                     lambda: f"in flight {endpoint.in_flight}")
    endpoint.gate.set()
    await fake.wait_delivered(timeout=10)
    assert endpoint.most_in_flight == 2 and fake.webhook_sender.most_in_flight == 2
    assert sorted(endpoint.update_ids()) == [1, 2, 3]


async def test_a_duplicate_is_delivered_again_with_the_same_update_id(endpoint):
    fake = FakeTelegram(duplicate_every=3)
    await fake.start()
    try:
        await call(fake, "setWebhook", url=endpoint.url + "/hook")
        await push_texts(fake, ALICE, "1", "2")
        await push_texts(fake, ALICE, "3, twice")  # update 3: duplicate_every
        await fake.send_text(private_chat(ALICE), ALICE, "4, twice", duplicate=True)
        await push_texts(fake, ALICE, "5")
        await fake.wait_delivered(timeout=10)
    finally:
        await fake.stop()
    assert endpoint.update_ids() == [1, 2, 3, 3, 4, 4, 5]
    assert endpoint.received[2][0] == endpoint.received[3][0]
    assert [(a.update_id, a.copy) for a in fake.deliveries if a.update_id in (3, 4)] == [
        (3, 1), (3, 2), (4, 1), (4, 2)]
    assert fake.delivered() == [1, 2, 3, 3, 4, 4, 5]


async def test_get_updates_is_refused_while_a_webhook_is_set(fake):
    await push_texts(fake, ALICE, "waiting")
    await call(fake, "setWebhook", url=f"http://127.0.0.1:{free_port()}/hook")
    status, body = await call(fake, "getUpdates", timeout=0)
    assert status == 409 and body == {
        "ok": False, "error_code": 409,
        "description": "Conflict: can't use getUpdates method while webhook is active; "
                       "use deleteWebhook to delete the webhook first"}
    # Nobody listens there: the update stays pending, the error is reported.
    await eventually(lambda: fake.webhook_sender.last_error_message, 5, lambda: "no error")
    info = await webhook_info(fake)
    assert info["pending_update_count"] == 1
    assert info["last_error_message"] == "Connection refused"
    # Back to polling: the undelivered update is handed out there.
    assert await call(fake, "deleteWebhook") == (200, {"ok": True, "result": True})
    status, body = await call(fake, "getUpdates", timeout=0)
    assert status == 200 and [u["message"]["text"] for u in body["result"]] == ["waiting"]
    assert (await webhook_info(fake))["url"] == ""


async def test_drop_pending_updates_forgets_what_was_not_delivered(fake):
    await push_texts(fake, ALICE, "old", "older")
    await call(fake, "setWebhook", url=f"http://127.0.0.1:{free_port()}/hook",
               drop_pending_updates=True)
    assert (await webhook_info(fake))["pending_update_count"] == 0


async def test_replicas_setting_the_same_webhook_get_each_update_once(fake, endpoint):
    for _ in range(3):  # every replica sets it as it starts
        await call(fake, "setWebhook", url=endpoint.url + "/hook", secret_token=SECRET,
                   max_connections=40, allowed_updates=["message"])
    await push_texts(fake, ALICE, "a", "b")
    await push_texts(fake, BOB, "c")
    await fake.wait_delivered(timeout=10)
    assert sorted(endpoint.update_ids()) == [1, 2, 3]


async def test_a_backend_that_hangs_up_or_is_gone_gets_502_and_telegram_redelivers(fake, endpoint):
    dying = Endpoint("dying")
    await dying.start()
    dying.hang_up = True
    gone = f"http://127.0.0.1:{free_port()}"
    proxy = RoundRobinProxy([dying.url, gone])
    await proxy.start()
    try:
        await call(fake, "setWebhook", url=proxy.url + "/hook", secret_token=SECRET)
        await push_texts(fake, ALICE, "hello")
        await eventually(lambda: len(proxy.log) >= 2, 5, lambda: f"log {proxy.log}")
        assert fake.pending_update_count == 1
        # A replica restarted on a new port takes the dead ones' place.
        proxy.add_backend(endpoint.url)
        proxy.remove_backend(dying.url)
        proxy.remove_backend(gone)
        await fake.wait_delivered(timeout=10)
    finally:
        await proxy.stop()
        await dying.stop()
    assert [(f.status, f.error) for f in proxy.log[:2]] == [(502, "closed"), (502, "refused")]
    assert proxy.stats[dying.url].failures >= 1 and proxy.stats[gone].failures >= 1
    assert proxy.stats[endpoint.url].statuses == {200: 1}
    assert endpoint.update_ids() == [1] and endpoint.received[0][1][SECRET_HEADER] == SECRET
    assert [a.outcome for a in fake.deliveries][-1] == "200"
    assert {a.outcome for a in fake.deliveries[:-1]} == {"502"}


async def test_answers_by_chat_lists_reply_ids_in_the_order_sent(fake):
    for chat, reply_to, method in [(901, 11, "sendMessage"), (902, 20, "sendMessage"),
                                   (901, 12, "sendVoice"), (901, None, "sendChatAction")]:
        params: dict[str, Any] = {"chat_id": chat}
        if reply_to is not None:
            params["reply_parameters"] = {"message_id": reply_to}
        if method == "sendMessage":
            params["text"] = "hi"
        if method == "sendChatAction":
            params["action"] = "typing"
        if method == "sendVoice":
            form = aiohttp.FormData({k: v if isinstance(v, str) else json.dumps(v)
                                     for k, v in params.items()})
            form.add_field("voice", b"OggS", filename="a.ogg")
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{fake.base_url}{TOKEN}/sendVoice", data=form) as r:
                    assert r.status == 200
        else:
            assert (await call(fake, method, **params))[0] == 200
    assert fake.answers_by_chat() == {901: [11, 12], 902: [20]}


async def test_python_telegram_bot_sets_and_reads_the_webhook_as_the_fake_expects(fake):
    """PTB 22's own calls, as its Updater makes them for start_webhook/start_polling."""
    bot = telegram.Bot(TOKEN, base_url=fake.base_url)
    async with bot:
        await push_texts(fake, ALICE, "pending")
        url = f"http://127.0.0.1:{free_port()}/tg"
        assert await bot.set_webhook(url=url, secret_token=SECRET, allowed_updates=["message"],
                                     max_connections=7, drop_pending_updates=True)
        info = await bot.get_webhook_info()
        assert (info.url, info.pending_update_count, info.max_connections,
                info.allowed_updates) == (url, 0, 7, ("message",))
        assert fake.webhook["secret_token"] == SECRET
        with pytest.raises(Conflict):
            await bot.get_updates(timeout=0)
        assert await bot.delete_webhook()
        assert await bot.get_updates(timeout=0) == ()
