"""The web console as an attacker meets it: one test per way in that was found open.

Numbers refer to the items of the hostile-input review (the issue these tests close).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from adapters.app import ChatmanApp
from adapters.web.server import WebAdapter
from bot.core.ports import ChatModel, SpeechRecognizer, SpeechSynthesizer
from bot.infra.storage.models import Pair
from tests.conftest import REPO, start_web, stop_web
from tests.fakes.models import hold_replies
from tests.test_codec import encode, tone

SAMPLE = REPO / "persona" / "manman" / "samples" / "question.ogg"
TOKEN = "test-admin-token-123"
CSRF = {"X-ChatMan": "1"}
ADMIN = {**CSRF, "Authorization": f"Bearer {TOKEN}"}
# A refusal's words, and for the user's own errors their code and parameters too.
ERROR_KEYS = {"error", "code", "params"}
FFCONCAT = b"ffconcat version 1.0\nfile 'persona/manman/samples/question.ogg'\n"
SDP = (b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=voice\nc=IN IP4 127.0.0.1\nt=0 0\n"
       b"m=audio 5004 RTP/AVP 96\na=rtpmap:96 opus/48000/2\n")


class Console(httpx.AsyncClient):
    """A client of the web console that also holds the app and the adapter behind it."""

    app: ChatmanApp
    adapter: WebAdapter


async def serve(tmp_path: Path, asr: SpeechRecognizer, llm: ChatModel, tts: SpeechSynthesizer,
                **overrides: Any) -> tuple[ChatmanApp, WebAdapter]:
    values: dict[str, Any] = dict(web_admin_token=TOKEN, max_upload_mb=1)
    values.update(overrides)
    app, adapter = await start_web(tmp_path, asr, llm, tts, max_new_tokens=12, **values)
    return app, adapter


@pytest.fixture
async def web(tmp_path, asr, llm, tts):
    app, adapter = await serve(tmp_path, asr, llm, tts)
    async with Console(base_url=adapter.url, timeout=120) as client:
        client.app, client.adapter = app, adapter
        yield client
    await stop_web(app, adapter)


def upload(data: bytes, name: str = "voice.ogg") -> dict[str, Any]:
    return {"files": {"audio": (name, data, "audio/ogg")}}


def stored(app: ChatmanApp) -> int:
    with app.store.session() as s:
        return len(app.store.exchanges()) + s.query(Pair).count()


async def assert_alive(web: httpx.AsyncClient) -> None:
    assert (await web.get("/api/admin/models", headers=ADMIN)).status_code == 200


# --- 1. local file read through an ffconcat script ---------------------------------------
async def test_1_an_ffconcat_upload_reads_no_local_file(web):
    for name in ("voice.ogg", "voice.txt", "x.ffconcat"):
        response = await web.post("/api/chat", headers=CSRF, **upload(FFCONCAT, name))
        assert response.status_code == 400, response.text
        assert "couldn't read that file as audio" in response.json()["error"]
    assert stored(web.app) == 0
    await assert_alive(web)


# --- 2. SDP: no sockets, and nobody else waits -------------------------------------------
def udp_ports() -> set[tuple[str, int]]:
    """UDP sockets of this process and its children (the decoder workers)."""
    ports: set[tuple[str, int]] = set()
    me = psutil.Process()
    for process in (me, *me.children(recursive=True)):
        try:
            ports |= {c.laddr for c in process.net_connections(kind="udp")}
        except psutil.NoSuchProcess:
            pass
    return ports


async def test_2_sdp_uploads_bind_no_ports_and_do_not_hold_up_others(web):
    before = udp_ports()
    hostile = [web.post("/api/chat", headers=CSRF, **upload(SDP, "voice.sdp"))
               for _ in range(8)]
    admin = web.get("/api/admin/models", headers=ADMIN)
    *answers, listed = await asyncio.gather(*hostile, admin)
    assert listed.status_code == 200
    assert all(a.status_code in (400, 429) for a in answers), [a.text for a in answers]
    assert {a.status_code for a in answers} >= {400}
    assert psutil.Process().children(recursive=True), "the decoders ran in child processes"
    assert udp_ports() <= before
    assert stored(web.app) == 0


# --- 3. text flood -----------------------------------------------------------------------
async def test_3_an_oversized_text_is_refused_before_the_model(web):
    calls: list[int] = []
    real = web.app.pipeline.llm.stream

    def counted(messages, max_new_tokens=None):
        calls.append(1)
        return real(messages, max_new_tokens)

    web.app.pipeline.llm.stream = counted
    for size in (2_001, 8 * 1024, 900 * 1024):
        response = await web.post("/api/chat", headers=CSRF, data={"text": "a" * size})
        assert response.status_code == 400, response.text
        assert "too long" in response.json()["error"] and "2000" in response.json()["error"]
    assert calls == [] and stored(web.app) == 0
    ok = await web.post("/api/chat", headers=CSRF, data={"text": "Hello " * 300})
    assert ok.status_code == 200 and calls == [1]


def test_3_a_user_turn_longer_than_the_context_is_cut_to_fit(llm, caplog):
    from bot.core.types import ChatMessage, Role

    narrow = copy.copy(llm)
    narrow.context_tokens = 120
    question = " ".join(f"word{i}" for i in range(400)) + " What is your name?"
    with caplog.at_level("WARNING"):
        prompt = narrow.fit_history("You are Manman.", [ChatMessage(Role.USER, "hi"),
                                                        ChatMessage(Role.ASSISTANT, "hello")],
                                    ChatMessage(Role.USER, question))
    assert [m.role for m in prompt] == [Role.SYSTEM, Role.USER]
    assert narrow.count_prompt_tokens(prompt) <= 120
    assert prompt[-1].content.endswith("What is your name?")  # the end is kept
    assert "cut to its last" in caplog.text


# --- 4. chunked uploads ------------------------------------------------------------------
async def test_4_a_chunked_upload_is_stopped_at_the_limit_while_it_streams(web, monkeypatch):
    import starlette.formparsers as formparsers

    biggest = [0]

    class Watched(tempfile.SpooledTemporaryFile[bytes]):
        def write(self, data):
            written = super().write(data)
            biggest[0] = max(biggest[0], self.tell())
            return written

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", Watched)
    limit = web.app.settings.max_upload_bytes
    boundary = "chatmanboundary"

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: httpx sends it chunked
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
               f"filename=\"big.ogg\"\r\nContent-Type: audio/ogg\r\n\r\n").encode()
        for _ in range(40):  # 10 MB
            yield b"\0" * (256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = await web.post("/api/chat", content=body(), headers={
            **CSRF, "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413 and "too big" in response.json()["error"]
    except httpx.TransportError:
        pass  # the server may close the connection while the client still sends
    assert biggest[0] <= limit + 64 * 1024, biggest[0]
    assert stored(web.app) == 0
    await assert_alive(web)


def raw_request(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """What the server answers to ``payload`` before it closes the connection."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed on us while we still sent: what came before is the answer
    return b"".join(chunks)


