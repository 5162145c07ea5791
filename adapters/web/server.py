"""The local web console (FastAPI): talk to the persona and run the admin loop in a browser.

Platform ``web``: the same pipeline and admin service as Telegram and Discord. The chat API is
open on the (loopback by default) address; admin routes need the admin token. Every
state-changing request must carry the ``X-ChatMan`` header, which a cross-site form or image
can't send, and, when the browser states an ``Origin``, come from this very host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
import uuid
from collections import deque
from importlib import resources
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from bot.admin import Actor, CommandResult
from bot.app import ChatmanApp
from bot.chat_queue import Busy, ChatQueues
from bot.errors import AudioTooLarge, UserFacingError
from bot.types import ChatKind, ChatRef, Incoming, UserRef
from training.jobs import Notice

log = logging.getLogger(__name__)

PLATFORM = "web"
CSRF_HEADER = "x-chatman"
AUDIO_NAME = re.compile(r"^[0-9a-f]{32}\.ogg$")
CONVERSATION = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
ADMIN = Actor(PLATFORM, "admin", "Web admin", granted_admin=True)
FORM_OVERHEAD = 16 * 1024  # multipart boundaries and the small text fields around a file


def _page(name: str) -> str:
    return resources.files("adapters.web").joinpath("static", name).read_text(encoding="utf-8")


def create_api(app: ChatmanApp, admin_token: str) -> FastAPI:
    settings = app.settings
    replies = settings.data_dir / "web-replies"
    replies.mkdir(parents=True, exist_ok=True)
    queues = ChatQueues(settings.chat_queue_limit)
    notices: deque[dict] = deque(maxlen=200)

    async def remember(chat: ChatRef, notice: Notice) -> None:
        notices.append({"job_id": notice.job_id, "text": notice.text, "final": notice.final,
                        "plot": bool(notice.image)})

    app.notifiers[PLATFORM] = remember
    api = FastAPI(title="ChatMan", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @api.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path == "/api/chat":
            # Refused before the body is read: form parsing would otherwise spool it all.
            try:
                app.codec.check_declared(
                    max(0, int(request.headers.get("content-length") or 0) - FORM_OVERHEAD)
                    or None, None)
            except UserFacingError as err:
                log.info("web: refused an upload: %s", err)
                return JSONResponse({"error": err.user_message}, status_code=413)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if request.headers.get(CSRF_HEADER) != "1" or (
                    origin and origin.split("://", 1)[-1] != request.headers.get("host")):
                log.warning("web: refused a cross-site %s %s", request.method, request.url.path)
                return JSONResponse({"error": "Cross-site request refused."}, status_code=403)
        if request.url.path.startswith("/api/admin/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), admin_token.encode()):
                log.warning("web: refused admin request %s without a valid token",
                            request.url.path)
                return JSONResponse({"error": "Admin token required."}, status_code=401)
        return await call_next(request)

    @api.exception_handler(UserFacingError)
    async def user_error(request: Request, err: UserFacingError):
        status = 413 if isinstance(err, AudioTooLarge) else 429 if isinstance(err, Busy) else 400
        log.info("web: refused %s: %s", request.url.path, err)
        return JSONResponse({"error": err.user_message}, status_code=status)

    @api.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return _page("index.html")

    @api.get("/admin", response_class=HTMLResponse)
    async def admin_page() -> str:
        return _page("admin.html")

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in ("app.css", "chat.js", "admin.js"):
            raise HTTPException(404)
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(_page(name), media_type=media)

    @api.post("/api/chat")
    async def chat(text: str | None = Form(None), conversation_id: str | None = Form(None),
                   audio: UploadFile | None = None) -> dict:
        conversation = conversation_id or uuid.uuid4().hex[:16]
        if not CONVERSATION.match(conversation):
            raise HTTPException(400, "bad conversation_id")
        data = None
        if audio is not None:
            data = await audio.read(settings.max_upload_bytes + 1)
            app.codec.check_declared(len(data), None)
        chat_ref = ChatRef(PLATFORM, conversation, ChatKind.PRIVATE)
        async with queues.enter(chat_ref):
            turn = await app.pipeline.handle(Incoming(
                chat=chat_ref, user=UserRef(PLATFORM, conversation, "Web visitor"), audio=data,
                text=text, message_id=None, want_voice=True))
        name = f"{uuid.uuid4().hex}.ogg"
        if turn.voice is not None:
            await asyncio.to_thread((replies / name).write_bytes, turn.voice.data)
            await asyncio.to_thread(app.store.set_reply_message_id, turn.exchange_id, name)
        return {"conversation_id": conversation, "transcript": turn.transcript,
                "reply": turn.reply, "exchange_id": turn.exchange_id,
                "audio_url": f"/api/audio/{name}" if turn.voice is not None else None,
                "duration_s": turn.voice.duration_s if turn.voice else None,
                "timings_ms": turn.timings_ms}

    @api.get("/api/audio/{name}")
    async def reply_audio(name: str) -> FileResponse:
        path = replies / name
        if not AUDIO_NAME.match(name) or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path, media_type="audio/ogg")

    # --- admin ------------------------------------------------------------------------
    async def run(text: str) -> dict:
        result: CommandResult = await asyncio.to_thread(
            app.admin.execute, ADMIN, text, None, ChatRef(PLATFORM, "admin"))
        return result.to_dict()

    @api.get("/api/admin/pending")
    async def pending(page: int = 1) -> dict:
        return await run(f"/pending {page}")

    @api.post("/api/admin/pairs/{pair_id}/{action}")
    async def decide(pair_id: int, action: str, request: Request) -> dict:
        if action not in ("approve", "reject", "correct"):
            raise HTTPException(404)
        if action != "correct":
            return await run(f"/{action} {pair_id}")
        body = await request.json()
        answer, question = (body.get("answer") or "").strip(), (body.get("question") or "").strip()
        return await run(f"/correct {pair_id} " + (f"{question} | {answer}" if question else answer))

    @api.get("/api/admin/dataset")
    async def dataset() -> dict:
        return await run("/dataset")

    @api.post("/api/admin/retrain")
    async def retrain(request: Request) -> dict:
        body = await request.json() if await request.body() else {}
        steps = body.get("max_steps")
        return await run(f"/retrain {int(steps)}" if steps else "/retrain")

    @api.get("/api/admin/trainstatus")
    async def trainstatus() -> dict:
        result = await run("/trainstatus")
        result["notices"] = list(notices)[-20:]
        return result

    @api.get("/api/admin/models")
    async def models() -> dict:
        return await run("/models")

    @api.post("/api/admin/models/{version}/activate")
    async def activate(version: str) -> dict:
        return await run(f"/activate {version}")

    @api.post("/api/admin/rollback")
    async def rollback() -> dict:
        return await run("/rollback")

    @api.get("/api/admin/models/{version}/loss.png")
    async def loss_plot(version: str) -> FileResponse:
        found = await asyncio.to_thread(app.registry.get, version)
        plot = Path(found.directory) / "loss.png" if found and found.directory else None
        if plot is None or not plot.is_file():
            raise HTTPException(404)
        return FileResponse(plot, media_type="image/png")

    return api


class WebAdapter:
    def __init__(self, app: ChatmanApp) -> None:
        s = app.settings
        self.app = app
        self.admin_token = (s.web_admin_token.get_secret_value() if s.web_admin_token
                            else secrets.token_urlsafe(24))
        self.api = create_api(app, self.admin_token)
        self.server = uvicorn.Server(uvicorn.Config(
            self.api, host=s.web_host, port=s.web_port, log_level="warning", access_log=False,
            lifespan="off"))
        self._task: asyncio.Task | None = None
        self.url = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name="web-console")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # e.g. the port is taken
            await asyncio.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        # Printed, not logged: the token must not end up in log files.
        print(f"ChatMan web console: {self.url}/   admin: {self.url}/admin#token="
              f"{self.admin_token}", flush=True)

    async def stop(self) -> None:
        self.app.notifiers.pop(PLATFORM, None)
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
