"""The local web console: its JSON API over HTTP, and a real headless Chromium using the pages."""

from __future__ import annotations

import os
import shutil
from typing import Any

import httpx
import pytest

from adapters.app import ChatmanApp
from bot.infra.storage.models import Pair
from tests.conftest import REPO, start_web, stop_web
from tests.fakes import eventually
from tests.speech_checks import recall

SAMPLE = REPO / "persona" / "manman" / "samples" / "question.ogg"
TOKEN = "test-admin-token-123"
CSRF = {"X-ChatMan": "1"}
ADMIN = {**CSRF, "Authorization": f"Bearer {TOKEN}"}


class WebClient(httpx.AsyncClient):
    """An HTTP client of the console, with the app behind it at hand."""

    def __init__(self, app: ChatmanApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app


@pytest.fixture
async def web(tmp_path, asr, llm, tts):
    app, adapter = await start_web(tmp_path, asr, llm, tts, web_admin_token=TOKEN,
                                   max_upload_mb=1)
    async with WebClient(app, base_url=adapter.url, timeout=120) as client:
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed (.ci/run installs it)")
async def test_a_browser_asks_by_upload_hears_the_reply_and_an_admin_approves(web, tmp_path):
    from playwright.async_api import async_playwright

    assert CHROMIUM, "CI must run the browser test: .ci/run installs chromium"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--autoplay-policy=no-user-gesture-required"])
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
