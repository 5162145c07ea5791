"""How a Discord message is kept in the inbox: :class:`Received`, what the adapter needs to
answer it, as JSON.

The gateway's MESSAGE_CREATE is seen only by the replica running the message's shard, while
any replica may claim it from the inbox: one that runs other shards has neither the channel
nor the guild in its cache, and a restarted one has no cache at all. So the payload carries
every fact answering needs (where to reply, who asked, what they said or sent) and the
answering side builds nothing from discord.py's cache. Snowflakes are strings, as Discord
writes them.

Fetching the message again by REST would be the other way; it is not taken because it needs
Read Message History in guild channels (a bot may lack it), costs a request per message, and
still does not say which guild an uncached channel is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import discord

#: The payload's format; a replica that reads one it does not know fails the message (logged)
#: rather than answering it wrongly.
VERSION = 1
AUDIO_EXTENSIONS = {".ogg", ".oga", ".opus", ".mp3", ".m4a", ".wav", ".webm", ".flac"}


@dataclass(frozen=True, slots=True)
class Attachment:
    id: int
    filename: str
    size: int
    content_type: str | None
    #: the CDN address (signed: Discord lets it expire after about a day)
    url: str
    #: declared by Discord for voice messages
    duration_secs: float | None
    #: a native voice message (it has a waveform)
    voice: bool

    @property
    def is_audio(self) -> bool:
        return self.voice or (self.content_type or "").startswith("audio/") or \
            PurePosixPath(self.filename).suffix.lower() in AUDIO_EXTENSIONS

    @classmethod
    def of(cls, att: discord.Attachment) -> Attachment:
        return cls(att.id, att.filename, att.size, att.content_type, att.url, att.duration,
                   att.is_voice_message())

    def to_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "filename": self.filename, "size": self.size,
                "content_type": self.content_type, "url": self.url,
                "duration_secs": self.duration_secs, "voice": self.voice}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attachment:
        duration = data.get("duration_secs")
        return cls(int(data["id"]), str(data["filename"]), int(data["size"]),
                   data.get("content_type"), str(data["url"]),
                   float(duration) if duration is not None else None, bool(data.get("voice")))


@dataclass(frozen=True, slots=True)
class Received:
    """One user's message as the inbox keeps it."""

    id: int
    channel_id: int
    #: None in a DM
    guild_id: int | None
    channel_name: str | None
    author_id: int
    author_name: str
    author_bot: bool
    content: str
    attachments: tuple[Attachment, ...]
    #: the users it mentions
    mentions: frozenset[int]
    #: the message it replies to, and that message's author when Discord said
    reply_to: int | None
    reply_to_author: int | None
    flags: int

    @property
    def audio(self) -> Attachment | None:
        return next((a for a in self.attachments if a.is_audio), None)

    @classmethod
    def of(cls, message: discord.Message) -> Received:
        """From the gateway's message (synchronous: only what came with the event)."""
        channel = message.channel
        guild_id = message.guild.id if message.guild is not None else getattr(
            channel, "guild_id", None)  # a channel discord.py has not cached
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        return cls(
            id=message.id, channel_id=channel.id, guild_id=guild_id,
            channel_name=getattr(channel, "name", None), author_id=message.author.id,
            author_name=message.author.display_name, author_bot=message.author.bot,
            content=message.content,
            attachments=tuple(Attachment.of(a) for a in message.attachments),
            mentions=frozenset(u.id for u in message.mentions),
            reply_to=ref.message_id if ref is not None else None,
            reply_to_author=(resolved.author.id if isinstance(resolved, discord.Message)
                             else None),
            flags=message.flags.value,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION, "id": str(self.id), "channel_id": str(self.channel_id),
            "guild_id": str(self.guild_id) if self.guild_id is not None else None,
            "channel_name": self.channel_name,
            "author": {"id": str(self.author_id), "name": self.author_name,
                       "bot": self.author_bot},
            "content": self.content,
            "attachments": [a.to_json() for a in self.attachments],
            "mentions": sorted(str(u) for u in self.mentions),
            "reference": None if self.reply_to is None else {
                "message_id": str(self.reply_to),
                "author_id": (str(self.reply_to_author) if self.reply_to_author is not None
                              else None)},
            "flags": self.flags,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Received:
        if data.get("v") != VERSION:
            raise ValueError(f"discord inbox payload version {data.get('v')!r}, not {VERSION}")
        author = data["author"]
        ref = data.get("reference")
        guild_id = data.get("guild_id")
        reply_author = ref.get("author_id") if ref else None
        return cls(
            id=int(data["id"]), channel_id=int(data["channel_id"]),
            guild_id=int(guild_id) if guild_id is not None else None,
            channel_name=data.get("channel_name"), author_id=int(author["id"]),
            author_name=str(author["name"]), author_bot=bool(author.get("bot")),
            content=str(data.get("content") or ""),
            attachments=tuple(Attachment.from_json(a) for a in data.get("attachments") or ()),
            mentions=frozenset(int(u) for u in data.get("mentions") or ()),
            reply_to=int(ref["message_id"]) if ref else None,
            reply_to_author=int(reply_author) if reply_author is not None else None,
            flags=int(data.get("flags") or 0),
        )