async def test_4_content_length_and_chunked_together_are_refused(web):
    port = int(str(web.base_url).rsplit(":", 1)[1])
    head = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ChatMan: 1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunk = b"\0" * 300_000
    payload = head + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    answer = await asyncio.to_thread(raw_request, port, payload)
    status = int(answer.split(b" ", 2)[1]) if answer else 0
    assert answer == b"" or 400 <= status < 500, answer[:200]
    assert stored(web.app) == 0
    await assert_alive(web)


# --- 5. MP3 / AAC that change format mid-stream --------------------------------------------
async def test_5_mp3_switching_sample_rate_mid_stream_is_answered_not_a_500(web, codec, speak):
    spoken = codec.decode(speak("What is the capital of Japan?"))
    first = encode(spoken.samples, 16_000, "mp3", "libmp3lame")
    second = encode(tone(0.5, 22_050, amp=0.01), 22_050, "mp3", "libmp3lame")
    response = await web.post("/api/chat", headers=CSRF, **upload(first + second, "q.mp3"))
    assert response.status_code == 200, response.text
    assert "japan" in response.json()["transcript"].lower()


# --- 9. a turn whose audio can't be written is not stored -------------------------------
async def test_9_a_reply_that_cannot_be_written_stores_nothing(web, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("bot.infra.reply_audio.os.fsync", disk_full)
    response = await web.post("/api/chat", headers=CSRF, data={"text": "Hello there"})
    assert response.status_code == 500 and response.json() == {
        "error": "Something went wrong on my side."}
    assert stored(web.app) == 0
    folder = web.app.reply_audio.folder("web")
    assert not folder.exists() or list(folder.iterdir()) == []


# --- 10. Host allow-list, timeouts, the global in-flight bound ------------------------------
async def test_10_a_foreign_host_name_is_refused(web):
    rebound = await web.get("/", headers={"Host": "attacker.example"})
    assert rebound.status_code == 421 and "host" in rebound.json()["error"]
    posted = await web.post("/api/chat", headers={**CSRF, "Host": "attacker.example:8765"},
                            data={"text": "hi"})
    assert posted.status_code == 421 and stored(web.app) == 0
    assert (await web.get("/", headers={"Host": "localhost:8765"})).status_code == 200


async def test_10_extra_host_names_come_from_the_setting(tmp_path, asr, llm, tts):
    app, adapter = await serve(tmp_path, asr, llm, tts, web_allowed_hosts="bot.lan, Other.Lan")
    try:
        async with httpx.AsyncClient(base_url=adapter.url) as client:
            assert (await client.get("/", headers={"Host": "other.lan"})).status_code == 200
            assert (await client.get("/", headers={"Host": "else.lan"})).status_code == 421
    finally:
        await stop_web(app, adapter)


async def test_10_half_open_connections_are_closed(tmp_path, asr, llm, tts):
    app, adapter = await serve(tmp_path, asr, llm, tts, web_header_timeout_seconds=0.5,
                               web_body_timeout_seconds=1.0)
    port = int(adapter.url.rsplit(":", 1)[1])
    try:
        # Headers that never finish: the server hangs up (recv returns b"").
        partial = await asyncio.to_thread(raw_request, port, b"GET / HTTP/1.1\r\nHost: 127.0.0")
        assert partial == b""
        silent = await asyncio.to_thread(raw_request, port, b"")
        assert silent == b""
        # A body shorter than its Content-Length: 408, not a connection held for minutes.
        short = await asyncio.to_thread(raw_request, port, (
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ChatMan: 1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"text=hi"))
        assert short.startswith(b"HTTP/1.1 408") and b'"error"' in short
        assert stored(app) == 0
    finally:
        await stop_web(app, adapter)


async def test_10_turns_in_flight_are_bounded_for_everybody(tmp_path, asr, llm, tts, monkeypatch):
    app, adapter = await serve(tmp_path, asr, llm, tts, max_turns_in_flight=1)
    held = hold_replies(monkeypatch, app.pipeline.llm)
    entered, release = held.entered, held.release
    try:
        async with httpx.AsyncClient(base_url=adapter.url, timeout=120) as client:
            first = asyncio.create_task(client.post("/api/chat", headers=CSRF,
                                                    data={"text": "Hello"}))
            await asyncio.to_thread(entered.wait, 60)
            # Another conversation (no conversation_id at all) is refused, not queued.
            second = await client.post("/api/chat", headers=CSRF, data={"text": "Hi"})
            assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
            assert "a lot of people" in second.json()["error"]
            assert (await client.get("/api/admin/models", headers=ADMIN)).status_code == 200
            release.set()
            assert (await first).status_code == 200
            again = await client.post("/api/chat", headers=CSRF, data={"text": "Hi"})
            assert again.status_code == 200
    finally:
        release.set()
        await stop_web(app, adapter)


# --- 11. bad admin input is a 4xx {"error"}, never a 500 ------------------------------------
@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/api/admin/pending?page=99999999999999999999", {}),
    ("GET", "/api/admin/pending?page=0", {}),
    ("GET", "/api/admin/pending?page=abc", {}),
    ("POST", "/api/admin/retrain", {"json": {"max_steps": "abc"}}),
    ("POST", "/api/admin/retrain", {"json": {"max_steps": [1]}}),
    ("POST", "/api/admin/retrain", {"json": {"max_steps": 10**12}}),
    ("POST", "/api/admin/retrain", {"content": b"{not json", "headers": {
        "Content-Type": "application/json"}}),
    ("POST", "/api/admin/pairs/1/correct", {"json": {"answer": 123}}),
    ("POST", "/api/admin/pairs/1/correct", {"json": {"answer": ""}}),
    ("POST", "/api/admin/pairs/1/correct", {"content": b"[", "headers": {
        "Content-Type": "application/json"}}),
    ("POST", "/api/admin/pairs/99999999999999999999999/approve", {}),
    ("POST", "/api/admin/pairs/18446744073709551617/reject", {}),
    ("POST", "/api/admin/pairs/-1/approve", {}),
    ("POST", "/api/admin/pairs/12345/approve", {}),
    ("POST", "/api/admin/models/nope/activate", {}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": "abc"}}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": [1]}}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": 10**30}}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": -1}}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": 1, "force": True}}),
    ("POST", "/api/admin/train/cancel", {"json": {"job_id": 12345}}),
    ("POST", "/api/admin/train/cancel", {"content": b"{not json", "headers": {
        "Content-Type": "application/json"}}),
    ("POST", "/api/admin/retrain", {"content": b"x" * 100_000, "headers": {
        "Content-Type": "application/json"}}),
    ("GET", "/api/nothing-here", {}),
])
async def test_11_bad_admin_input_gets_a_4xx_error(web, method, path, kwargs):
    headers = {**ADMIN, **kwargs.pop("headers", {})}
    response = await web.request(method, path, headers=headers, **kwargs)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert set(response.json()) <= ERROR_KEYS and response.json()["error"]
    assert web.app.jobs.open_jobs() == []


