"""A local Telegram Bot API server over real HTTP, as https://core.telegram.org/bots/api documents it.

Requests are ``POST /bot<token>/<method>`` with form or multipart fields (JSON-encoded when
not strings); responses are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code",
"description", "parameters"}``. Files download from ``GET /file/bot<token>/<file_path>``.
Tests inject updates and read what the bot sent; ``fail_next`` queues error replies;
``answer_after`` makes a method do its work (a message is sent) but hold its answer until an
event is set, as a slow server whose answer comes after the client gave up waiting.

Updates reach the bot as the real server hands them out: by ``getUpdates`` until a webhook is
set, then POSTed to the webhook (:mod:`tests.fakes.telegram_webhook` says how) and refused to
``getUpdates`` with 409 Conflict, until ``deleteWebhook``. Updates not yet delivered either way
stay pending across the switch, as on the real server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from tests.fakes import Json, LocalServer, eventually
from tests.fakes.telegram_webhook import Attempt, WebhookSender

T = TypeVar("T")

TOKEN = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz"
BOT: Json = {"id": 5550001, "is_bot": True, "first_name": "Manman", "username": "manman_test_bot",
             "can_join_groups": True, "can_read_all_group_messages": False,
             "supports_inline_queries": False}

# Parameters that arrive JSON-encoded (objects and arrays).
JSON_PARAMS = {"reply_parameters", "commands", "scope", "allowed_updates", "reply_markup",
               "caption_entities", "entities", "link_preview_options"}

# A Bot API method: its parameters and uploaded files → the HTTP answer.
Handler = Callable[[Json, dict[str, bytes]], Awaitable[web.Response]]


@dataclass
class Sent:
    method: str
    chat_id: int
    params: Json
    message: Json | None = None
    file: bytes | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str | None:
        text: str | None = self.params.get("text") or self.params.get("caption")
        return text

    @property
    def reply_to(self) -> int | None:
        rp = self.params.get("reply_parameters")
        message_id: int | None = rp.get("message_id") if rp else None
        return message_id


class FakeTelegram(LocalServer):
    """The Bot API server. Webhook knobs: ``webhook_timeout`` (seconds before an unanswered
    POST counts as failed), ``retry_backoff``/``retry_backoff_max`` (the first and the longest
    wait before a failed update is sent again), ``duplicate_every`` (every Nth pushed update is
    delivered twice, see :meth:`push`)."""

    def __init__(self, *, webhook_timeout: float = 10.0, retry_backoff: float = 0.1,
                 retry_backoff_max: float = 1.0, duplicate_every: int = 0) -> None:
        #: updates not yet delivered (by getUpdates: not yet confirmed by its offset), oldest first
        self.updates: list[Json] = []
        self.sent: list[Sent] = []
        self.calls: list[str] = []
        self.files: dict[str, tuple[str, bytes]] = {}
        self.commands: dict[str, list[Json]] = {}
        self.webhook: Json = {}
        # (chat id, user id) → "creator" | "administrator"; everyone else is a "member".
        self.chat_admins: dict[tuple[int, int], str] = {}
        self.fail_next: dict[str, list[tuple[int, Json]]] = {}
        # method → event: the call is carried out at once, its answer sent once the event is set.
        self.answer_after: dict[str, asyncio.Event] = {}
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self._new_update = asyncio.Condition()
        self.duplicate_every = duplicate_every
        #: update ids to deliver once more after their next 2xx
        self._redeliver: set[int] = set()
        self.webhook_sender = WebhookSender(lambda: self.updates, self._delivered,
                                            timeout=webhook_timeout, backoff=retry_backoff,
                                            backoff_max=retry_backoff_max)

    # --- lifecycle ------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)

    async def stop(self) -> None:
        for held in self.answer_after.values():
            held.set()
        await self.webhook_sender.close()
        await super().stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # --- what tests inject -----------------------------------------------------------
    def _message(self, chat: Json, user: Json, **content: Any) -> Json:
        return {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat,
                "from": user, **content}

    async def push(self, message: Json, duplicate: bool = False) -> Json:
        """Queue an update carrying ``message``. A ``duplicate`` one (or every
        ``duplicate_every``-th) is delivered by webhook a second time, with the same update id,
        right after its first delivery was answered 2xx: Telegram's redelivery when it did not
        take the answer in (a lost connection). Only the webhook redelivers; getUpdates does not.
        """
        update_id = next(self._update_ids)
        if duplicate or (self.duplicate_every and update_id % self.duplicate_every == 0):
            self._redeliver.add(update_id)
        async with self._new_update:
            self.updates.append({"update_id": update_id, "message": message})
            self._new_update.notify_all()
        self.webhook_sender.wake()
        return message

    def add_file(self, data: bytes, path_hint: str = "voice/file.oga") -> str:
        file_id = f"FILE{next(self._file_ids)}"
        self.files[file_id] = (path_hint.replace("file", file_id.lower()), data)
        return file_id

    async def send_text(self, chat: Json, user: Json, text: str, *, duplicate: bool = False,
                        **extra: Any) -> Json:
        entities = extra.pop("entities", None)
        if entities is None and text.startswith("/"):
            entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        if entities is None and "@" + BOT["username"] in text:
            start = text.index("@" + BOT["username"])
            entities = [{"type": "mention", "offset": start, "length": len(BOT["username"]) + 1}]
        return await self.push(self._message(chat, user, text=text,
                                             **({"entities": entities} if entities else {}),
                                             **extra), duplicate=duplicate)

    async def send_voice(self, chat: Json, user: Json, ogg: bytes, duration: int,
                         declared_size: int | None = None, *, duplicate: bool = False,
                         **extra: Any) -> Json:
        file_id = self.add_file(ogg)
        voice = {"file_id": file_id, "file_unique_id": f"u{file_id}", "duration": duration,
                 "mime_type": "audio/ogg", "file_size": declared_size or len(ogg)}
        return await self.push(self._message(chat, user, voice=voice, **extra),
                               duplicate=duplicate)

    def sent_to(self, chat_id: int, method: str | None = None) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id
                and (method is None or s.method == method)]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 120.0) -> T:
        return await eventually(predicate, timeout, lambda: "sent so far: " + repr(
            [(s.method, s.chat_id, s.text) for s in self.sent]))

    def answers_by_chat(self, methods: tuple[str, ...] = ("sendMessage", "sendVoice")
                        ) -> dict[int, list[int | None]]:
        """Per chat, the message ids the bot's sends (of ``methods``) replied to, in the order
        this server received them: a message answered once, in order, shows up once, in order
        (a reply made of several sends shows its id once per send)."""
        answers: dict[int, list[int | None]] = {}
        for sent in self.sent:
            if sent.method in methods:
                answers.setdefault(sent.chat_id, []).append(sent.reply_to)
        return answers

    # --- the webhook, as tests see it -------------------------------------------------
    @property
    def deliveries(self) -> list[Attempt]:
        """Every webhook POST so far, in the order they started."""
        return self.webhook_sender.attempts

    def delivered(self) -> list[int]:
        """Update ids answered 2xx, in the order the answers came (a duplicate twice)."""
        done = sorted((a for a in self.deliveries if a.ok),
                      key=lambda a: a.finished or 0.0)
        return [a.update_id for a in done]

    @property
    def pending_update_count(self) -> int:
        return len(self.updates)

    async def wait_delivered(self, timeout: float = 60.0) -> None:
        """Until every update pushed so far was delivered by webhook (duplicates included)."""
        await eventually(lambda: not self.updates and not self.webhook_sender.in_flight,
                         timeout, lambda: f"pending {[u['update_id'] for u in self.updates]}; "
                         f"last error {self.webhook_sender.last_error_message!r}; last attempts "
                         + repr([(a.update_id, a.outcome) for a in self.deliveries[-10:]]))

    def _delivered(self, update: Json) -> None:
        update_id = update["update_id"]
        if update_id in self._redeliver:
            self._redeliver.discard(update_id)  # stays at its chat's head: sent again next
            return
        self.updates = [u for u in self.updates if u["update_id"] != update_id]

    # --- the Bot API ------------------------------------------------------------------
    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.Response(text=json.dumps({"ok": True, "result": result}),
                            content_type="application/json")

    @staticmethod
    def _error(code: int, description: str, parameters: Json | None = None) -> web.Response:
        body: Json = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.Response(status=code, text=json.dumps(body), content_type="application/json")

    async def _params(self, request: web.Request) -> tuple[Json, dict[str, bytes]]:
        params: Json = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            return await request.json(), files
        form = await request.post()
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files[key] = value.file.read()
            elif key in JSON_PARAMS:
                params[key] = json.loads(value)
            else:
                params[key] = value
        # A file may also be attached as "attach://name".
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://"):
                files[key] = files.pop(value.removeprefix("attach://"))
        return params, files

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        self.calls.append(method)
        params, files = await self._params(request)
        queued = self.fail_next.get(method)
        if queued:
            code, parameters = queued.pop(0)
            return self._error(code, {429: "Too Many Requests: retry later",
                                      403: "Forbidden: bot was blocked by the user"}.get(
                                          code, "Internal Server Error"), parameters)
        handler: Handler | None = getattr(self, f"_m_{method}", None)
        if handler is None:
            return self._error(404, f"Not Found: method {method} not found")
        response = await handler(params, files)
        held = self.answer_after.get(method)
        if held is not None:
            await held.wait()
        return response

    async def _m_getMe(self, params: Json, files: dict[str, bytes]) -> web.Response:
        return self._ok(BOT)

    def _drop_pending(self, params: Json) -> None:
        if _flag(params.get("drop_pending_updates")):
            self.updates = []
            self._redeliver.clear()

    async def _m_deleteWebhook(self, params: Json, files: dict[str, bytes]) -> web.Response:
        self._drop_pending(params)
        await self.webhook_sender.stop_delivering()
        self.webhook = {}
        return self._ok(True)

    async def _m_setWebhook(self, params: Json, files: dict[str, bytes]) -> web.Response:
        url = str(params.get("url") or "")
        if not url:  # "Use an empty string to remove webhook integration"
            return await self._m_deleteWebhook(params, files)
        max_connections = int(params.get("max_connections") or 40)
        if not 1 <= max_connections <= 100:
            return self._error(400, "Bad Request: bad webhook: max_connections must be 1-100")
        # Local-mode server rules: plain http and any port are allowed (the real one wants
        # HTTPS on 443, 80, 88 or 8443). Setting the same webhook again changes nothing;
        # another one replaces it, the last call winning, as on the real server.
        self._drop_pending(params)
        self.webhook = dict(params)
        self.webhook_sender.configure(url, params.get("secret_token") or None, max_connections)
        return self._ok(True)

    async def _m_getWebhookInfo(self, params: Json, files: dict[str, bytes]) -> web.Response:
        sender = self.webhook_sender
        info: Json = {"url": self.webhook.get("url", ""), "has_custom_certificate": False,
                      "pending_update_count": self.pending_update_count}
        if self.webhook:
            info["max_connections"] = sender.max_connections
            if self.webhook.get("allowed_updates") is not None:
                info["allowed_updates"] = self.webhook["allowed_updates"]
        if sender.last_error_date is not None:
            info["last_error_date"] = sender.last_error_date
            info["last_error_message"] = sender.last_error_message
        return self._ok(info)

    async def _m_setMyCommands(self, params: Json, files: dict[str, bytes]) -> web.Response:
        scope = params.get("scope") or {"type": "default"}
        self.commands[json.dumps(scope, sort_keys=True)] = params["commands"]
        return self._ok(True)

    async def _m_deleteMyCommands(self, params: Json, files: dict[str, bytes]) -> web.Response:
        self.commands.pop(json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True),
                          None)
        return self._ok(True)

    async def _m_getUpdates(self, params: Json, files: dict[str, bytes]) -> web.Response:
        if self.webhook:
            return self._error(409, "Conflict: can't use getUpdates method while webhook is "
                                    "active; use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        # Confirmed updates (id < offset) are forgotten, as the real server does.
        self.updates = [u for u in self.updates if u["update_id"] >= offset]
        async with self._new_update:
            if not self.updates and timeout:
                try:
                    await asyncio.wait_for(self._new_update.wait(), timeout)
                except TimeoutError:
                    pass
        limit = int(params.get("limit") or 100)
        return self._ok(self.updates[:limit])

    async def _m_getFile(self, params: Json, files: dict[str, bytes]) -> web.Response:
        file_id = params["file_id"]
        if file_id not in self.files:
            return self._error(400, "Bad Request: invalid file_id")
        path, data = self.files[file_id]
        return self._ok({"file_id": file_id, "file_unique_id": f"u{file_id}",
                         "file_size": len(data), "file_path": path})

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.Response(status=401)
        path = request.match_info["path"]
        for stored, data in self.files.values():
            if stored == path:
                return web.Response(body=data, content_type="application/octet-stream")
        return web.Response(status=404)

    def _record(self, method: str, params: Json, content: Json,
                file: bytes | None = None) -> web.Response:
        chat_id = int(params["chat_id"])
        message = self._message({"id": chat_id, "type": "private" if chat_id > 0 else "group"},
                                BOT, **content)
        rp = params.get("reply_parameters")
        if rp:
            message["reply_to_message"] = {"message_id": rp["message_id"], "date": 0,
                                           "chat": message["chat"]}
        self.sent.append(Sent(method, chat_id, params, message, file))
        return self._ok(message)

    async def _m_sendMessage(self, params: Json, files: dict[str, bytes]) -> web.Response:
        if not params.get("text"):
            return self._error(400, "Bad Request: message text is empty")
        return self._record("sendMessage", params, {"text": params["text"]})

    async def _m_sendVoice(self, params: Json, files: dict[str, bytes]) -> web.Response:
        data = files.get("voice")
        if data is None:
            return self._error(400, "Bad Request: there is no voice in the request")
        file_id = self.add_file(data)
        voice = {"file_id": file_id, "file_unique_id": f"u{file_id}",
                 "duration": int(params.get("duration") or 0), "mime_type": "audio/ogg",
                 "file_size": len(data)}
        content: Json = {"voice": voice}
        if params.get("caption"):
            content["caption"] = params["caption"]
        return self._record("sendVoice", params, content, data)

    async def _m_sendPhoto(self, params: Json, files: dict[str, bytes]) -> web.Response:
        data = files.get("photo")
        if data is None:
            return self._error(400, "Bad Request: there is no photo in the request")
        content: Json = {"photo": [{"file_id": self.add_file(data, "photos/file.png"),
                              "file_unique_id": "p", "width": 700, "height": 400}]}
        if params.get("caption"):
            content["caption"] = params["caption"]
        return self._record("sendPhoto", params, content, data)

    async def _m_sendChatAction(self, params: Json, files: dict[str, bytes]) -> web.Response:
        self.sent.append(Sent("sendChatAction", int(params["chat_id"]), params))
        return self._ok(True)

    async def _m_getChatMember(self, params: Json, files: dict[str, bytes]) -> web.Response:
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        status = self.chat_admins.get((chat_id, user_id), "member")
        member: Json = {"status": status, "user": user(user_id, f"User {user_id}")}
        if status == "administrator":
            member.update({rights: True for rights in (
                "can_be_edited", "can_manage_chat", "can_delete_messages",
                "can_manage_video_chats", "can_restrict_members", "can_promote_members",
                "can_change_info", "can_invite_users", "can_post_stories", "can_edit_stories",
                "can_delete_stories")} | {"is_anonymous": False})
        elif status == "creator":
            member["is_anonymous"] = False
        return self._ok(member)


def _flag(value: Any) -> bool:
    """A Boolean parameter: JSON-encoded ("true") in form fields, a bool in JSON bodies."""
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def private_chat(user: Json) -> Json:
    return {"id": user["id"], "type": "private", "first_name": user["first_name"]}


def group_chat(chat_id: int, title: str = "Friends") -> Json:
    return {"id": chat_id, "type": "supergroup", "title": title}


def user(user_id: int, first_name: str) -> Json:
    return {"id": user_id, "is_bot": False, "first_name": first_name}


#: The placeholder users Telegram puts in ``from`` when a group admin posts anonymously or a
#: channel posts into a group; the real sender is ``sender_chat``.
GROUP_ANONYMOUS_BOT: Json = {"id": 1087968824, "is_bot": True, "first_name": "Group",
                             "username": "GroupAnonymousBot"}
CHANNEL_BOT: Json = {"id": 136817688, "is_bot": True, "first_name": "Channel",
                     "username": "Channel_Bot"}


def channel(chat_id: int, title: str) -> Json:
    return {"id": chat_id, "type": "channel", "title": title}
