"""The local web console (FastAPI): talk to the persona and run the admin loop in a browser.

Platform ``web``: the same pipeline and admin service as Telegram and Discord. The chat API is
open on the (loopback by default) address; admin routes need the admin token. Every
state-changing request must carry the ``X-ChatMan`` header, which a cross-site form or image
can't send, and, when the browser states an ``Origin``, come from this very host. Below
FastAPI, :mod:`adapters.web.limits` checks the ``Host`` header and bounds request headers and
bodies in size and time. Every answer that is not a success is ``{"error": …}`` with a 4xx;
a refusal of the user's own input or command adds its ``code`` and ``params``, and its words are
in the persona's language (as are results' ``message``).

``POST /api/chat/stream`` is ``/api/chat`` told as it happens, as server-sent events (see
:func:`create_api`'s ``chat_stream`` for the protocol); ``GET /api/conversation/{id}`` gives a
conversation back to a page that was reloaded.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import secrets
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.app import ChatmanApp
from adapters.health import add_health_routes
from adapters.http_server import LocalServer
from adapters.render import error_json, result_json
from adapters.web.limits import RequestLimits, allowed_hosts
from bot.core.commands import (
    MAX_ID,
    MAX_PAGE,
    MAX_STEPS,
    Activate,
    Actor,
    Approve,
    CancelTraining,
    Command,
    Correct,
    Dataset,
    Forget,
    Models,
    Pending,
    Reject,
    Retrain,
    Rollback,
    TrainStatus,
)
from bot.core.errors import AudioTooLarge, Busy, EngineUnavailable, ServerBusy, UserFacingError
from bot.core.events import Heard, OnEvent, ReplyDelta, Stage, TurnEvent
from bot.core.jobs import Notice
from bot.core.messages import Message
from bot.core.types import ChatKind, ChatRef, Incoming, Turn, UserRef
from bot.core.wording import word
from bot.services.chat_queue import InFlight

log = logging.getLogger(__name__)

PLATFORM = "web"
CHAT_PATH = "/api/chat"
STREAM_PATH = "/api/chat/stream"
#: A reloaded page gets this many of its conversation's last exchanges back.
RESTORE_LIMIT = 200
CSRF_HEADER = "x-chatman"
CONVERSATION = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
#: Reading a conversation back takes an id long enough not to be guessed (the page's are 16
#: random hex digits; a client that chose a short one can still talk, not read it back).
READABLE_CONVERSATION = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
ADMIN = Actor(PLATFORM, "admin", "Web admin", granted_admin=True)
FORM_OVERHEAD = 16 * 1024  # multipart boundaries and the small text fields around a file
JSON_BODY_LIMIT = 64 * 1024  # admin requests are a few fields of text
UPLOAD_THRESHOLD = 32 * 1024  # a chat request larger than this carries a file
PairId = Annotated[int, PathParam(ge=1, le=MAX_ID)]


class CorrectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: str = Field(min_length=1, max_length=8000)
    question: str | None = Field(default=None, max_length=8000)


class RetrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_steps: StrictInt | None = Field(default=None, ge=1, le=MAX_STEPS)


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job_id: StrictInt | None = Field(default=None, ge=1, le=MAX_ID)


class ForgetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: str = Field(pattern=CONVERSATION.pattern)


def _page(name: str) -> str:
    return resources.files("adapters.web").joinpath("static", name).read_text(encoding="utf-8")


def _status(err: UserFacingError) -> int:
    if isinstance(err, EngineUnavailable):
        return 503  # not the user's fault: the model's engine is down, try again later
    return 413 if isinstance(err, AudioTooLarge) else 429 if isinstance(err, Busy) else 400


@dataclass(frozen=True, slots=True)
class _Done:
    """The turn is stored: what /api/chat would have answered."""

    answer: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_Item = TurnEvent | _Done | _Failed


def _sse(event: str, data: dict[str, Any]) -> bytes:
    # One JSON line per event: JSON never holds a raw newline, so no data line is split.
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _event_sse(item: TurnEvent, conversation: str) -> bytes:
    if isinstance(item, Stage):
        return _sse("stage", {"name": item.name})
    if isinstance(item, Heard):
        return _sse("heard", {"conversation_id": conversation, "transcript": item.text,
                              "language": item.language})
    if isinstance(item, ReplyDelta):
        return _sse("delta", {"text": item.text})
    audio = item.audio  # the one kind left: SentenceSpoken
    return _sse("sentence", {
        "index": item.index, "text": item.text,
        "audio": base64.b64encode(audio.data).decode("ascii") if audio else None,
        "mime": "audio/ogg; codecs=opus" if audio else None,
        "duration_s": audio.duration_s if audio else None})


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg")))
    return "Invalid request — " + "; ".join(parts) if parts else "Invalid request."


def create_api(app: ChatmanApp, admin_token: str) -> FastAPI:
    settings = app.settings
    replies = app.reply_audio
    queues = app.queues
    notices: deque[dict[str, Any]] = deque(maxlen=200)

    async def remember(chat: ChatRef, notice: Notice) -> None:
        notices.append({"job_id": notice.job_id, "text": word(notice.message, app.language),
                        **notice.message.to_dict(), "final": notice.final,
                        "plot": bool(notice.image)})

    app.notifiers[PLATFORM] = remember
    api = FastAPI(title="ChatMan", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    # Uploads admitted at once, from their headers on: as many as the pipeline decodes or lets
    # wait. Beyond that an upload is refused before its body is read, so a flood costs no
    # multipart parsing on the event loop that serves everybody.
    uploads = InFlight(app.pipeline.decodes.limit,
                       lambda n: ServerBusy(f"{n} uploads in progress"))

    @api.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
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
        if request.url.path in (CHAT_PATH, STREAM_PATH) and _is_upload(request):
            try:
                with uploads.claim():
                    return await call_next(request)
            except ServerBusy as busy:
                log.info("web: refused an upload: %s", busy)
                # Connection: close stops the rest of the upload at the socket instead of
                # reading it for nothing.
                return JSONResponse(error_json(busy, app.language), status_code=429,
                                    headers={"Retry-After": str(busy.retry_after),
                                             "Connection": "close"})
        return await call_next(request)

    @api.exception_handler(UserFacingError)
    async def user_error(request: Request, err: UserFacingError) -> JSONResponse:
        log.info("web: refused %s: %s", request.url.path, err)
        headers = ({"Retry-After": str(err.retry_after)}
                   if isinstance(err, Busy | EngineUnavailable) else None)
        return JSONResponse(error_json(err, app.language), status_code=_status(err),
                            headers=headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message = _validation_message(err)
        log.info("web: refused %s: %s", request.url.path, message)
        return JSONResponse({"error": message}, status_code=400)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        detail = err.detail if isinstance(err.detail, str) else "Request refused."
        if err.status_code == 400 and "parsing the body" in detail:
            detail = "The request body could not be read (too large a field, or malformed)."
        return JSONResponse({"error": detail}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    # /metrics, /healthz, /readyz: open like the chat (no admin token), and read-only.
    add_health_routes(api, app)

    @api.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return _page("index.html")

    @api.get("/admin", response_class=HTMLResponse)
    async def admin_page() -> str:
        return _page("admin.html")

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in ("app.css", "chat.js", "admin.js"):
            raise HTTPException(404, "Not found.")
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(_page(name), media_type=media)

    def chat_of(conversation_id: str | None) -> tuple[str, ChatRef]:
        conversation = conversation_id or uuid.uuid4().hex[:16]
        if not CONVERSATION.match(conversation):
            raise HTTPException(400, "Bad conversation_id.")
        return conversation, ChatRef(PLATFORM, conversation, ChatKind.PRIVATE)

    async def read_upload(audio: UploadFile | None) -> bytes | None:
        if audio is None:
            return None
        data = await audio.read(settings.max_upload_bytes + 1)
        app.codec.check_declared(len(data), None)
        return data

    async def answer(conversation: str, chat_ref: ChatRef, text: str | None, data: bytes | None,
                     on_event: OnEvent | None = None) -> dict[str, Any]:
        """One turn, its reply audio written to disk: the JSON /api/chat answers."""
        saved: list[str] = []

        async def keep(turn: Turn) -> str | None:
            # Written completely before the turn is stored (disk full → nothing stored).
            if turn.voice is None:
                return None
            saved.append(await asyncio.to_thread(replies.save, PLATFORM, turn.voice.data))
            return saved[-1]

        try:
            turn = await app.pipeline.handle(Incoming(
                chat=chat_ref, user=UserRef(PLATFORM, conversation, "Web visitor"),
                audio=data, text=text, message_id=None, want_voice=True), deliver=keep,
                on_event=on_event)
        except BaseException:
            await asyncio.to_thread(replies.delete, PLATFORM, saved)  # not stored: no file
            raise
        name = saved[-1] if saved else None
        return {"conversation_id": conversation, "transcript": turn.transcript,
                "reply": turn.reply, "exchange_id": turn.exchange_id,
                "audio_url": f"/api/audio/{name}" if name else None,
                "duration_s": turn.voice.duration_s if turn.voice else None,
                "timings_ms": turn.timings_ms}

    @api.post(CHAT_PATH)
    async def chat(text: Annotated[str | None, Form()] = None,
                   conversation_id: Annotated[str | None, Form()] = None,
                   audio: UploadFile | None = None) -> dict[str, Any]:
        conversation, chat_ref = chat_of(conversation_id)
        # Claimed before any decoding or model work: beyond the bounds, refused at once (429).
        async with queues.enter(chat_ref):
            return await answer(conversation, chat_ref, text, await read_upload(audio))

    # Turns whose stream was answered: they outlive their request (a client that goes away
    # does not stop a turn that is stored with its audio), and the adapter ends them on stop.
    streaming: set[asyncio.Task[None]] = set()
    api.state.turns = streaming

    @api.post(STREAM_PATH)
    async def chat_stream(text: Annotated[str | None, Form()] = None,
                          conversation_id: Annotated[str | None, Form()] = None,
                          audio: UploadFile | None = None) -> Response:
        """/api/chat as server-sent events, each ``event: NAME`` with one JSON ``data`` line:

        ``stage`` {name: listening|thinking|speaking}, ``heard`` {conversation_id, transcript,
        language}, ``delta`` {text} (the model's words as written, before the reply is cut to
        the speech budget), ``sentence`` {index, text, audio (base64 OGG/Opus, or null), mime,
        duration_s} (the reply is exactly the sentences joined), then ``done`` {what /api/chat
        answers} or ``error`` {error, code, params}; nothing follows either.

        The answer is held until the turn reports more than "listening" (for a voice note:
        decoded and transcribed): everything refused before then (bad input, busy, an
        unreadable file, no speech) gets the same 4xx JSON as /api/chat, so a client handles
        refusals in one place; only failures of the answering itself arrive as ``error``.
        """
        conversation, chat_ref = chat_of(conversation_id)
        slot = queues.enter(chat_ref)  # a full line is refused now (429), like /api/chat
        events: asyncio.Queue[_Item] = asyncio.Queue()

        async def run() -> None:
            # Every outcome is queued, never raised: nobody awaits this task's result.
            try:
                async with slot:
                    result = await answer(conversation, chat_ref, text,
                                          await read_upload(audio), on_event=events.put)
            except Exception as err:  # reported to the client (failure_json logs it)
                events.put_nowait(_Failed(err))
            except BaseException as err:  # cancelled: the console is stopping
                events.put_nowait(_Failed(err))
                raise
            else:
                events.put_nowait(_Done(result))

        task = asyncio.create_task(run(), name=f"web-turn-{conversation}")
        streaming.add(task)
        task.add_done_callback(streaming.discard)
        held: list[_Item] = [await events.get()]
        while isinstance(held[-1], Stage) and held[-1].name == "listening":
            held.append(await events.get())
        if isinstance(held[-1], _Failed):
            err = held[-1].error
            raise err if isinstance(err, Exception) else HTTPException(503, "Stopping.")

        async def tell() -> AsyncIterator[bytes]:
            while True:
                item = held.pop(0) if held else await events.get()
                if isinstance(item, _Done):
                    yield _sse("done", item.answer)
                    return
                if isinstance(item, _Failed):
                    yield _sse("error", failure_json(item.error))
                    return
                yield _event_sse(item, conversation)

        return StreamingResponse(tell(), media_type="text/event-stream", headers={
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def failure_json(err: BaseException) -> dict[str, Any]:
        if isinstance(err, UserFacingError):
            log.info("web: refused a streamed turn: %s", err)
            return error_json(err, app.language)
        if isinstance(err, asyncio.CancelledError):
            log.info("web: a streamed turn was cancelled (the console is stopping)")
        else:
            log.error("web: a streamed turn failed", exc_info=err)
        internal = Message("error.internal")
        return {"error": word(internal, app.language), **internal.to_dict()}

    @api.get("/api/conversation/{conversation_id}")
    async def conversation(
            conversation_id: Annotated[str, PathParam(pattern=READABLE_CONVERSATION.pattern)]
    ) -> dict[str, Any]:
        """The conversation's exchanges, oldest first, for a page that was reloaded. Its id is
        the key (the page's are random, like reply audio names)."""
        chat_ref = ChatRef(PLATFORM, conversation_id, ChatKind.PRIVATE)

        def audio_url(name: str | None) -> str | None:
            return f"/api/audio/{name}" if name and replies.path(PLATFORM, name) else None

        def read() -> list[dict[str, Any]]:  # the database and the disk, off the event loop
            return [{"exchange_id": e.exchange_id, "input_kind": e.input_kind,
                     "transcript": e.transcript, "reply": e.reply,
                     "audio_url": audio_url(e.reply_message_id),
                     "duration_s": e.reply_duration_s, "created_at": e.created_at.isoformat()}
                    for e in app.store.conversation(chat_ref, RESTORE_LIMIT)]

        return {"conversation_id": conversation_id, "turns": await asyncio.to_thread(read)}

    @api.post("/api/forget")
    async def forget(body: ForgetBody) -> dict[str, Any]:
        """Delete this conversation: its messages, pairs and reply audio (the user's /forget)."""
        actor = Actor(PLATFORM, body.conversation_id, "Web visitor")
        # In the conversation's line: a turn still being answered (its page was reloaded)
        # finishes and is stored first, then forgotten with the rest, never stored after.
        async with queues.enter(ChatRef(PLATFORM, body.conversation_id, ChatKind.PRIVATE)):
            return await run(Forget(), actor)

    @api.get("/api/audio/{name}")
    async def reply_audio(name: str) -> FileResponse:
        path = replies.path(PLATFORM, name)
        if path is None:
            raise HTTPException(404, "No such reply.")
        return FileResponse(path, media_type="audio/ogg")

    # --- admin ------------------------------------------------------------------------
    # Every route builds the typed request from the request's fields as they are: nothing is
    # rebuilt into command text and parsed again.
    async def run(request: Command, actor: Actor = ADMIN, origin: ChatRef | None = None
                  ) -> dict[str, Any]:
        result = await asyncio.to_thread(app.admin.run, actor, request, origin)
        return result_json(result, app.language)

    @api.get("/api/admin/pending")
    async def pending(page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1) -> dict[str, Any]:
        return await run(Pending(page))

    @api.post("/api/admin/pairs/{pair_id}/approve")
    async def approve(pair_id: PairId) -> dict[str, Any]:
        return await run(Approve(pair_id))

    @api.post("/api/admin/pairs/{pair_id}/reject")
    async def reject(pair_id: PairId) -> dict[str, Any]:
        return await run(Reject(pair_id))

    @api.post("/api/admin/pairs/{pair_id}/correct")
    async def correct(pair_id: PairId, body: CorrectBody) -> dict[str, Any]:
        # The fields as given: an answer with "|" in it stays one answer, the question stays.
        if not body.answer.strip():
            raise HTTPException(400, "The answer is empty.")
        return await run(Correct(body.answer, pair_id, body.question))

    @api.get("/api/admin/dataset")
    async def dataset() -> dict[str, Any]:
        return await run(Dataset())

    @api.post("/api/admin/retrain")
    async def retrain(body: Annotated[RetrainBody | None, Body()] = None) -> dict[str, Any]:
        steps = body.max_steps if body else None
        return await run(Retrain(steps), origin=ChatRef(PLATFORM, "admin"))

    @api.post("/api/admin/train/cancel")
    async def cancel_training(body: Annotated[CancelBody | None, Body()] = None) -> dict[str, Any]:
        """Cancel the queued job, or stop the running one (waits for the runner to confirm)."""
        job_id = body.job_id if body else None
        return await run(CancelTraining(job_id))

    @api.get("/api/admin/trainstatus")
    async def trainstatus() -> dict[str, Any]:
        result = await run(TrainStatus())
        result["notices"] = list(notices)[-20:]
        return result

    @api.get("/api/admin/models")
    async def models() -> dict[str, Any]:
        return await run(Models())

    @api.post("/api/admin/models/{version}/activate")
    async def activate(version: Annotated[str, PathParam(max_length=128)]) -> dict[str, Any]:
        return await run(Activate(version))

    @api.post("/api/admin/rollback")
    async def rollback() -> dict[str, Any]:
        return await run(Rollback())

    @api.get("/api/admin/models/{version}/loss.png")
    async def loss_plot(version: Annotated[str, PathParam(max_length=128)]) -> FileResponse:
        found = await asyncio.to_thread(app.registry.get, version)
        plot = Path(found.directory) / "loss.png" if found and found.directory else None
        if plot is None or not plot.is_file():
            raise HTTPException(404, "No loss plot for that version.")
        return FileResponse(plot, media_type="image/png")

    @api.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.error("web: %s %s failed", request.method, request.url.path, exc_info=err)
        return JSONResponse({"error": "Something went wrong on my side."}, status_code=500)

    return api


def _is_upload(request: Request) -> bool:
    """A request big enough to carry audio (or one that doesn't say how big it is)."""
    length = request.headers.get("content-length")
    return length is None or not length.isdigit() or int(length) > UPLOAD_THRESHOLD


def body_limit_for(app: ChatmanApp) -> Callable[[str], int]:
    def limit(path: str) -> int:
        return app.settings.max_upload_bytes + FORM_OVERHEAD if path in (CHAT_PATH, STREAM_PATH) \
            else JSON_BODY_LIMIT
    return limit


class WebAdapter:
    def __init__(self, app: ChatmanApp) -> None:
        s = app.settings
        self.app = app
        self.admin_token = (s.web_admin_token.get_secret_value() if s.web_admin_token
                            else secrets.token_urlsafe(24))
        self.token_generated = s.web_admin_token is None
        self.api = create_api(app, self.admin_token)
        guarded = RequestLimits(self.api, hosts=allowed_hosts(s.web_host, s.web_allowed_hosts),
                                body_limit=body_limit_for(app),
                                body_timeout=s.web_body_timeout_seconds)
        self.server = LocalServer(guarded, host=s.web_host, port=s.web_port,
                                  header_timeout=s.web_header_timeout_seconds,
                                  name="web-console")
        self.url = ""

    async def start(self) -> None:
        host, port = await self.server.start()
        self.url = f"http://{host}:{port}"
        if self.token_generated:
            # Printed, not logged: the token must not end up in log files. An operator who
            # set CHATMAN_WEB_ADMIN_TOKEN knows it; it is never printed then.
            print(f"ChatMan web console: {self.url}/   admin: {self.url}/admin#token="
                  f"{self.admin_token}", flush=True)
        else:
            print(f"ChatMan web console: {self.url}/   admin: {self.url}/admin "
                  "(token: CHATMAN_WEB_ADMIN_TOKEN)", flush=True)

    async def stop(self) -> None:
        self.app.notifiers.pop(PLATFORM, None)
        await self.server.stop()
        # Streamed turns whose client went away still run: end them before the app stops.
        turns: set[asyncio.Task[None]] = self.api.state.turns
        for turn in list(turns):
            turn.cancel()
        await asyncio.gather(*turns, return_exceptions=True)
