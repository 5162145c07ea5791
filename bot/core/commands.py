"""Admin and user commands as typed requests, and the one parser for commands typed as text.

Every front end hands the admin service one of these frozen requests. Only where the input
*is* text (Telegram messages, ``chatman admin``, typed chat commands) is it parsed, once, by
:func:`parse_command`; Discord options and the web console's JSON build the request directly,
so an answer with "|" in it is never rebuilt into text and split again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from bot.core.errors import CommandError

ADMIN_COMMANDS = ("approve", "correct", "reject", "pending", "add", "dataset", "persona",
                  "retrain", "trainstatus", "canceltrain", "models", "activate", "rollback",
                  "answerall")
#: Commands that change one chat's own settings: that chat's admins may run them too.
CHAT_COMMANDS = ("answerall",)
USER_COMMANDS = ("forget",)
#: Ids are database integers: anything longer cannot name a pair (and would overflow).
MAX_ID = 2**63 - 1
MAX_PAGE = 1_000_000
MAX_STEPS = 100_000


@dataclass(frozen=True)
class Actor:
    platform: str
    user_id: str
    display_name: str
    # Operators of this installation: the shell (CLI) and holders of the web admin token.
    # Never set from a chat platform's own roles: a platform admin administers a chat, not the
    # persona everybody talks to.
    granted_admin: bool = False
    # The platform says this user administers the chat the command came from (a Telegram group
    # admin, a Discord member who may manage the server or channel): enough for that chat's own
    # settings (CHAT_COMMANDS), nothing else.
    chat_admin: bool = False

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class ReplyTarget:
    """The bot message a command replied to."""

    platform: str
    chat_id: str
    message_id: str


# --- requests ------------------------------------------------------------------------------
# ``name`` is the command's name: what permissions (``AdminService.may``) are checked against.
# ``pair_id`` None: the pair whose answer ``reply_to`` is.
@dataclass(frozen=True)
class Approve:
    name: ClassVar[str] = "approve"
    pair_id: int | None = None
    reply_to: ReplyTarget | None = None


@dataclass(frozen=True)
class Correct:
    """Approve with ``answer`` (exactly as given, "|" and all); ``question`` too unless None
    or blank."""

    name: ClassVar[str] = "correct"
    answer: str
    pair_id: int | None = None
    question: str | None = None
    reply_to: ReplyTarget | None = None


@dataclass(frozen=True)
class Reject:
    name: ClassVar[str] = "reject"
    pair_id: int | None = None
    reply_to: ReplyTarget | None = None


@dataclass(frozen=True)
class Add:
    name: ClassVar[str] = "add"
    question: str
    answer: str


@dataclass(frozen=True)
class Pending:
    name: ClassVar[str] = "pending"
    page: int = 1


@dataclass(frozen=True)
class Dataset:
    name: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class PersonaInfo:
    name: ClassVar[str] = "persona"


@dataclass(frozen=True)
class Retrain:
    name: ClassVar[str] = "retrain"
    max_steps: int | None = None


@dataclass(frozen=True)
class CancelTraining:
    """``job_id`` None: the one job queued or running."""

    name: ClassVar[str] = "canceltrain"
    job_id: int | None = None


@dataclass(frozen=True)
class TrainStatus:
    name: ClassVar[str] = "trainstatus"


@dataclass(frozen=True)
class Models:
    name: ClassVar[str] = "models"


@dataclass(frozen=True)
class Activate:
    name: ClassVar[str] = "activate"
    version: str


@dataclass(frozen=True)
class Rollback:
    name: ClassVar[str] = "rollback"


@dataclass(frozen=True)
class AnswerAll:
    """Answer every voice note in the chat the command came from (its ``origin``)."""

    name: ClassVar[str] = "answerall"
    on: bool


@dataclass(frozen=True)
class Forget:
    name: ClassVar[str] = "forget"


Command = (Approve | Correct | Reject | Add | Pending | Dataset | PersonaInfo | Retrain
           | CancelTraining | TrainStatus | Models | Activate | Rollback | AnswerAll | Forget)


# --- text ----------------------------------------------------------------------------------
def command_name(text: str) -> str:
    """``approve`` from "/approve@ChatManBot 3" (the slash is optional; Telegram appends
    @botname in groups)."""
    name = text.strip().lstrip("/").partition(" ")[0]
    return name.split("@", 1)[0].lower()


def parse_command(text: str, reply_to: ReplyTarget | None = None, *,
                  reply_is_answer: bool = False) -> Command:
    """``/command args`` as a request. ``reply_to``: the bot message the command replied to;
    ``reply_is_answer``: that message is one of the bot's answers, so /correct's whole text is
    the answer ("/correct 2024 was great" keeps its 2024). Raises :class:`CommandError`."""
    name = command_name(text)
    args = text.strip().lstrip("/").partition(" ")[2].strip()
    if name in USER_COMMANDS:
        return Forget()
    if name not in ADMIN_COMMANDS:
        known = ", ".join(f"/{c}" for c in (*ADMIN_COMMANDS, *USER_COMMANDS))
        raise CommandError(f"unknown command {name!r}", code="command.unknown",
                           params={"name": name, "known": known})
    if name == "pending":
        return Pending(_page(args))
    if name == "retrain":
        return Retrain(_max_steps(args))
    if name == "canceltrain":
        return CancelTraining(_job_id(args))
    if name in ("dataset", "persona"):
        return Dataset() if name == "dataset" else PersonaInfo()
    if name in ("trainstatus", "models", "rollback"):
        if args:
            raise CommandError(f"unexpected {args!r}", code="usage.bare", params={"name": name})
        return TrainStatus() if name == "trainstatus" else Models() if name == "models" \
            else Rollback()
    if name == "answerall":
        if args.lower() not in ("on", "off"):
            raise CommandError(f"bad answerall {args!r}", code="usage.answerall")
        return AnswerAll(args.lower() == "on")
    if name == "activate":
        if not args or " " in args:
            raise CommandError("activate without version", code="usage.activate")
        return Activate(args)
    if name == "add":
        question, answer = split_pair(args)
        if not question or not answer:
            raise CommandError(f"bad pair {args[:80]!r}", code="usage.add")
        return Add(question, answer)
    if name == "correct":
        # Replying to one of my answers names the pair: then the whole text is the answer.
        # Otherwise a leading number is the ID.
        pair_id, rest = (None, args) if reply_is_answer else _leading_id(args)
        question, answer = split_pair(rest)
        if not answer:
            raise CommandError("correct without text", code="usage.correct")
        return Correct(answer, pair_id, question or None, reply_to)
    pair_id, rest = _leading_id(args)
    if rest:
        raise CommandError(f"unexpected {rest!r}", code="usage.id", params={"name": name})
    if name == "approve":
        return Approve(pair_id, reply_to)
    return Reject(pair_id, reply_to)


def _is_number(text: str) -> bool:
    # str.isdigit() also accepts "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


def _max_steps(args: str) -> int | None:
    if not args:
        return None
    if not _is_number(args) or len(args) > 6 or not 1 <= int(args) <= MAX_STEPS:
        raise CommandError(f"bad max steps {args!r}", code="usage.retrain")
    return int(args)


def _job_id(args: str) -> int | None:
    token = args.lstrip("#")
    if not args:
        return None
    if not _is_number(token) or len(token) > 18:
        raise CommandError(f"bad job id {args[:40]!r}", code="usage.canceltrain")
    return int(token)


def _page(args: str) -> int:
    if not args:
        return 1
    if not _is_number(args) or len(args) > 7 or not 1 <= int(args) <= MAX_PAGE:
        raise CommandError(f"bad page {args[:40]!r}", code="usage.pending")
    return int(args)


def _leading_id(args: str) -> tuple[int | None, str]:
    head, _, rest = args.partition(" ")
    token = head.lstrip("#")
    if _is_number(token):
        if len(token) > 19 or int(token) > MAX_ID:
            raise CommandError(f"pair id {token[:40]} out of range", code="pair.missing",
                               params={"id": token[:20]})
        return int(token), rest.strip()
    return None, args


#: A pair separator: a bar standing alone (whitespace, or the start or end, on both sides).
PAIR_SEPARATOR = re.compile(r"(?<!\S)\|(?!\S)")


def split_pair(text: str) -> tuple[str | None, str]:
    """``(question, answer)`` from "<question> | <answer>", split at the first bar with
    whitespace (or the text's start or end) on both sides; ``(None, text)`` without one. "a|b"
    never splits. Both stripped."""
    found = PAIR_SEPARATOR.search(text)
    if found is None:
        return None, text.strip()
    return text[:found.start()].strip(), text[found.end():].strip()
