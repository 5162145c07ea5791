"""Telegram adapter (python-telegram-bot 22): platform events in, core types out, and back.

Everything ChatMan does happens in the core (pipeline, admin service); this module decides
*whether* a Telegram message is for the bot, downloads its audio, shows chat actions while the
core works, and sends the answer back with retries that never send twice: a send is retried
only when Telegram refused it (429, 5xx) or the request provably never left (no connection);
a send that may have arrived (a timeout or a connection lost after the request was written) is
logged and given up, never repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import httpx

# Durations and retry_after as timedelta now, as PTB will have them in its next major version.
os.environ.setdefault("PTB_TIMEDELTA", "1")

from telegram import (
    Audio,
    BotCommand,
    BotCommandScopeChat,
    BotCommandScopeDefault,
    Document,
    Message,
    ReplyParameters,
    Update,
    VideoNote,
    Voice,
)
from telegram.constants import (
    ChatAction,
    ChatMemberStatus,
    ChatType,
    MessageEntityType,
    MessageLimit,
)
from telegram.error import (
    BadRequest,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import (
    Application,
    ContextTypes,
    ExtBot,
    MessageHandler,
    TypeHandler,
    filters,
)

from adapters.app import ChatmanApp
from adapters.telegram_ingress import Polling, Webhook, chat_of
from bot.core.commands import ADMIN_COMMANDS, CHAT_COMMANDS, USER_COMMANDS, Actor, ReplyTarget
from bot.core.errors import Busy, NotDelivered, UserFacingError
from bot.core.inbox import ClaimLost, InboxItem, current_item
from bot.core.jobs import Notice
from bot.core.messages import Message as Said
from bot.core.types import ChatKind, ChatRef, Incoming, Turn, UserRef
from bot.core.wording import word
from bot.services.admin import CommandResult
from bot.services.inbox_worker import send_once

log = logging.getLogger(__name__)

T = TypeVar("T")
PLATFORM = "telegram"
#: Bot API limit on files a bot may download.
DOWNLOAD_LIMIT = 20 * 1024 * 1024
#: A chat action shows for about 5 s; renew it before it lapses.
ACTION_EVERY_S = 4.0
SEND_ATTEMPTS = 6
#: Seconds to wait for Telegram's answer to a request. Longer than python-telegram-bot's 5 s:
#: a send that times out is not repeated (it may have arrived), so give slow answers time.
READ_TIMEOUT_S = 20.0
#: Transport failures that prove the request never reached Telegram: no connection was made,
#: or none was free to make it on. Anything else after sending began may have been delivered.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

GENERAL = ("start", "help", *USER_COMMANDS)
#: The attachments the audio handler's filters let through.
Media = Voice | Audio | VideoNote | Document


class OutcomeUnknown(NotDelivered):
    """A send failed in a way that does not say whether Telegram delivered it (a timeout
    waiting for the answer, a connection lost mid-request). It is never sent again, and the
    turn is not stored."""


def resend_is_safe(exc: NetworkError) -> bool:
    """Whether a failed send provably delivered nothing, so sending it again cannot duplicate
    it: the Bot API answered with its own error (``{"ok": false}``, a 5xx), or the request
    never left (no connection). A timeout waiting for the answer, a connection lost after the
    request went out, or a proxy's error page (a 502/504 that is not the Bot API's answer)
    prove nothing: the message may have arrived."""
    cause = exc.__cause__
    if isinstance(exc, TimedOut):
        return isinstance(cause, (httpx.ConnectTimeout, httpx.PoolTimeout))
    if cause is None:
        return True  # the Bot API's own error answer, parsed
    return isinstance(cause, NOT_SENT)


class TelegramAdapter:
    def __init__(self, app: ChatmanApp, *, read_timeout: float = READ_TIMEOUT_S) -> None:
        """``read_timeout``: how long a request waits for Telegram's answer; a send that
        times out may have been delivered and is not repeated."""
        s = app.settings
        if s.telegram_bot_token is None:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set")
        self.app = app
        self.settings = s
        self.webhook_secret = (s.telegram_webhook_secret.get_secret_value()
                               if s.telegram_webhook_secret
                               else derived_webhook_secret(s.telegram_bot_token.get_secret_value()))
        self.application = (
            Application.builder()
            .token(s.telegram_bot_token.get_secret_value())
            .base_url(s.telegram_api_base_url)
            .base_file_url(s.telegram_file_base_url)
            # Different chats concurrently; ChatQueues keeps each chat in order.
            .concurrent_updates(True)
            .media_write_timeout(60)
            .read_timeout(read_timeout)
            .build()
        )
        self.application.add_handler(MessageHandler(filters.COMMAND, self.on_command))
        self.application.add_handler(MessageHandler(
            filters.VOICE | filters.AUDIO | filters.VIDEO_NOTE | filters.Document.AUDIO,
            self.on_audio))
        self.application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND,
                                                     self.on_text))
        self.application.add_error_handler(self.on_error)
        # After every other handler of an update (groups run in order within one update):
        # a record of what was fully handled, for operators' debugging and for tests that
        # must know "this message was processed and nothing (more) came of it".
        self.handled: deque[tuple[str, str]] = deque(maxlen=1000)  # (chat id, message id)
        self.application.add_handler(TypeHandler(Update, self._mark_handled), group=1)
        self.ingress: Polling | Webhook | None = None

    @property
    def bot(self) -> ExtBot[None]:
        return self.application.bot

    async def _mark_handled(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is not None:
            self.handled.append((str(message.chat_id), str(message.message_id)))

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.application.initialize()
        me = self.bot
        log.info("telegram: signed in as @%s", me.username)
        await self._register_commands()
        await self.application.start()
        # Updates go to the inbox first; whichever replica claims one answers it (process).
        self.app.inbox_worker.register(PLATFORM, self.process)
        self.ingress = (Webhook(self.bot, self._receive, self.settings, self.webhook_secret)
                        if self.settings.telegram_webhook_url
                        else Polling(self.bot, self._receive))
        await self.ingress.start()
        self.app.notifiers[PLATFORM] = self.notify

    async def stop(self) -> None:
        self.app.notifiers.pop(PLATFORM, None)
        if self.ingress is not None:
            await self.ingress.stop()
        await self.app.inbox_worker.unregister(PLATFORM)
        with contextlib.suppress(RuntimeError):
            await self.application.stop()
        await self.application.shutdown()

    # --- the inbox --------------------------------------------------------------------
    async def _receive(self, update: Mapping[str, Any]) -> None:
        """Store an update as Telegram sent it (before Telegram is told it arrived)."""
        chat_id, message = chat_of(update)
        command = bool(message and str(message.get("text") or "").startswith("/"))
        # Commands have a line of their own per chat: they never wait behind a voice note.
        chat_key = (f"{chat_id}:commands" if command else str(chat_id)) if chat_id \
            else f"update:{update['update_id']}"
        limit = (self.settings.chat_queue_limit
                 if message is not None and not command and self._may_be_for_us(message)
                 else None)
        fresh = await asyncio.to_thread(self.app.inbox.put, PLATFORM, str(update["update_id"]),
                                        chat_key, update, limit)
        if fresh:
            self.app.inbox_worker.wake()

    def _may_be_for_us(self, message: Mapping[str, Any]) -> bool:
        """A cheap look at the raw message: could it cost a turn? (Only those count toward a
        chat's limit, so group chatter never makes a question "busy".)"""
        chat = message.get("chat") or {}
        if chat.get("type") == ChatType.PRIVATE:
            return True
        if any(k in message for k in ("voice", "audio", "video_note", "document")):
            return True
        replied = message.get("reply_to_message") or {}
        if (replied.get("from") or {}).get("id") == self.bot.id:
            return True
        return f"@{self.bot.username}".lower() in str(message.get("text") or "").lower()

    async def process(self, item: InboxItem) -> None:
        """Answer one update from the inbox, with the handlers as if Telegram had just sent
        it (the inbox worker has claimed it, so this chat's line waits for it)."""
        update = Update.de_json(dict(item.payload), self.bot)
        await self.application.process_update(update)

    async def _register_commands(self) -> None:
        def entry(command: str) -> BotCommand:
            return BotCommand(command, self._words(Said(f"menu.{command}")))

        everyone = [entry(c) for c in GENERAL]
        admins = everyone + [entry(c) for c in ADMIN_COMMANDS]
        await self._send(lambda: self.bot.set_my_commands(everyone, scope=BotCommandScopeDefault()),
                         "setMyCommands", repeatable=True)
        # Admin commands appear only in the admins' own chats with the bot.
        for admin_id in sorted(self.app.admin.admin_ids):
            platform, _, user_id = admin_id.partition(":")
            if platform != PLATFORM or not user_id.lstrip("-").isdigit():
                continue
            try:
                await self._send(functools.partial(
                    self.bot.set_my_commands, admins, scope=BotCommandScopeChat(int(user_id))),
                    "setMyCommands", repeatable=True)
            except BadRequest as exc:  # the admin has not started a chat with the bot yet
                log.info("telegram: admin commands for %s not registered: %s", admin_id, exc)

    # --- deciding what is for us -------------------------------------------------------
    @staticmethod
    def _kind(message: Message) -> ChatKind:
        return ChatKind.PRIVATE if message.chat.type == ChatType.PRIVATE else ChatKind.GROUP

    def _chat_ref(self, message: Message) -> ChatRef:
        return ChatRef(PLATFORM, str(message.chat.id), self._kind(message),
                       message.chat.title or None)

    def _replies_to_bot(self, message: Message) -> bool:
        replied = message.reply_to_message
        return bool(replied and replied.from_user and replied.from_user.id == self.bot.id)

    def _mentions_bot(self, message: Message) -> bool:
        username = f"@{self.bot.username}".lower()
        for entity, text in message.parse_entities().items() | message.parse_caption_entities(
                ).items():
            if entity.type == MessageEntityType.MENTION and text.lower() == username:
                return True
            if (entity.type == MessageEntityType.TEXT_MENTION and entity.user
                    and entity.user.id == self.bot.id):
                return True
        return False

    async def _is_for_us(self, message: Message, voice: bool) -> bool:
        if message.chat.type == ChatType.PRIVATE:
            return True
        if message.chat.type not in (ChatType.GROUP, ChatType.SUPERGROUP):
            return False  # channels
        if self._replies_to_bot(message) or self._mentions_bot(message):
            return True
        if voice:
            return await asyncio.to_thread(self.app.store.answers_every_voice,
                                           self._chat_ref(message))
        return False

    @staticmethod
    def _sender(message: Message) -> UserRef:
        """Who sent ``message``. Anonymous group admins and channels posting into a group
        all appear as one placeholder user in ``from``; their own chat is their identity,
        so one's /forget never touches another's data."""
        if message.sender_chat is not None:
            sc = message.sender_chat
            return UserRef(PLATFORM, f"chat{sc.id}", sc.title or sc.username or "Anonymous")
        user = message.from_user
        assert user is not None, "a message not sent as a chat has a sender"
        return UserRef(PLATFORM, str(user.id), user.full_name)

    async def _is_chat_admin(self, message: Message) -> bool:
        """Whether the sender administers this group (for the group's own settings)."""
        if message.sender_chat is not None:
            # Only the group's admins can post as the group itself; a channel can't.
            return message.sender_chat.id == message.chat.id
        user = message.from_user
        assert user is not None, "a message not sent as a chat has a sender"
        try:
            member = await self.bot.get_chat_member(message.chat.id, user.id)
        except TelegramError as exc:
            log.info("telegram: could not check admin rights in %s: %s", message.chat.id, exc)
            return False
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    def _strip_mention(self, text: str) -> str:
        return " ".join(w for w in text.split() if w.lower() != f"@{self.bot.username}".lower())

    # --- handlers -------------------------------------------------------------------
    async def on_audio(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not await self._is_for_us(message, voice=True):
            return
        media = message.voice or message.audio or message.video_note or message.document
        assert media is not None, "the handler's filters let only these through"
        duration = getattr(media, "duration", None)
        if isinstance(duration, timedelta):
            duration = duration.total_seconds()
        try:
            self.app.codec.check_declared(media.file_size, duration, DOWNLOAD_LIMIT)
        except UserFacingError as err:
            log.info("telegram: refused audio in %s before download: %s", message.chat.id, err)
            await self._reply_text(message, self._words(err.message))
            return
        await self._serve(message, audio=media)

    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not message.text or not await self._is_for_us(message, voice=False):
            return
        text = self._strip_mention(message.text)
        if not text:
            return
        await self._serve(message, text=text)

    async def _serve(self, message: Message, *, audio: Media | None = None,
                     text: str | None = None) -> None:
        chat = self._chat_ref(message)
        item = current_item.get()
        if item is not None and item.overflow:
            # Its chat's line was full when it arrived: told at once, never answered.
            log.info("telegram: chat %s is busy; refused message %d", chat.chat_id,
                     message.message_id)
            await self._reply_text(message, self._words(Busy("chat line full").message))
            return
        voice_in = audio is not None
        want_voice = voice_in or self.settings.telegram_text_voice

        async def deliver(turn: Turn) -> str:
            # Sent before the turn is stored: a reply the user never got is not kept.
            sent = await self._send_turn(message, turn)
            if sent is None:
                raise NotDelivered(f"telegram refused the reply in {chat.chat_id}")
            return sent

        try:
            async with self._chat_action(message.chat.id, ChatAction.RECORD_VOICE
                                         if want_voice else ChatAction.TYPING):
                data = None
                if audio is not None:
                    file = await self._send(audio.get_file, "getFile", repeatable=True)
                    assert file is not None, "getFile refused (403)"
                    data = bytes(await file.download_as_bytearray())
                await self.app.pipeline.handle(Incoming(
                    chat=chat, user=self._sender(message),
                    audio=data, text=text, message_id=str(message.message_id),
                    want_voice=want_voice, receipt=item.receipt if item else None,
                ), deliver=deliver)
        except UserFacingError as err:
            await self._reply_text(message, self._words(err.message))
        except ClaimLost as exc:
            # This replica's claim ran out and another replica answers the message: no apology.
            log.warning("telegram: %s; not stored here", exc)
        except OutcomeUnknown as exc:
            # Already logged; no "sorry" either: the answer may well have arrived.
            log.warning("telegram: answer to message %d in %s: %s; not sent again and not "
                        "stored", message.message_id, chat.chat_id, exc)
        except NotDelivered as exc:
            log.warning("telegram: %s; nothing stored", exc)
        except Exception:
            log.exception("telegram: could not answer message %d in %s", message.message_id,
                          chat.chat_id)
            await self._reply_text(message, self._words(Said("error.internal")))

    async def _send_turn(self, message: Message, turn: Turn) -> str | None:
        """The id of the message carrying the reply, or None unless all of it was sent."""
        voice = turn.voice
        if voice is None:
            return await self._reply_text(message, turn.reply, part="text")
        reply = ReplyParameters(message.message_id, allow_sending_without_reply=True)
        mode = self.settings.telegram_reply_text
        caption = turn.reply if mode == "caption" and len(turn.reply) <= \
            MessageLimit.CAPTION_LENGTH else None

        async def send_voice() -> Message:
            await self._action_once(message.chat.id, ChatAction.UPLOAD_VOICE)
            return await self.bot.send_voice(
                message.chat.id, voice=voice.data, duration=max(1, round(voice.duration_s)),
                caption=caption, reply_parameters=reply, filename="reply.ogg")

        sent = await self._send_part("voice", send_voice, "sendVoice")
        if sent is not None and mode != "none" and caption is None:
            if await self._reply_text(message, turn.reply, part="text") is None:
                return None  # the user did not get all of it: not stored
        return sent

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        if message is None or not message.text or message.from_user is None:
            return
        head = message.text.split(maxsplit=1)[0][1:]
        name, _, addressee = head.partition("@")
        name = name.lower()
        if addressee and addressee.lower() != (self.bot.username or "").lower():
            return  # for another bot in this group
        known = name in GENERAL or name in ADMIN_COMMANDS
        if not known and self._kind(message) is ChatKind.GROUP and not addressee:
            return  # maybe another bot's command
        sender = self._sender(message)
        actor = Actor(PLATFORM, sender.user_id, sender.display_name)
        if (name in CHAT_COMMANDS and self._kind(message) is ChatKind.GROUP
                and not self.app.admin.is_admin(actor) and await self._is_chat_admin(message)):
            actor = Actor(PLATFORM, sender.user_id, sender.display_name, chat_admin=True)
        if name in ("start", "help"):
            await self._reply_text(message, self._help(actor))
            return
        reply_to = None
        replied = message.reply_to_message
        if replied is not None and self._replies_to_bot(message):
            reply_to = ReplyTarget(PLATFORM, str(message.chat.id), str(replied.message_id))
        try:
            # A message is text: the admin service parses it, once, into a typed request.
            result = await asyncio.to_thread(self.app.admin.execute, actor, message.text,
                                             reply_to, self._chat_ref(message))
            text = render_result(result, self.app.language)
        except UserFacingError as err:
            text = self._words(err.message)
        await self._reply_text(message, text)

    def _words(self, said: Said) -> str:
        """What the bot says, in the persona's language."""
        return word(said, self.app.language)

    def _help(self, actor: Actor) -> str:
        lines = [Said("help.intro", {"name": self.app.persona.display_name}),
                 Said("help.forget")]
        if self.app.admin.is_admin(actor):
            lines.append(Said("help.admin", {
                "commands": " ".join(f"/{c}" for c in ADMIN_COMMANDS)}))
        return self._words(Said("lines", {"lines": lines}))

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram: unhandled error", exc_info=context.error)

    # --- training notices -------------------------------------------------------------
    async def notify(self, chat: ChatRef, notice: Notice) -> None:
        chat_id = int(chat.chat_id)
        with contextlib.suppress(OutcomeUnknown):  # logged; the rest of the notice still goes
            for chunk in _chunks(word(notice.message, self.app.language),
                                MessageLimit.MAX_TEXT_LENGTH):
                await self._send(functools.partial(self.bot.send_message, chat_id, chunk),
                                 "sendMessage")
        image = notice.image
        if image is not None:
            data = await asyncio.to_thread(image.read_bytes)
            with contextlib.suppress(OutcomeUnknown):
                await self._send(lambda: self.bot.send_photo(
                    chat_id, photo=data, caption=self._words(Said("notice.loss_curve")),
                    filename=image.name),
                    "sendPhoto")

    # --- sending ----------------------------------------------------------------------
    async def _reply_text(self, message: Message, text: str, *,
                          part: str = "reply") -> str | None:
        """The id of the first message sent, or None unless every part of ``text`` surely was
        sent (a part that may have arrived is not sent again, nor is the rest)."""
        reply = ReplyParameters(message.message_id, allow_sending_without_reply=True)
        first = None
        for i, chunk in enumerate(_chunks(text, MessageLimit.MAX_TEXT_LENGTH)):
            try:
                sent = await self._send_part(f"{part}:{i}", functools.partial(
                    self.bot.send_message, message.chat.id, chunk, reply_parameters=reply),
                    "sendMessage")
            except OutcomeUnknown:
                return None  # logged by _send
            if sent is None:
                return None
            first = first or sent
        return first

    async def _send_part(self, part: str, call: Callable[[], Awaitable[Message]],
                         method: str) -> str | None:
        """One message of the answer, sent once across replicas (see ``send_once``)."""

        async def send() -> str | None:
            sent = await self._send(call, method)
            return str(sent.message_id) if sent is not None else None

        return await send_once(self.app.inbox, part, send)

    async def _send(self, call: Callable[[], Awaitable[T]], method: str, *,
                    repeatable: bool = False) -> T | None:
        """One Bot API call (``method`` names it in logs), retried with backoff when that
        cannot deliver anything twice: after a 429 (waiting ``retry_after``), a 5xx, or a
        network failure before the request left. ``repeatable`` calls (reads, settings) are
        also retried after timeouts and lost connections; a send is not: it may have arrived,
        so :class:`OutcomeUnknown` is raised instead.

        A user who blocked the bot (403) is logged once, not retried: returns None.
        """
        delay = 1.0
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                result = await call()
            except RetryAfter as exc:
                retry_after = exc.retry_after
                wait = (retry_after.total_seconds() if isinstance(retry_after, timedelta)
                        else float(retry_after))
                log.warning("telegram: %s rate limited, retrying in %.1f s", method, wait)
                await asyncio.sleep(wait)
                continue
            except Forbidden as exc:
                log.warning("telegram: not allowed to send (%s); giving up", exc.message)
                return None
            except BadRequest:
                raise
            except NetworkError as exc:  # transport failures, timeouts and 5xx answers
                if not repeatable and not resend_is_safe(exc):
                    cause = exc.__cause__
                    why = f"{exc.message} ({type(cause).__name__})" if cause else exc.message
                    log.warning("telegram: %s may or may not have been delivered: %s; not sent "
                                "again, so it arrives at most once", method, why)
                    raise OutcomeUnknown(f"{method} outcome unknown: {why}") from exc
                if attempt == SEND_ATTEMPTS:
                    raise
                log.warning("telegram: %s failed: %s; retry %d in %.0f s", method, exc.message,
                            attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if isinstance(result, Message):
                log.info("telegram: %s → chat %s, message %d", method, result.chat_id,
                         result.message_id)
            return result
        raise NetworkError(f"{method} still rate limited after several attempts")

    async def _action_once(self, chat_id: int, action: str) -> None:
        try:
            await self.bot.send_chat_action(chat_id, action)
        except TelegramError as exc:  # cosmetic: never fail a reply over it
            log.debug("telegram: chat action failed: %s", exc)

    @contextlib.asynccontextmanager
    async def _chat_action(self, chat_id: int, action: str) -> AsyncIterator[None]:
        async def renew() -> None:
            while True:
                await self._action_once(chat_id, action)
                await asyncio.sleep(ACTION_EVERY_S)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def derived_webhook_secret(token: str) -> str:
    """The webhook's secret token when none is set: derived from the bot token (which only
    Telegram and we know), so every replica of one bot expects the same one. Telegram allows
    1-256 characters of A-Z, a-z, 0-9, _ and -."""
    return hashlib.sha256(b"chatman telegram webhook\0" + token.encode()).hexdigest()[:48]


def render_result(result: CommandResult, language: str) -> str:
    """A command's result as one Telegram message (split by _chunks if long): plain text, one
    line per pair or version, as the words lay it out."""
    return word(result.reply, language)


def _chunks(text: str, size: int) -> list[str]:
    text = text or "…"
    return [text[i:i + size] for i in range(0, len(text), size)]