async def test_11_huge_and_invisible_text_fields_get_a_4xx_error(web):
    huge = await web.post("/api/chat", headers=CSRF, files={"text": (None, "a" * (2 * 2**20))})
    assert 400 <= huge.status_code < 500 and set(huge.json()) <= ERROR_KEYS
    for invisible in ("\0\0\0", "\u200b\u200b", "\u200d\ufeff \u2060"):
        empty = await web.post("/api/chat", headers=CSRF, data={"text": invisible})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
    assert stored(web.app) == 0


# --- 7 (web part). an operator's token is never printed -----------------------------------
async def test_7_an_operator_set_admin_token_is_never_printed(tmp_path, asr, llm, tts, capsys):
    app, adapter = await serve(tmp_path, asr, llm, tts)
    await stop_web(app, adapter)
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and "CHATMAN_WEB_ADMIN_TOKEN" in out.out
    app, adapter = await serve(tmp_path, asr, llm, tts, web_admin_token=None)
    await stop_web(app, adapter)
    assert f"#token={adapter.admin_token}" in capsys.readouterr().out  # generated: shown once


# --- 8 (web part). forgetting a conversation ---------------------------------------------
async def test_8_the_web_console_forgets_its_conversation_and_its_audio(web):
    first = (await web.post("/api/chat", headers=CSRF, data={"text": "My secret is 4242."})).json()
    conversation = first["conversation_id"]
    await web.post("/api/chat", headers=CSRF, data={"text": "Bye", "conversation_id": conversation})
    other = (await web.post("/api/chat", headers=CSRF, data={"text": "Hello"})).json()
    files = list(web.app.reply_audio.folder("web").iterdir())
    assert len(files) == 3 and (await web.get(first["audio_url"])).status_code == 200

    forgot = await web.post("/api/forget", headers=CSRF, json={"conversation_id": conversation})
    assert forgot.status_code == 200, forgot.text
    assert forgot.json()["data"]["exchanges"] == 2 and forgot.json()["data"]["audio_files"] == 2
    assert (await web.get(first["audio_url"])).status_code == 404
    assert (await web.get(other["audio_url"])).status_code == 200
    assert [e.id for e in web.app.store.exchanges()] == [other["exchange_id"]]
    with web.app.store.session() as s:
        assert all("4242" not in p.question for p in s.query(Pair))
    bad = await web.post("/api/forget", headers=CSRF, json={"conversation_id": "../../etc"})
    assert bad.status_code == 400


