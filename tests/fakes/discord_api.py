"""A local Discord (REST + gateway websocket + CDN) over real HTTP, as discord.com/developers documents it.

REST lives under ``/api/v10``; JSON replies carry ``Content-Type: application/json`` exactly
(discord.py reads a body as JSON only then) and rate-limit replies carry ``Via`` like Discord's
edge (without it discord.py assumes a Cloudflare ban). The gateway speaks plain-text JSON:
HELLO → IDENTIFY → READY (+ ``application``) → GUILD_CREATE, heartbeats, dispatches with
sequence numbers, and RESUME that replays what a dropped connection missed.

Sharding as Discord does it: ``GET /gateway/bot`` recommends a shard count (``shards``); an
IDENTIFY with ``shard: [id, count]`` gets only the guilds with ``(guild_id >> 22) % count ==
id``, in READY and in events, and DMs go to shard 0 alone. An IDENTIFY without ``shard`` gets
everything.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes import Json, LocalServer, eventually

T = TypeVar("T")

TOKEN = "MTAxNTAwMDAwMDAwMDAwMDAwMQ.fake.discord-token-for-tests"
APP_ID = "1015000000000000001"
BOT_USER: Json = {"id": APP_ID, "username": "manman", "discriminator": "0", "global_name": "Manman",
                  "avatar": None, "bot": True}
GUILD_ID = "1015000000000000100"
TEXT_CHANNEL = "1015000000000000200"
OTHER_CHANNEL = "1015000000000000201"
#: A second guild, on shard 1 of 2 (GUILD_ID is on shard 0); present with ``FakeDiscord(
#: second_guild=True)``.
SHARD1_GUILD_ID = str(((int(GUILD_ID) >> 22) + 1) << 22 | 100)
SHARD1_CHANNEL = str(int(SHARD1_GUILD_ID) + 100)
EVERYONE_ROLE = GUILD_ID
ADMIN_PERMISSIONS = str(1 << 3)
VOICE_FLAG = 1 << 13
EPHEMERAL = 1 << 6

#: An uploaded file: (name, content type, data).
Upload = tuple[str, str, bytes]


def user(uid: str, name: str) -> Json:
    return {"id": uid, "username": name.lower(), "discriminator": "0", "global_name": name,
            "avatar": None}


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Posted:
    """A message the bot created (channel message, interaction reply or follow-up)."""

    kind: str  # message | callback | followup | edit
    channel_id: str | None
    payload: Json
    files: list[Upload] = field(default_factory=list)
    message: Json | None = None

    @property
    def content(self) -> str:
        data: Json = self.payload.get("data", self.payload) if self.kind == "callback" else self.payload
        content: str = data.get("content") or ""
        return content

    @property
    def flags(self) -> int:
        data: Json = self.payload.get("data", self.payload) if self.kind == "callback" else self.payload
        return int(data.get("flags") or 0)

    @property
    def reply_to(self) -> str | None:
        ref = self.payload.get("message_reference")
        return str(ref["message_id"]) if ref else None


def shard_of(guild_id: str | None, count: int) -> int:
    """The shard Discord sends a guild's events to (DMs: shard 0)."""
    return 0 if guild_id is None else (int(guild_id) >> 22) % count


