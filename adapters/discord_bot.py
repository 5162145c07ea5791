"""Discord adapter (discord.py 2.7): voice messages in and out, guild triggers, slash commands.

Named ``discord_bot`` so it never shadows the ``discord`` package. Like the Telegram adapter,
it only decides whether a message is for the bot, moves bytes, and renders core results.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import PurePosixPath
from typing import Any, Concatenate

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.app import ChatmanApp
from adapters.discord_render import DiscordReply, render_result, text_replies
from bot.core.commands import (
    Activate,
    Actor,
    Add,
    AnswerAll,
    Approve,
    CancelTraining,
    Command,
    Correct,
    Dataset,
    Forget,
    Models,
    Pending,
    PersonaInfo,
    Reject,
    ReplyTarget,
    Retrain,
    Rollback,
    TrainStatus,
)
from bot.core.errors import Busy, NotDelivered, PermissionDenied, UserFacingError
from bot.core.jobs import Notice
from bot.core.messages import Message
from bot.core.types import ChatKind, ChatRef, Incoming, Turn, UserRef, VoiceNote
from bot.core.wording import word

log = logging.getLogger(__name__)

PLATFORM = "discord"
IS_VOICE_MESSAGE = 1 << 13
AUDIO_EXTENSIONS = {".ogg", ".oga", ".opus", ".mp3", ".m4a", ".wav", ".webm", ".flac"}
# Discord's refusals of a voice message: text content, not one audio file, no metadata,
# voice messages not allowed here / missing permission.
VOICE_REFUSALS = {50159, 50160, 50161, 50173, 50013}
MESSAGE_LIMIT = 2000


async def send_voice_message(http: discord.http.HTTPClient, channel_id: int, voice: VoiceNote,
                             reply_to: int | None) -> dict[str, Any]:
    """Post a native voice message: discord.py 2.7 has no public API for one.

    One OGG/Opus attachment with ``duration_secs`` and a base64 ``waveform`` (≤ 256 bytes),
    flag IS_VOICE_MESSAGE, and no text content — Discord refuses anything else.
    """
    payload: dict[str, Any] = {
        "flags": IS_VOICE_MESSAGE,
        "attachments": [{"id": "0", "filename": "voice-message.ogg",
                         "duration_secs": round(voice.duration_s, 2),
                         "waveform": base64.b64encode(voice.waveform[:256]).decode()}],
    }
    if reply_to is not None:
        payload["message_reference"] = {"message_id": str(reply_to), "fail_if_not_exists": False}
    form: list[dict[str, Any]] = [
        {"name": "payload_json", "value": json.dumps(payload)},
        {"name": "files[0]", "value": voice.data, "filename": "voice-message.ogg",
         "content_type": "audio/ogg"},
    ]
    route = Route("POST", "/channels/{channel_id}/messages", channel_id=channel_id)
    sent: dict[str, Any] = await http.request(route, form=form)  # the message, as JSON
    return sent


class DiscordAdapter:
    def __init__(self, app: ChatmanApp) -> None:
        s = app.settings
        if s.discord_bot_token is None:
            raise ValueError("DISCORD_BOT_TOKEN is not set")
        self.app = app
        self.settings = s
        self.queues = app.queues
        self.handled: deque[tuple[str, str]] = deque(maxlen=1000)  # (channel id, message id)
        # discord.py has no per-client endpoint settings; these class attributes are the
        # documented way to point it elsewhere (a proxy, the tests' fake).
        if s.discord_api_base_url:
            Route.BASE = s.discord_api_base_url.rstrip("/")
        if s.discord_gateway_url:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(s.discord_gateway_url)
        # The bot never joins voice channels: no warning about voice-only dependencies.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        intents.message_content = True
        self.client = discord.Client(intents=intents)
        self.tree = app_commands.CommandTree(self.client)
        self.client.event(self.on_message)
        self._commands()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        token = self.settings.discord_bot_token
        assert token is not None, "checked when the adapter was made"
        await self.client.login(token.get_secret_value())
        self._task = asyncio.create_task(self.client.connect(reconnect=True), name="discord")
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises what stopped it
        await self._sync_commands()
        self.app.notifiers[PLATFORM] = self.notify
        log.info("discord: signed in as %s", self.client.user)

    async def stop(self) -> None:
        self.app.notifiers.pop(PLATFORM, None)
        await self.client.close()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task

    async def _sync_commands(self) -> None:
        guilds = [int(g) for g in self.settings.discord_guild_ids.split(",") if g.strip()]
        if guilds:
            for gid in guilds:
                self.tree.copy_global_to(guild=discord.Object(gid))
                await self.tree.sync(guild=discord.Object(gid))
        else:
            await self.tree.sync()

    # --- deciding what is for us -------------------------------------------------------
    @staticmethod
    def _audio(message: discord.Message) -> discord.Attachment | None:
        for att in message.attachments:
            if att.is_voice_message() or (att.content_type or "").startswith("audio/") or \
                    PurePosixPath(att.filename).suffix.lower() in AUDIO_EXTENSIONS:
                return att
        return None

    @property
    def _me(self) -> discord.ClientUser:
        """The bot's own user (known once signed in)."""
        me = self.client.user
        assert me is not None, "signed in before any message arrives"
        return me

    def _chat_ref(self, channel: discord.abc.Snowflake) -> ChatRef:
        if isinstance(channel, discord.DMChannel) or getattr(channel, "guild", None) is None:
            return ChatRef(PLATFORM, str(channel.id), ChatKind.PRIVATE)
        return ChatRef(PLATFORM, str(channel.id), ChatKind.GROUP, getattr(channel, "name", None))

    def _replies_to_bot(self, message: discord.Message) -> bool:
        ref = message.reference
        resolved = ref.resolved if ref else None
        return isinstance(resolved, discord.Message) and resolved.author.id == self._me.id

    async def _is_for_us(self, message: discord.Message, voice: bool) -> bool:
        if message.guild is None:
            return True
        if self.client.user in message.mentions or self._replies_to_bot(message):
            return True
        if voice:
            return await asyncio.to_thread(self.app.store.answers_every_voice,
                                           self._chat_ref(message.channel))
        return False

    def _clean(self, content: str) -> str:
        me = self._me.id
        for form in (f"<@{me}>", f"<@!{me}>"):
            content = content.replace(form, " ")
        return " ".join(content.split())

    # --- messages -------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        try:
            await self._on_message(message)
        finally:
            # What was fully handled (answered, refused or ignored), for operators' debugging
            # and for tests that must know nothing (more) came of a message.
            self.handled.append((str(message.channel.id), str(message.id)))

    async def _on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        audio = self._audio(message)
        if not await self._is_for_us(message, voice=audio is not None):
            return
        if audio is not None:
            try:
                self.app.codec.check_declared(audio.size, audio.duration)
            except UserFacingError as err:
                log.info("discord: refused audio in %s before download: %s", message.channel.id,
                         err)
                await self._send_text(message.channel, self._words(err.message), message)
                return
            await self._serve(message, audio=audio)
            return
        text = self._clean(message.content)
        if text:
            await self._serve(message, text=text)

    async def _serve(self, message: discord.Message, *, audio: discord.Attachment | None = None,
                     text: str | None = None) -> None:
        chat = self._chat_ref(message.channel)
        try:
            slot = self.queues.enter(chat)
        except Busy as busy:
            await self._send_text(message.channel, self._words(busy.message), message)
            return
        async with slot:
            want_voice = audio is not None or self.settings.discord_text_voice

            async def deliver(turn: Turn) -> str:
                # Sent before the turn is stored: a reply the user never got is not kept.
                carrier = await self._send_turn(message, turn)
                if carrier is None:
                    raise NotDelivered(f"discord refused the reply in {chat.chat_id}")
                return str(carrier)

            try:
                async with message.channel.typing():
                    data = await audio.read() if audio is not None else None
                    author = message.author
                    await self.app.pipeline.handle(Incoming(
                        chat=chat,
                        user=UserRef(PLATFORM, str(author.id), author.display_name),
                        audio=data, text=text, message_id=str(message.id),
                        want_voice=want_voice,
                    ), deliver=deliver)
            except UserFacingError as err:
                await self._send_text(message.channel, self._words(err.message), message)
            except NotDelivered as exc:
                log.warning("discord: %s; nothing stored", exc)
            except Exception:
                log.exception("discord: could not answer message %s", message.id)
                await self._send_text(message.channel, self._words(Message("error.internal")),
                                      message)

    async def _send_turn(self, message: discord.Message, turn: Turn) -> int | None:
        """Returns the id of the message /approve should find: the text if sent, else the voice."""
        if turn.voice is None:
            sent = await self._send_text(message.channel, turn.reply, message)
            return sent.id if sent else None
        voice_id = None
        try:
            data = await send_voice_message(self.client.http, message.channel.id, turn.voice,
                                            message.id)
            voice_id = int(data["id"])
        except discord.HTTPException as exc:
            if exc.code not in VOICE_REFUSALS and exc.status != 403:
                raise
            log.info("discord: voice message refused (%s %s); sending a file", exc.code, exc.text)
            sent = await message.channel.send(
                file=discord.File(io.BytesIO(turn.voice.data), "reply.ogg"), reference=message,
                mention_author=False)
            voice_id = sent.id
        if self.settings.discord_reply_text == "message":
            sent = await self._send_text(message.channel, turn.reply, None)
            return sent.id if sent else voice_id
        return voice_id

    def _words(self, said: Message) -> str:
        """What the bot says, in the persona's language."""
        return word(said, self.app.language)

    async def _send_text(self, channel: discord.abc.Messageable, text: str,
                         reference: discord.Message | None) -> discord.Message | None:
        first: discord.Message | None = None
        for i in range(0, max(len(text), 1), MESSAGE_LIMIT):
            # discord.py's overloads leave out the None its send() takes (and defaults to).
            sent = await channel.send(text[i:i + MESSAGE_LIMIT] or "…",
                                      reference=reference,  # type: ignore[arg-type]
                                      mention_author=False)
            first = first or sent
            reference = None
        return first

    # --- training notices -------------------------------------------------------------
    async def notify(self, chat: ChatRef, notice: Notice) -> None:
        channel = self.client.get_channel(int(chat.chat_id)) or await self.client.fetch_channel(
            int(chat.chat_id))
        if not isinstance(channel, discord.abc.Messageable):
            raise TypeError(f"discord: channel {chat.chat_id} takes no messages")
        await self._send_text(channel, word(notice.message, self.app.language), None)
        image = notice.image
        if image is not None:
            data = await asyncio.to_thread(image.read_bytes)
            await channel.send(file=discord.File(io.BytesIO(data), image.name))

    # --- slash commands -----------------------------------------------------------------
    def _actor(self, interaction: discord.Interaction) -> Actor:
        user = interaction.user
        # A guild's Administrator (or a member who may manage this channel) administers that
        # guild's channel, not the persona every server and platform shares: they may change
        # this channel's settings (/answerall) and nothing else. Bot admins are
        # CHATMAN_ADMIN_IDS alone. The permissions are the member's resolved ones in this
        # channel, as Discord sent them with the interaction.
        perms = interaction.permissions
        chat_admin = interaction.guild_id is not None and (
            perms.administrator or perms.manage_guild or perms.manage_channels)
        return Actor(PLATFORM, str(user.id), user.display_name, chat_admin=chat_admin)

    async def _run(self, interaction: discord.Interaction, request: Command) -> None:
        """Run ``request`` for the user behind ``interaction``; the reply is ephemeral.

        Slash command options arrive typed and become the request as they are, never rebuilt
        into command text and parsed again (an answer with "|" in it stays one answer).
        """
        actor = self._actor(interaction)
        if not self.app.admin.may(actor, request.name):
            log.warning("discord: refused /%s for non-admin %s", request.name, actor.key)
            await interaction.response.send_message(
                self._words(PermissionDenied().message), ephemeral=True)
            return
        # Training and dataset work can take longer than Discord's 3 s to answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        origin = self._chat_ref(interaction.channel) if interaction.channel else None
        try:
            result = await asyncio.to_thread(self.app.admin.run, actor, request, origin)
            replies = render_result(result, self.app.language)
        except UserFacingError as err:
            replies = text_replies(self._words(err.message))
        for reply in replies:
            await self._follow_up(interaction, reply)

    @staticmethod
    async def _follow_up(interaction: discord.Interaction, reply: DiscordReply) -> None:
        if reply.embed is not None:
            await interaction.followup.send(embed=reply.embed, ephemeral=True)
        else:
            await interaction.followup.send(reply.content or "…", ephemeral=True)

    def _commands(self) -> None:
        tree, run = self.tree, self._run
        admin = app_commands.default_permissions(administrator=True)

        def add(fn: Callable[Concatenate[discord.Interaction[Any], ...],
                             Coroutine[Any, Any, None]],
                description: str, is_admin: bool = True) -> None:
            command: app_commands.Command[Any, ..., None] = app_commands.Command(
                name=fn.__name__.rstrip("_"), description=description, callback=fn)
            tree.add_command(admin(command) if is_admin else command)

        async def approve(interaction: discord.Interaction, pair_id: int) -> None:
            await run(interaction, Approve(pair_id))

        async def correct(interaction: discord.Interaction, pair_id: int, answer: str,
                          question: str | None = None) -> None:
            await run(interaction, Correct(answer, pair_id, question))

        async def reject(interaction: discord.Interaction, pair_id: int) -> None:
            await run(interaction, Reject(pair_id))

        async def pending(interaction: discord.Interaction, page: int = 1) -> None:
            await run(interaction, Pending(page))

        async def add_(interaction: discord.Interaction, question: str, answer: str) -> None:
            await run(interaction, Add(question, answer))

        async def dataset(interaction: discord.Interaction) -> None:
            await run(interaction, Dataset())

        async def persona(interaction: discord.Interaction) -> None:
            await run(interaction, PersonaInfo())

        async def retrain(interaction: discord.Interaction, max_steps: int | None = None) -> None:
            await run(interaction, Retrain(max_steps or None))

        async def trainstatus(interaction: discord.Interaction) -> None:
            await run(interaction, TrainStatus())

        async def canceltrain(interaction: discord.Interaction, job_id: int | None = None) -> None:
            await run(interaction, CancelTraining(job_id or None))

        async def models(interaction: discord.Interaction) -> None:
            await run(interaction, Models())

        async def activate(interaction: discord.Interaction, version: str) -> None:
            await run(interaction, Activate(version.strip()))

        async def rollback(interaction: discord.Interaction) -> None:
            await run(interaction, Rollback())

        async def answerall(interaction: discord.Interaction, on: bool) -> None:
            await run(interaction, AnswerAll(on))

        async def forget(interaction: discord.Interaction) -> None:
            await run(interaction, Forget())

        add(approve, "Approve a pending pair")
        add(correct, "Approve a pair with a better answer")
        add(reject, "Keep a pair out of the training data")
        add(pending, "Pairs waiting for review")
        add(add_, "Add a question/answer pair")
        add(dataset, "Dataset statistics")
        add(persona, "Persona and answering model")
        add(retrain, "Train a new version (stops when the evaluation gate passes)")
        add(trainstatus, "Training progress and queue")
        add(canceltrain, "Cancel a queued training job or stop the running one")
        add(models, "Model versions")
        add(activate, "Switch to a model version")
        add(rollback, "Back to the previous model version")
        add(answerall, "Answer every voice message in this channel")
        add(forget, "Delete what you said to me", is_admin=False)

        async def approve_answer(interaction: discord.Interaction,
                                 message: discord.Message) -> None:
            target = ReplyTarget(PLATFORM, str(message.channel.id), str(message.id))
            await run(interaction, Approve(None, target))

        tree.add_command(admin(app_commands.ContextMenu(name="Approve answer",
                                                        callback=approve_answer)))