# --- 12. the streaming chat and the conversation read-back (issue 15) ----------------------
async def test_12_the_stream_refuses_hostile_input_as_plain_json_and_keeps_nothing(web):
    """Everything /api/chat refuses, /api/chat/stream refuses the same way before any event:
    scripts that would read files or open sockets, huge and invisible text."""
    before = udp_ports()
    refusals = [
        await web.post("/api/chat/stream", headers=CSRF, **upload(FFCONCAT, "x.ffconcat")),
        await web.post("/api/chat/stream", headers=CSRF, **upload(SDP, "voice.sdp")),
        await web.post("/api/chat/stream", headers=CSRF,
                       files={"text": (None, "a" * (2 * 2**20))}),
        *[await web.post("/api/chat/stream", headers=CSRF, data={"text": invisible})
          for invisible in ("\0\0\0", "\u200b\u200b", "\u200d\ufeff \u2060")],
    ]
    for response in refusals:
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) <= ERROR_KEYS and response.json()["error"]
    assert udp_ports() <= before
    assert stored(web.app) == 0
    assert not web.adapter.api.state.turns and not web.app.queues._pending
    await assert_alive(web)


@pytest.mark.parametrize("conversation", [
    "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a" * 65, "short", "ab%00cdefghijklmnopq",
    "%E2%80%AEmoc.exe-abcdefghijkl", "x" * 10_000,
])
async def test_12_reading_a_conversation_back_takes_only_a_plain_long_id(web, conversation):
    response = await web.get(f"/api/conversation/{conversation}")
    # A decoded slash leaves the route (404); anything else is not an id (400). Never a 500,
    # never a file.
    expected = 404 if "%2F" in conversation else 400
    assert response.status_code == expected, (response.status_code, response.text)
    assert set(response.json()) <= ERROR_KEYS and response.json()["error"]
    await assert_alive(web)