class FakeDiscord(LocalServer):
    def __init__(self, *, second_guild: bool = False, recommended_shards: int = 1) -> None:
        self.posted: list[Posted] = []
        self.calls: list[str] = []
        self.typing: list[str] = []
        self.commands: dict[str, list[Json]] = {}
        self.cdn: dict[str, bytes] = {}
        self.fail_next: dict[str, list[tuple[int, Json | None]]] = {}
        self.refuse_voice_messages = False
        self._ids = itertools.count(1015000000000100000)
        self._seq = 0
        self._events: list[Json] = []  # every dispatch, for RESUME replays
        self._sockets: list[web.WebSocketResponse] = []
        self.identifies = 0
        #: the ``shard`` field of each IDENTIFY (None: not sharded)
        self.identified_shards: list[list[int] | None] = []
        self.resumes = 0
        self.recommended_shards = recommended_shards
        self.guild_ids = [GUILD_ID, *([SHARD1_GUILD_ID] if second_guild else [])]
        self._channel_guild = {TEXT_CHANNEL: GUILD_ID, OTHER_CHANNEL: GUILD_ID,
                               SHARD1_CHANNEL: SHARD1_GUILD_ID}
        # The shard each connection (and each session, for RESUME) identified as.
        self._socket_shard: dict[web.WebSocketResponse, list[int] | None] = {}
        self._session_shard: dict[str, list[int] | None] = {}
        self.guild_members: dict[str, Json] = {}

    def snowflake(self) -> str:
        return str(next(self._ids))

    # --- lifecycle ------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/cdn/{path:.+}", self._cdn)
        app.router.add_route("*", "/api/v10/{path:.+}", self._rest)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await super().stop()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- gateway --------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None,
                                      "t": None}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                op = payload["op"]
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    self.identifies += 1
                    if payload["d"]["token"] != TOKEN:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    shard = payload["d"].get("shard")
                    if shard is not None and not (isinstance(shard, list) and len(shard) == 2
                                                  and 0 <= shard[0] < shard[1]):
                        await ws.close(code=4010, message=b"Invalid shard.")
                        break
                    self.identified_shards.append(shard)
                    session = f"fake-session-{self.identifies}"
                    self._socket_shard[ws] = self._session_shard[session] = shard
                    guilds = [g for g in self.guild_ids if self._on_shard(shard, g)]
                    await self._send_event(ws, "READY", {
                        "v": 10, "user": BOT_USER, "session_id": session,
                        "resume_gateway_url": self.gateway_url, "private_channels": [],
                        "guilds": [{"id": g, "unavailable": True} for g in guilds],
                        "application": {"id": APP_ID, "flags": 0},
                        **({"shard": shard} if shard is not None else {}),
                    })
                    for guild_id in guilds:
                        await self._send_event(ws, "GUILD_CREATE", self._guild(guild_id))
                elif op == 6:
                    self.resumes += 1
                    seq = payload["d"]["seq"] or 0
                    shard = self._session_shard.get(payload["d"]["session_id"])
                    self._socket_shard[ws] = shard
                    for event in self._events:
                        if event["s"] > seq and self._routes_to(shard, event):
                            await ws.send_str(json.dumps(event))
                    await ws.send_str(json.dumps({"op": 0, "t": "RESUMED", "s": self._next_seq(),
                                                  "d": {}}))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            self._socket_shard.pop(ws, None)
        return ws

    @staticmethod
    def _on_shard(shard: list[int] | None, guild_id: str | None) -> bool:
        return shard is None or shard_of(guild_id, shard[1]) == shard[0]

    def _routes_to(self, shard: list[int] | None, event: Json) -> bool:
        """Whether a connection identified as ``shard`` gets ``event`` (a guild's events go
        to that guild's shard, DMs to shard 0)."""
        data = event["d"]
        guild_id = data.get("guild_id") if isinstance(data, dict) else None
        return self._on_shard(shard, guild_id)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _send_event(self, ws: web.WebSocketResponse, name: str, data: Json) -> None:
        event: Json = {"op": 0, "t": name, "s": self._next_seq(), "d": data}
        self._events.append(event)
        await ws.send_str(json.dumps(event))

    async def dispatch(self, name: str, data: Json) -> None:
        """Send an event to the connected bot's shard that it belongs to (recorded for replay
        if nobody is connected)."""
        event: Json = {"op": 0, "t": name, "s": self._next_seq(), "d": data}
        self._events.append(event)
        for ws in list(self._sockets):
            if not ws.closed and self._routes_to(self._socket_shard.get(ws), event):
                await ws.send_str(json.dumps(event))

    async def drop_connection(self) -> None:
        """Close the gateway as Discord does on an unknown error (4000): the client resumes."""
        for ws in list(self._sockets):
            await ws.close(code=4000, message=b"Unknown error")

    def _guild(self, guild_id: str = GUILD_ID) -> Json:
        channels = [(cid, name) for cid, name in ((TEXT_CHANNEL, "general"),
                                                  (OTHER_CHANNEL, "random"),
                                                  (SHARD1_CHANNEL, "shard-one"))
                    if self._channel_guild[cid] == guild_id]
        return {
            "id": guild_id, "name": "Test Guild", "icon": None, "owner_id": "1015000000000000999",
            "unavailable": False, "member_count": 3, "large": False, "features": [],
            "emojis": [], "stickers": [], "threads": [], "presences": [], "voice_states": [],
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            "members": [{"user": BOT_USER, "roles": [], "joined_at": _now(), "deaf": False,
                         "mute": False, "flags": 0}],
            "roles": [{"id": guild_id, "name": "@everyone", "permissions": str(
                (1 << 10) | (1 << 11) | (1 << 15) | (1 << 16) | (1 << 31)), "position": 0,
                "color": 0, "hoist": False, "managed": False, "mentionable": False}],
            "channels": [
                {"id": cid, "type": 0, "name": name, "position": i,
                 "permission_overwrites": [], "guild_id": guild_id}
                for i, (cid, name) in enumerate(channels)
            ],
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "premium_tier": 0,
            "preferred_locale": "en-US", "nsfw_level": 0, "system_channel_flags": 0,
        }

    # --- what tests inject -------------------------------------------------------------
    def message(self, channel_id: str, author: Json, content: str = "", *,
                guild: bool = True, attachments: list[Json] | None = None,
                mentions: list[Json] | None = None, reply_to: Json | None = None,
                flags: int = 0, admin: bool = False) -> Json:
        data: Json = {
            "id": self.snowflake(), "channel_id": channel_id, "author": author,
            "content": content, "timestamp": _now(), "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": mentions or [], "mention_roles": [],
            "attachments": attachments or [], "embeds": [], "pinned": False, "type": 0,
            "flags": flags, "components": [],
        }
        if guild:
            data["guild_id"] = self._channel_guild.get(channel_id, GUILD_ID)
            data["member"] = self._member(author, admin)
        if reply_to is not None:
            data["type"] = 19
            data["message_reference"] = {"message_id": reply_to["id"],
                                         "channel_id": reply_to["channel_id"],
                                         "guild_id": reply_to.get("guild_id")}
            data["referenced_message"] = reply_to
        return data

    def _member(self, author: Json, admin: bool) -> Json:
        return {"roles": [], "joined_at": _now(), "deaf": False, "mute": False,
                "permissions": ADMIN_PERMISSIONS if admin else "0", "flags": 0}

    def voice_attachment(self, data: bytes, duration: float, *, voice: bool = True,
                         filename: str = "voice-message.ogg",
                         declared_size: int | None = None) -> Json:
        att_id = self.snowflake()
        path = f"attachments/{att_id}/{filename}"
        self.cdn[path] = data
        att: Json = {"id": att_id, "filename": filename, "size": declared_size or len(data),
               "url": f"http://127.0.0.1:{self.port}/cdn/{path}",
               "proxy_url": f"http://127.0.0.1:{self.port}/cdn/{path}",
               "content_type": "audio/ogg"}
        if voice:
            att["duration_secs"] = duration
            att["waveform"] = base64.b64encode(bytes(range(0, 256, 4))).decode()
        return att

    async def send_message(self, channel_id: str, author: Json, content: str = "", *,
                           guild: bool = True, attachments: list[Json] | None = None,
                           mentions: list[Json] | None = None, reply_to: Json | None = None,
                           flags: int = 0, admin: bool = False) -> Json:
        """A user's message, as :meth:`message` makes it, delivered as MESSAGE_CREATE."""
        data = self.message(channel_id, author, content, guild=guild, attachments=attachments,
                            mentions=mentions, reply_to=reply_to, flags=flags, admin=admin)
        await self.dispatch("MESSAGE_CREATE", data)
        return data

    async def slash(self, name: str, author: Json, *, options: list[Json] | None = None,
                    admin: bool = False, channel_id: str = TEXT_CHANNEL, command_type: int = 1,
                    target: Json | None = None) -> Json:
        """An application command invocation, as INTERACTION_CREATE delivers it."""
        registered = {c["name"]: c for cmds in self.commands.values() for c in cmds}
        command = registered[name]
        data: Json = {"id": command["id"], "name": name, "type": command_type,
                    "guild_id": GUILD_ID}
        if options:
            data["options"] = options
        if target is not None:
            data["target_id"] = target["id"]
            data["resolved"] = {"messages": {target["id"]: target}}
        interaction: Json = {
            "id": self.snowflake(), "application_id": APP_ID, "type": 2, "data": data,
            "guild_id": GUILD_ID, "channel_id": channel_id,
            "channel": {"id": channel_id, "type": 0, "guild_id": GUILD_ID, "name": "general",
                        "position": 0, "permission_overwrites": []},
            "member": {**self._member(author, admin), "user": author},
            "token": f"itoken-{self.snowflake()}", "version": 1,
            "app_permissions": str((1 << 11) | (1 << 15)), "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {},
            "context": 0, "attachment_size_limit": 10 * 2**20,
        }
        await self.dispatch("INTERACTION_CREATE", interaction)
        return interaction

    def replies_in(self, channel_id: str) -> list[Posted]:
        return [p for p in self.posted if p.kind == "message" and p.channel_id == channel_id]

    def interaction_replies(self, interaction: Json) -> list[Posted]:
        token = interaction["token"]
        return [p for p in self.posted if p.payload.get("_token") == token]

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 120.0) -> T:
        return await eventually(predicate, timeout, lambda: "posted: " + repr(
            [(p.kind, p.channel_id, p.content, p.flags) for p in self.posted]))

    # --- REST -------------------------------------------------------------------------
    @staticmethod
    def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=json.dumps(data).encode(),
                            headers={"Content-Type": "application/json", **(headers or {})})

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.cdn.get(request.match_info["path"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="audio/ogg")

    async def _read(self, request: web.Request) -> tuple[Json | list[Json], list[Upload]]:
        """The JSON body (an object, or an array for bulk command updates) and uploaded files."""
        if request.content_type == "multipart/form-data":
            payload: Json = {}
            files: list[Upload] = []
            reader = await request.multipart()
            async for part in reader:
                # discord.py sends flat form data: payload_json, then files[n] with a filename.
                assert isinstance(part, BodyPartReader), part
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                else:
                    assert part.filename is not None, part.name
                    files.append((part.filename, part.headers.get("Content-Type", ""),
                                  bytes(await part.read())))
            return payload, files
        if request.can_read_body:
            return await request.json(), []
        return {}, []

    async def _rest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {TOKEN}" and not request.path.startswith(
                ("/api/v10/webhooks/", "/api/v10/interactions/")):
            return self._json({"message": "401: Unauthorized", "code": 0}, 401)
        path = request.match_info["path"]
        key = f"{request.method} {path}"
        self.calls.append(key)
        for pattern, queued in self.fail_next.items():
            if queued and _matches(pattern, request.method, path):
                status, body = queued.pop(0)
                if status == 429:
                    retry = (body or {}).get("retry_after", 0.5)
                    return self._json({"message": "You are being rate limited.",
                                       "retry_after": retry, "global": False}, 429,
                                      {"Via": "1.1 google", "Retry-After": str(retry),
                                       "X-RateLimit-Scope": "user"})
                return self._json(body or {"message": "Internal Server Error", "code": 0}, status)
        payload, files = await self._read(request)
        parts = path.split("/")
        if key == "GET users/@me":
            return self._json(BOT_USER)
        if key == "GET gateway/bot":
            return self._json({"url": self.gateway_url, "shards": self.recommended_shards,
                               "session_start_limit": {"total": 1000, "remaining": 999,
                                                       "reset_after": 14400000,
                                                       "max_concurrency": 1}})
        if key == "GET oauth2/applications/@me":
            return self._json({"id": APP_ID, "name": "Manman", "description": "", "icon": None,
                               "bot_public": True, "bot_require_code_grant": False,
                               "owner": user("1015000000000000999", "Owner"), "team": None,
                               "verify_key": "0" * 64, "flags": 0, "summary": "",
                               "interactions_endpoint_url": None, "bot": BOT_USER})
        if request.method == "PUT" and parts[0] == "applications" and parts[-1] == "commands":
            scope = parts[3] if len(parts) == 5 else "global"
            assert isinstance(payload, list), payload
            stored = []
            for cmd in payload:
                if cmd.get("default_member_permissions") is not None:  # a string, as Discord has it
                    cmd["default_member_permissions"] = str(cmd["default_member_permissions"])
                stored.append({"id": self.snowflake(), "application_id": APP_ID, "version": "1",
                               "default_member_permissions": None, "dm_permission": True,
                               "nsfw": False, "type": 1, "description": "",
                               **({"guild_id": scope} if scope != "global" else {}), **cmd})
            self.commands[scope] = stored
            return self._json(stored)
        if request.method == "POST" and parts[0] == "channels" and parts[-1] == "typing":
            self.typing.append(parts[1])
            return web.Response(status=204)
        if request.method == "POST" and parts[0] == "channels" and parts[-1] == "messages":
            assert isinstance(payload, dict), payload
            return self._create_message(parts[1], payload, files)
        if request.method == "POST" and parts[0] == "interactions":
            assert isinstance(payload, dict), payload
            payload["_token"] = parts[2]
            self.posted.append(Posted("callback", None, payload, files))
            return self._json({"interaction": {"id": parts[1], "type": 2,
                                               "response_message_id": None,
                                               "response_message_loading": payload["type"] == 5,
                                               "response_message_ephemeral": bool(
                                                   (payload.get("data") or {}).get("flags", 0)
                                                   & EPHEMERAL)},
                               "resource": {"type": payload["type"]}})
        if parts[0] == "webhooks":
            assert isinstance(payload, dict), payload
            token = parts[2]
            kind = "followup" if request.method == "POST" else "edit"
            message = self._message_object(None, payload, files)
            payload["_token"] = token
            self.posted.append(Posted(kind, None, payload, files, message))
            return self._json(message)
        return self._json({"message": "404: Not Found", "code": 0}, 404)

    def _message_object(self, channel_id: str | None, payload: Json, files: list[Upload]) -> Json:
        attachments = [
            {"id": self.snowflake(), "filename": name, "size": len(data), "url": "http://x/a",
             "proxy_url": "http://x/a", "content_type": ctype}
            for name, ctype, data in files
        ]
        return {"id": self.snowflake(), "channel_id": channel_id or TEXT_CHANNEL,
                "author": BOT_USER, "content": payload.get("content") or "", "timestamp": _now(),
                "edited_timestamp": None, "tts": False, "mention_everyone": False,
                "mentions": [], "mention_roles": [], "attachments": attachments, "embeds": [],
                "pinned": False, "type": 19 if payload.get("message_reference") else 0,
                "flags": int(payload.get("flags") or 0), "components": []}

    def _create_message(self, channel_id: str, payload: Json, files: list[Upload]) -> web.Response:
        if int(payload.get("flags") or 0) & VOICE_FLAG:
            error = self._voice_message_error(payload, files)
            if error:
                return self._json({"message": error[1], "code": error[0]}, 400)
        if not payload.get("content") and not files:
            return self._json({"message": "Cannot send an empty message", "code": 50006}, 400)
        message = self._message_object(channel_id, payload, files)
        self.posted.append(Posted("message", channel_id, payload, files, message))
        return self._json(message)

    def _voice_message_error(self, payload: Json, files: list[Upload]) -> tuple[int, str] | None:
        if self.refuse_voice_messages:
            return 50173, "Cannot send voice messages in this channel"
        if payload.get("content"):
            return 50159, "Voice messages do not support additional content."
        if len(files) != 1 or not files[0][1].startswith("audio/"):
            return 50160, "Voice messages must have a single audio attachment."
        meta = (payload.get("attachments") or [{}])[0]
        if "duration_secs" not in meta or "waveform" not in meta:
            return 50161, "Voice messages must have supporting metadata."
        return None


def _matches(pattern: str, method: str, path: str) -> bool:
    want_method, _, want_path = pattern.partition(" ")
    if want_method != method:
        return False
    a, b = want_path.split("/"), path.split("/")
    return len(a) == len(b) and all(x == "*" or x == y for x, y in zip(a, b))
