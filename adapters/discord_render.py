"""Command results as Discord replies: embeds for lists (/pending, /models), text otherwise.

Words come in the persona's language; Discord's limits are kept here (2000 characters a
message, 25 fields of 1024 characters an embed), so the adapter only sends what it gets.
"""

from __future__ import annotations

from dataclasses import dataclass

import discord

from bot.core.messages import Message, Param
from bot.core.wording import word
from bot.services.admin import CommandResult, metrics_message

MESSAGE_LIMIT = 2000
FIELD_LIMIT = 1024
FIELDS = 25


@dataclass(frozen=True)
class DiscordReply:
    """One message: text, or an embed."""

    content: str | None = None
    embed: discord.Embed | None = None


def text_replies(text: str) -> list[DiscordReply]:
    """``text`` in messages Discord accepts (never an empty one)."""
    return [DiscordReply(text[i:i + MESSAGE_LIMIT] or "…")
            for i in range(0, max(len(text), 1), MESSAGE_LIMIT)]


def render_result(result: CommandResult, language: str) -> list[DiscordReply]:
    embed = _embed(result, language)
    return [DiscordReply(embed=embed)] if embed else text_replies(word(result.reply, language))


def _embed(result: CommandResult, language: str) -> discord.Embed | None:
    def say(code: str, **params: Param) -> str:
        return word(Message(code, params), language)

    if result.command == "pending" and result.pairs:
        d = result.data
        embed = discord.Embed(title=say("pending.title", total=d["total"], page=d["page"],
                                        pages=d["pages"]))
        for p in result.pairs[:FIELDS]:
            name = f"#{p.id}" + (f" — {p.asked_by}" if p.asked_by else "")
            value = (say("pending.question", question=p.question) + "\n"
                     + say("pending.answer", answer=p.answer))
            embed.add_field(name=_cut(name, 256), value=_cut(value, FIELD_LIMIT), inline=False)
        embed.set_footer(text=say("pending.hint"))
        return embed
    if result.command == "models" and result.versions:
        embed = discord.Embed(title=say("models.title"))
        for v in result.versions[:FIELDS]:
            lines = [word(metrics_message(v), language)]
            if v.status in ("rejected", "failed") and v.reasons:
                lines.append("; ".join(v.reasons))
            embed.add_field(name=_cut(f"{v.version} — {say(f'model_status.{v.status}')}", 256),
                            value=_cut("\n".join(lines), FIELD_LIMIT), inline=False)
        return embed
    return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
