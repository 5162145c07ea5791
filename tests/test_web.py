"""The local web console: its JSON API over HTTP, and a real headless Chromium using the pages."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from typing import Any

import httpx
import pytest

from adapters.app import ChatmanApp
from adapters.web.server import WebAdapter
from bot.infra.storage.models import Pair
from tests.conftest import REPO, start_web, stop_web
from tests.fakes import eventually
from tests.fakes.models import hold_replies
from tests.speech_checks import recall

SAMPLE = REPO / "persona" / "manman" / "samples" / "question.ogg"
TOKEN = "test-admin-token-123"
CSRF = {"X-ChatMan": "1"}
ADMIN = {**CSRF, "Authorization": f"Bearer {TOKEN}"}


class WebClient(httpx.AsyncClient):
    """An HTTP client of the console, with the app behind it at hand."""

    def __init__(self, app: ChatmanApp, adapter: WebAdapter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app, self.adapter = app, adapter


@pytest.fixture
async def web(tmp_path, asr, llm, tts):
    app, adapter = await start_web(tmp_path, asr, llm, tts, web_admin_token=TOKEN,
                                   max_upload_mb=1)
    async with WebClient(app, adapter, base_url=adapter.url, timeout=120) as client:
        yield client
    await stop_web(app, adapter)


async def test_chat_api_answers_a_voice_note_with_playable_audio(web, asr, codec):
    response = await web.post("/api/chat", headers=CSRF,
                              files={"audio": ("q.ogg", SAMPLE.read_bytes(), "audio/ogg")})
    assert response.status_code == 200, response.text
    data = response.json()
    assert recall("who are you and what do you do", data["transcript"]) >= 0.8
    assert data["reply"] and data["timings_ms"]["total"] > 0
    audio = await web.get(data["audio_url"])
    assert audio.headers["content-type"] == "audio/ogg" and audio.content[:4] == b"OggS"
    heard = asr.transcribe(codec.decode(audio.content))
    assert recall(data["reply"], heard.text) >= 0.5, (data["reply"], heard.text)
    # The same conversation continues with memory.
    again = (await web.post("/api/chat", headers=CSRF, data={
        "text": "Thanks!", "conversation_id": data["conversation_id"]})).json()
    assert again["conversation_id"] == data["conversation_id"]
    history = web.app.store.exchanges()
    assert len(history) == 2 and history[0].chat_id == history[1].chat_id


async def test_bad_input_gets_clear_errors(web):
    too_big = await web.post("/api/chat", headers=CSRF,
                             files={"audio": ("big.ogg", b"\0" * (2 * 2**20), "audio/ogg")})
    assert too_big.status_code == 413 and "too big" in too_big.json()["error"]
    junk = await web.post("/api/chat", headers=CSRF,
                          files={"audio": ("x.ogg", b"not audio at all", "audio/ogg")})
    assert junk.status_code == 400 and "couldn't read that file" in junk.json()["error"]
    empty = await web.post("/api/chat", headers=CSRF, data={"text": "  "})
    assert empty.status_code == 400
    assert (await web.get("/api/audio/../../etc/passwd")).status_code == 404
    assert web.app.store.exchanges() == []


async def test_cross_site_posts_and_admin_without_token_change_nothing(web):
    # A form on another site can't add the header; a fetch from another origin is refused.
    assert (await web.post("/api/chat", data={"text": "hi"})).status_code == 403
    forged = await web.post("/api/chat", data={"text": "hi"},
                            headers={**CSRF, "Origin": "http://evil.example"})
    assert forged.status_code == 403
    web.app.curation.add("What is ChatMan?", "My voice bot.", "test")  # pair #1, approved
    web.app.jobs.enqueue("test:1")
    for method, path in (("GET", "/api/admin/pending"), ("POST", "/api/admin/retrain"),
                         ("POST", "/api/admin/rollback"), ("POST", "/api/admin/pairs/1/reject"),
                         ("POST", "/api/admin/train/cancel")):
        response = await web.request(method, path, headers={**CSRF, "Authorization": "Bearer no"})
        assert response.status_code == 401, path
    assert [j.status for j in web.app.jobs.open_jobs()] == ["queued"]
    with web.app.store.session() as s:
        assert [p.status for p in s.query(Pair)] == ["approved"]


async def test_admin_api_curates_retrains_and_lists_versions(web):
    await web.post("/api/chat", headers=CSRF, data={"text": "Who are you?"})
    pending = (await web.get("/api/admin/pending", headers=ADMIN)).json()
    pair_id = pending["pairs"][0]["id"]
    fixed = await web.post(f"/api/admin/pairs/{pair_id}/correct", headers=ADMIN,
                           json={"answer": "I'm Manman."})
    assert fixed.json()["message"].startswith(f"Corrected and approved #{pair_id}")
    stats = (await web.get("/api/admin/dataset", headers=ADMIN)).json()
    assert stats["data"]["by_status"]["approved"] == 1
    queued = (await web.post("/api/admin/retrain", headers=ADMIN, json={"max_steps": 3})).json()
    assert queued["data"]["job"]["max_steps"] == 3
    status = (await web.get("/api/admin/trainstatus", headers=ADMIN)).json()
    assert "#1 queued" in status["message"] and status["notices"] == []
    cancelled = (await web.post("/api/admin/train/cancel", headers=ADMIN, json={})).json()
    assert cancelled["message"].startswith("Training job #1 cancelled; the base model (")
    assert cancelled["data"]["cancelled"] and cancelled["data"]["job"]["error"] == \
        "cancelled by web:admin"
    nothing = await web.post("/api/admin/train/cancel", headers=ADMIN, json={"job_id": 1})
    assert nothing.status_code == 400 and "already finished (cancelled)" in nothing.json()["error"]
    bad = await web.post("/api/admin/train/cancel", headers=ADMIN, json={"job_id": "1; drop"})
    assert bad.status_code == 400
    models = (await web.get("/api/admin/models", headers=ADMIN)).json()
    assert models["data"]["versions"] == []
    nothing = await web.post("/api/admin/rollback", headers=ADMIN)
    assert nothing.status_code == 400 and "Nothing to roll back" in nothing.json()["error"]


async def test_admin_json_fields_reach_the_service_unparsed(web):
    """Issue 14: an answer with "|" in it is one answer; the question stays as it was."""
    web.app.curation.add("How do I find foo?", "No idea.", "test")
    fixed = await web.post("/api/admin/pairs/1/correct", headers=ADMIN,
                           json={"answer": "ls | grep foo"})
    assert fixed.status_code == 200 and fixed.json()["pairs"][0]["answer"] == "ls | grep foo"
    both = await web.post("/api/admin/pairs/1/correct", headers=ADMIN,
                          json={"answer": "find . -name foo", "question": "Where is foo | bar?"})
    assert both.json()["pairs"][0]["question"] == "Where is foo | bar?"
    empty = await web.post("/api/admin/pairs/1/correct", headers=ADMIN, json={"answer": "  "})
    assert empty.status_code == 400
    with web.app.store.session() as s:
        pair = s.get(Pair, 1)
        assert (pair.question, pair.answer) == ("Where is foo | bar?", "find . -name foo")
    actions = [e.after["answer"] for e in web.app.curation.audit_log(1) if e.action == "correct"]
    assert actions == ["ls | grep foo", "find . -name foo"]


# --- the streamed chat (/api/chat/stream) --------------------------------------------------
Events = list[tuple[str, dict[str, Any]]]


@pytest.fixture
async def talkative(tmp_path, asr, llm, tts):
    """The console with replies long enough to have several sentences in the making."""
    app, adapter = await start_web(tmp_path, asr, llm, tts, web_admin_token=TOKEN,
                                   max_upload_mb=1, max_new_tokens=60)
    async with WebClient(app, adapter, base_url=adapter.url, timeout=120) as client:
        yield client
    await stop_web(app, adapter)


async def stream(client: httpx.AsyncClient, **kwargs: Any) -> tuple[httpx.Response, Events]:
    """POST /api/chat/stream; its server-sent events as (name, data), or none for a refusal."""
    events: Events = []
    async with client.stream("POST", "/api/chat/stream", headers=CSRF, **kwargs) as response:
        if not response.headers["content-type"].startswith("text/event-stream"):
            await response.aread()
            return response, events
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return response, events


def of(events: Events, name: str) -> list[dict[str, Any]]:
    return [data for kind, data in events if kind == name]


def words(text: str) -> list[str]:
    return text.split()


async def test_the_stream_tells_a_voice_note_as_it_happens(talkative, asr, codec):
    response, events = await stream(talkative, files={
        "audio": ("q.ogg", SAMPLE.read_bytes(), "audio/ogg")})
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    kinds = [k for k, _ in events]
    stages = [d["name"] for d in of(events, "stage")]
    assert stages == ["listening", "thinking", "speaking"], kinds
    # listening, heard, thinking; then the model writes; "speaking" comes with the first
    # sentence's audio; done closes the stream.
    assert kinds[:4] == ["stage", "heard", "stage", "delta"] and kinds[-1] == "done", kinds
    speaking = events.index(("stage", {"name": "speaking"}))
    assert kinds[speaking + 1] == "sentence" and "sentence" not in kinds[:speaking]
    heard, done = of(events, "heard")[0], of(events, "done")[0]
    assert recall("who are you and what do you do", heard["transcript"]) >= 0.8
    assert heard["language"] == "en" and heard["conversation_id"] == done["conversation_id"]

    sentences = of(events, "sentence")
    assert [s["index"] for s in sentences] == list(range(len(sentences)))
    assert " ".join(s["text"] for s in sentences) == done["reply"]
    # The deltas are the model's words as written; the reply is cut from them.
    written = words("".join(d["text"] for d in of(events, "delta")))
    assert written[:3] == words(done["reply"])[:3], (written, done["reply"])
    for s in sentences:
        clip = base64.b64decode(s["audio"])
        assert clip[:4] == b"OggS" and s["mime"].startswith("audio/ogg") and s["duration_s"] > 0
    said = asr.transcribe(codec.decode(base64.b64decode(sentences[0]["audio"])))
    assert recall(sentences[0]["text"], said.text) >= 0.5, (sentences[0]["text"], said.text)

    # done is what /api/chat answers, and what was stored.
    (row,) = talkative.app.store.exchanges()
    assert (done["exchange_id"], done["transcript"], done["reply"]) == (
        row.id, row.transcript, row.reply_text)
    assert done["timings_ms"]["first_audio"] <= done["timings_ms"]["total"]
    whole = await talkative.get(done["audio_url"])
    assert whole.status_code == 200 and whole.content[:4] == b"OggS"


async def test_stream_refusals_before_the_answer_are_json_like_api_chat(web):
    long = await web.post("/api/chat/stream", headers=CSRF, data={"text": "a" * 2001})
    assert long.status_code == 400 and long.headers["content-type"] == "application/json"
    assert long.json()["code"] == "text.too_long" and "2000" in long.json()["error"]
    empty = await web.post("/api/chat/stream", headers=CSRF, data={"text": "  "})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    junk = await web.post("/api/chat/stream", headers=CSRF,
                          files={"audio": ("x.ogg", b"not audio at all", "audio/ogg")})
    assert junk.status_code == 400 and "couldn't read that file" in junk.json()["error"]
    # The body limit of /api/chat holds here too (1 MB in this console).
    too_big = await web.post("/api/chat/stream", headers=CSRF,
                             files={"audio": ("big.ogg", b"\0" * (2 * 2**20), "audio/ogg")})
    assert too_big.status_code == 413 and "too big" in too_big.json()["error"]
    bad = await web.post("/api/chat/stream", headers=CSRF,
                         data={"text": "hi", "conversation_id": "../x"})
    assert bad.status_code == 400
    assert (await web.post("/api/chat/stream", data={"text": "hi"})).status_code == 403
    assert web.app.store.exchanges() == []
    assert web.app.pipeline.turns.count == 0 and not web.app.queues._pending


async def test_a_busy_conversation_is_refused_before_the_stream(tmp_path, asr, llm, tts,
                                                                 monkeypatch):
    app, adapter = await start_web(tmp_path, asr, llm, tts, chat_queue_limit=1)
    held = hold_replies(monkeypatch, app.pipeline.llm)
    entered, release = held.entered, held.release
    try:
        async with httpx.AsyncClient(base_url=adapter.url, timeout=120) as client:
            first = asyncio.create_task(stream(client, data={"text": "Hello",
                                                             "conversation_id": "conv-busy"}))
            await asyncio.to_thread(entered.wait, 60)
            second = await client.post("/api/chat/stream", headers=CSRF, data={
                "text": "Hi", "conversation_id": "conv-busy"})
            assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
            assert second.json()["code"]
            release.set()
            response, events = await first
            assert response.status_code == 200 and events[-1][0] == "done"
    finally:
        release.set()
        await stop_web(app, adapter)


async def test_a_failure_after_the_stream_began_is_an_error_event(web, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bot.infra.reply_audio.os.fsync", disk_full)
    response, events = await stream(web, data={"text": "Hello there"})
    assert response.status_code == 200
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["heard", "stage", "delta"] and kinds[-1] == "error", kinds
    assert events[-1][1]["code"] == "error.internal" and events[-1][1]["error"]
    assert web.app.store.exchanges() == []
    folder = web.app.reply_audio.folder("web")
    assert not folder.exists() or list(folder.iterdir()) == []


async def test_a_client_that_goes_away_leaves_the_turn_to_finish(web):
    async with web.stream("POST", "/api/chat/stream", headers=CSRF,
                          data={"text": "Tell me about yourself."}) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: heard"):
                break  # and hang up
    # The turn goes on without its client: wait for it to end...
    running = list(web.adapter.api.state.turns)
    await asyncio.wait_for(asyncio.gather(*running), 60)
    # ...stored with its audio (all the user would have received exists), and no task
    # outlives it.
    (row,) = web.app.store.exchanges()
    assert web.app.reply_audio.path("web", row.reply_message_id) is not None
    assert not web.adapter.api.state.turns
    assert web.app.pipeline.turns.count == 0 and not web.app.queues._pending


async def test_a_conversation_is_given_back_after_a_reload(web):
    first = (await web.post("/api/chat", headers=CSRF, data={"text": "Who are you?"})).json()
    conversation = first["conversation_id"]
    _, events = await stream(web, data={"text": "And what do you do?",
                                        "conversation_id": conversation})
    second = of(events, "done")[0]
    await web.post("/api/chat", headers=CSRF, data={"text": "Someone else"})

    restored = await web.get(f"/api/conversation/{conversation}")
    assert restored.status_code == 200
    turns = restored.json()["turns"]
    assert [(t["exchange_id"], t["transcript"], t["reply"], t["audio_url"]) for t in turns] == [
        (d["exchange_id"], d["transcript"], d["reply"], d["audio_url"]) for d in (first, second)]
    assert (await web.get(turns[1]["audio_url"])).content[:4] == b"OggS"
    assert (await web.get("/api/conversation/nobody-here-at-all")).json()["turns"] == []
    # A short (guessable) id can talk, but not read its conversation back.
    assert (await web.get("/api/conversation/abcdef")).status_code == 400
    assert (await web.get("/api/conversation/..%2Fetc")).status_code in (400, 404)

    await web.post("/api/forget", headers=CSRF, json={"conversation_id": conversation})
    assert (await web.get(f"/api/conversation/{conversation}")).json()["turns"] == []


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--autoplay-policy=no-user-gesture-required",
    # A microphone that plays a beep, granted without asking: hold-to-talk can record.
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
# Watches the chat page from its first moment: each length the reply being written had, every
# play() with whether it was a sentence clip (blob:) or the whole reply, and when the whole
# reply's player appeared (the `done` event), in page milliseconds.
WATCH_THE_REPLY = """
window.seen = { lengths: [], plays: [], done: null, busyWhileWriting: [] };
const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function () {
  window.seen.plays.push({ t: performance.now(), clip: this.src.startsWith("blob:") });
  return play.apply(this, arguments);
};
new MutationObserver(() => {
  const bot = document.querySelector("#log li.bot:last-of-type");
  if (!bot || window.seen.done !== null) return;
  const length = bot.querySelector(".text").textContent.length;
  const last = window.seen.lengths[window.seen.lengths.length - 1];
  if (!last || last.length !== length) {
    window.seen.lengths.push({ t: performance.now(), length });
    window.seen.busyWhileWriting.push(document.getElementById("send").disabled &&
                                      document.getElementById("text").disabled);
  }
  if (bot.querySelector("audio[src^='/api/audio/']")) window.seen.done = performance.now();
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
async def test_a_browser_asks_by_upload_hears_the_reply_and_an_admin_approves(web, tmp_path):
    from playwright.async_api import async_playwright

    assert CHROMIUM, "CI must run the browser test: .ci/run installs chromium"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(str(web.base_url) + "/")
            await page.set_input_files("#upload", str(SAMPLE))
            await page.wait_for_selector("#log li.bot audio", timeout=120_000)
            transcript = await page.inner_text("#log li.transcript")
            assert recall("who are you and what do you do", transcript) >= 0.8
            assert (await page.inner_text("#log li.bot")).strip()
            # The audio element's source is a playable OGG/Opus file.
            duration = await page.eval_on_selector("#log li.bot audio", """a => new Promise(
                (ok, fail) => { if (a.readyState >= 1) ok(a.duration);
                  a.onloadedmetadata = () => ok(a.duration); a.onerror = () => fail(a.error.code); })""")
            assert duration > 0.5
            src = await page.get_attribute("#log li.bot audio", "src")
            assert (await web.get(src)).content[:4] == b"OggS"

            await page.goto(str(web.base_url) + f"/admin#token={TOKEN}")
            await page.click(".pair .approve")
            await page.wait_for_selector("#pending p")  # the list reloads: nothing pending

            # Retrain, then cancel: each button shows what the server answered.
            await page.fill("#max-steps", "3")
            await page.click("#retrain")
            await page.wait_for_function("""() => document.getElementById("train-message")
                .textContent.startsWith("Queued training job #1")""")
            await page.click("#cancel-train")
            await page.wait_for_function("""() => document.getElementById("train-message")
                .textContent.startsWith("Training job #1 cancelled")""")

            # Rolling back asks first; only an accepted dialog rolls back.
            v1, v2 = exported_versions(web.app, tmp_path, 2)
            await page.reload()
            await page.wait_for_selector(f"#models td:text-is('{v2}')")
            asked: list[str] = []

            def answer(accept: bool):
                async def handle(dialog) -> None:
                    asked.append(dialog.message)
                    await (dialog.accept() if accept else dialog.dismiss())
                return handle

            page.once("dialog", answer(False))
            await page.click("#rollback")
            page.once("dialog", answer(True))
            await page.click("#rollback")
            await eventually(lambda: (a := web.app.registry.active()) and a.version == v1, 30,
                             lambda: f"active: {web.app.registry.active()}")
        finally:
            await browser.close()
    with web.app.store.session() as s:
        pair = s.query(Pair).one()
    assert pair.status == "approved" and pair.decided_by == "web:admin"
    assert web.app.jobs.get(1).status == "cancelled"
    assert asked == [f"Roll back from {v2} to the version before it?"] * 2
    # One rollback (the dismissed dialog sent none): v2 retired, v1 answers.
    assert {v.version: v.status for v in web.app.registry.list()} == {v1: "active",
                                                                      v2: "retired"}


def exported_versions(app, folder, n: int) -> list[str]:
    """``n`` versions with a model folder, activated in turn (the last one answers)."""
    names = []
    for _ in range(n):
        v = app.registry.create_candidate(base_model="starter", config={}, job_id=None,
                                          created_by="test").version
        (folder / v).mkdir()
        (folder / v / "config.json").write_text("{}")
        app.registry.record_result(v, base_version="base", directory=folder,
                                   model_dir=folder / v, dataset_sha256="ab" * 32,
                                   dataset_rows=4, steps=1, metrics={}, reasons=[])
        app.registry.activate(v, "test:ada")
        names.append(v)
    return names


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
async def test_a_browser_sees_the_reply_written_and_hears_it_before_it_is_done(talkative):
    from playwright.async_api import async_playwright

    assert CHROMIUM, "CI must run the browser test: .ci/run installs chromium"
    web = talkative
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            await page.add_init_script(WATCH_THE_REPLY)
            await page.goto(str(web.base_url) + "/")
            question = "Tell me about yourself and about your work."
            await page.fill("#text", question)
            await page.press("#text", "Enter")
            await page.wait_for_selector("#log li.bot audio", timeout=180_000)
            seen = await page.evaluate("window.seen")
            clips = [play["t"] for play in seen["plays"] if play["clip"]]
            assert clips and seen["done"] is not None, seen
            # The first sentence was heard before the reply was done, while it was written.
            assert clips[0] < seen["done"], seen
            assert len({n["length"] for n in seen["lengths"] if n["t"] < clips[0]}) >= 2, seen
            assert all(seen["busyWhileWriting"]), seen  # inputs were disabled while sending
            assert await page.input_value("#text") == ""  # accepted, so cleared
            assert await page.is_enabled("#send")
            (row,) = web.app.store.exchanges()
            assert await page.inner_text("#log li.you") == question
            assert (await page.inner_text("#log li.bot")).strip() == row.reply_text
            assert await page.evaluate("document.scrollingElement.scrollWidth") <= 390

            # A reload gives the conversation back, audio included.
            conversation = await page.evaluate("localStorage.getItem('chatman-conversation')")
            await page.reload()
            await page.wait_for_selector("#log li.bot audio")
            assert await page.inner_text("#log li.you") == question
            assert (await page.inner_text("#log li.bot")).strip() == row.reply_text
            src = await page.get_attribute("#log li.bot audio", "src")
            assert src == f"/api/audio/{row.reply_message_id}"
            assert await page.evaluate("document.scrollingElement.scrollWidth") <= 390

            # Space in the text field is a space; elsewhere, holding it records a voice note.
            await page.focus("#text")
            await page.keyboard.press("Space")
            assert await page.input_value("#text") == " "
            assert not await page.is_visible("#record.on")
            await page.fill("#text", "")
            await page.evaluate("document.activeElement.blur()")
            async with page.expect_response("**/api/chat/stream", timeout=180_000) as sent:
                await page.keyboard.down("Space")
                await page.wait_for_selector("#record.on")
                await page.keyboard.up("Space")
            answer = await sent.value
            # The fake microphone's beep of a moment: decoded, then answered or found wordless.
            assert "multipart/form-data" in answer.request.headers["content-type"]
            assert answer.status in (200, 400), await answer.text()
            await page.wait_for_function("!document.body.classList.contains('busy')",
                                         timeout=180_000)
            assert await page.locator("#log li.error, #log li.bot").count() >= 2

            # A new conversation: an empty page and another id.
            await page.click("#new")
            assert await page.locator("#log li").count() == 0
            assert await page.evaluate(
                "localStorage.getItem('chatman-conversation')") not in (None, conversation)
        finally:
            await browser.close()

