"""The admin service: one set of commands for every adapter and the CLI.

Adapters hand over who is asking (:class:`Actor`) and either the command as text
(:meth:`AdminService.execute`: chat messages, the CLI) with the message it replies to, or the
command's fields, typed, to its own method (Discord options, the web console's JSON): those are
never rebuilt into text and parsed again. They render the returned :class:`CommandResult`.
Nothing here knows a chat platform.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.core.curation import Change, CurationRepository, PairView
from bot.core.dataset import collect_rows, training_messages
from bot.core.errors import UserFacingError
from bot.core.jobs import DuplicateJob, JobRepository, JobStatus, TrainingKey
from bot.core.persona import PersonaProfile
from bot.core.ports import ReplyAudio, Store
from bot.core.registry import ModelStatus, RegistryRepository, VersionView
from bot.core.types import ChatKind, ChatMessage, ChatRef

log = logging.getLogger(__name__)

#: What a run started now would train on: training.jobs.training_key, handed in by the
#: application (it renders the dataset and the TrainConfig as the trainer does, and bot/ never
#: imports training/).
TrainingKeyOf = Callable[[CurationRepository, PersonaProfile, str, str, dict[str, Any]], TrainingKey]

PAGE_SIZE = 10
ADMIN_COMMANDS = ("approve", "correct", "reject", "pending", "add", "dataset", "persona",
                  "retrain", "trainstatus", "canceltrain", "models", "activate", "rollback",
                  "answerall")
#: Commands that change one chat's own settings: that chat's admins may run them too.
CHAT_COMMANDS = ("answerall",)
USER_COMMANDS = ("forget",)
#: Ids are database integers: anything longer cannot name a pair (and would overflow).
MAX_ID = 2**63 - 1
MAX_PAGE = 1_000_000


class PermissionDenied(UserFacingError):
    user_message = "Only admins can do that."


class CommandError(UserFacingError):
    pass


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


@dataclass
class CommandResult:
    command: str
    message: str
    pairs: list[PairView] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"command": self.command, "message": self.message,
                "pairs": [p.to_dict() for p in self.pairs], "data": self.data}


def excerpt(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def estimate_tokens(messages: list[ChatMessage]) -> int:
    """A tokenizer-free estimate: ~4 characters per token, one per CJK character."""
    total = 0
    for m in messages:
        cjk = sum(1 for ch in m.content if "\u3400" <= ch <= "\u9fff")
        total += cjk + (len(m.content) - cjk) // 4 + 4  # + role markers
    return total


class AdminService:
    def __init__(
        self,
        curation: CurationRepository,
        persona: PersonaProfile,
        *,
        store: Store,
        language: str,
        admin_ids: frozenset[str],
        model_version: Callable[[], str],
        count_tokens: Callable[[list[ChatMessage]], int] = estimate_tokens,
        registry: RegistryRepository,
        jobs: JobRepository,
        training_key: TrainingKeyOf,
        default_max_steps: int | None = None,
        train_base_model: str | None = None,
        reply_audio: ReplyAudio | None = None,
        cancel_wait_seconds: float = 30.0,
    ) -> None:
        """``train_base_model`` is CHATMAN_TRAIN_BASE_MODEL (default: the persona's base);
        ``cancel_wait_seconds`` bounds how long /canceltrain waits for the runner to confirm."""
        self.reply_audio = reply_audio
        self.store = store
        self.registry = registry
        self.jobs = jobs
        self._training_key = training_key
        self.default_max_steps = default_max_steps
        self.train_base_model = train_base_model
        self.cancel_wait_seconds = cancel_wait_seconds
        # Set by the application: nudge the job runner (a job was queued or cancelled) / the
        # model follower (thread-safe).
        self.on_job_queued: Callable[[], None] = lambda: None
        self.on_model_change: Callable[[], None] = lambda: None
        self.curation = curation
        self.persona = persona
        self.language = language
        self.admin_ids = admin_ids
        self.model_version = model_version
        self.count_tokens = count_tokens

    def is_admin(self, actor: Actor) -> bool:
        """A bot admin: CHATMAN_ADMIN_IDS or an operator. Persona-wide commands need this."""
        return actor.granted_admin or actor.key in self.admin_ids

    def may(self, actor: Actor, command: str) -> bool:
        """Whether ``actor`` may run ``/command`` (in the chat the command came from)."""
        if command in USER_COMMANDS:
            return True
        if command in CHAT_COMMANDS and actor.chat_admin:
            return True
        return self.is_admin(actor)

    # --- the one entry point adapters use ---------------------------------------------
    def execute(self, actor: Actor, text: str, reply_to: ReplyTarget | None = None,
                origin: ChatRef | None = None) -> CommandResult:
        """Run ``/command args`` (the slash is optional) for ``actor``.

        The text route (Telegram messages, ``chatman admin``, typed chat commands): the only
        place command text is parsed, once, into the typed methods below. ``reply_to`` is the
        bot message the command replied to; ``origin`` is the chat the command came from:
        where /retrain reports progress.
        """
        name, _, args = text.strip().lstrip("/").partition(" ")
        name = name.split("@", 1)[0].lower()  # Telegram appends @botname in groups
        args = args.strip()
        if name in USER_COMMANDS:
            return self.forget(actor)
        if name not in ADMIN_COMMANDS:
            known = ", ".join(f"/{c}" for c in (*ADMIN_COMMANDS, *USER_COMMANDS))
            raise CommandError(f"unknown command {name!r}",
                               user_message=f"Unknown command /{name}. Commands: {known}.")
        self._require_admin(actor, name)
        if name == "pending":
            return self.pending(actor, _page(args))
        if name == "dataset":
            return self.dataset(actor)
        if name == "persona":
            return self.persona_info(actor)
        if name == "retrain":
            return self.retrain(actor, origin, _max_steps(args))
        if name == "canceltrain":
            return self.cancel_training(actor, _job_id(args))
        if name in ("trainstatus", "models", "rollback"):
            if args:
                raise CommandError(f"unexpected {args!r}", user_message=f"Usage: /{name}")
            return getattr(self, {"trainstatus": "train_status", "models": "models",
                                  "rollback": "rollback"}[name])(actor)
        if name == "answerall":
            if args.lower() not in ("on", "off"):
                raise CommandError(f"bad answerall {args!r}",
                                   user_message="Usage: /answerall on|off")
            return self.answer_all(actor, origin, args.lower() == "on")
        if name == "activate":
            if not args or " " in args:
                raise CommandError("activate without version",
                                   user_message="Usage: /activate VERSION (see /models)")
            return self.activate(actor, args)
        if name == "add":
            question, answer = _split_pair(args)
            if not question or not answer:
                raise CommandError(f"bad pair {args[:80]!r}", user_message=ADD_USAGE)
            return self.add(actor, question, answer)
        if name == "correct":
            # Replying to one of my answers names the pair: then the whole text is the answer
            # ("/correct 2024 was great" keeps its 2024). Otherwise a leading number is the ID.
            pair_id = self._answer_replied_to(reply_to)
            rest = args
            if pair_id is None:
                pair_id, rest = _leading_id(args)
            question, answer = _split_pair(rest)
            if not answer:
                raise CommandError("correct without text", user_message=CORRECT_USAGE)
            return self.correct(actor, pair_id, answer, question or None, reply_to=reply_to)
        pair_id, rest = _leading_id(args)
        if rest:
            raise CommandError(f"unexpected {rest!r}", user_message=f"Usage: /{name} [ID]")
        if name == "approve":
            return self.approve(actor, pair_id, reply_to=reply_to)
        return self.reject(actor, pair_id, reply_to=reply_to)

    # --- commands -----------------------------------------------------------------------
    def _require_admin(self, actor: Actor, command: str) -> None:
        if not self.may(actor, command):
            log.warning("refused /%s for non-admin %s", command, actor.key)
            raise PermissionDenied(f"{actor.key} is not an admin")

    def _answer_replied_to(self, reply_to: ReplyTarget | None) -> int | None:
        """The pair whose answer ``reply_to`` is; None when it is no answer (or no reply)."""
        if reply_to is None:
            return None
        return self.curation.find_by_reply(reply_to.platform, reply_to.chat_id,
                                           reply_to.message_id)

    def _target(self, pair_id: int | None, reply_to: ReplyTarget | None, command: str) -> int:
        if pair_id is not None:
            return pair_id
        if reply_to is not None:
            found = self._answer_replied_to(reply_to)
            if found is None:
                raise CommandError("reply target is not an answer", user_message=(
                    "That message isn't one of my answers, so there is nothing to curate."))
            return found
        raise CommandError("no target", user_message=(
            f"Which pair? Reply to one of my answers with /{command}, or give its ID "
            "(see /pending)."))

    def _changed(self, command: str, change: Change | None, pair_id: int, verb: str) -> CommandResult:
        if change is None:
            raise CommandError(f"no pair {pair_id}", user_message=f"There is no pair #{pair_id}.")
        p = change.pair
        if not change.changed:
            message = f"Pair #{p.id} was already {p.status}; nothing changed."
        else:
            message = f"{verb} #{p.id}: {excerpt(p.question)} → {excerpt(p.answer)}"
            if change.superseded:
                ids = ", ".join(f"#{i}" for i in change.superseded)
                message += f" (replaces earlier {ids})"
        return CommandResult(command, message, [p], {"changed": change.changed,
                                                      "superseded": change.superseded})

    # Typed entry points: Discord options, the web console's JSON and the text commands above
    # all end here, with each field as given (never rebuilt into text and split again).
    # ``pair_id`` None: the pair whose answer ``reply_to`` is.
    def approve(self, actor: Actor, pair_id: int | None,
                reply_to: ReplyTarget | None = None) -> CommandResult:
        self._require_admin(actor, "approve")
        pair_id = self._target(pair_id, reply_to, "approve")
        return self._changed("approve", self.curation.approve(pair_id, actor.key), pair_id,
                             "Approved")

    def correct(self, actor: Actor, pair_id: int | None, answer: str,
                question: str | None = None, reply_to: ReplyTarget | None = None
                ) -> CommandResult:
        """Approve with ``answer`` (exactly as given, "|" and all); ``question`` too unless
        None or blank."""
        self._require_admin(actor, "correct")
        answer = answer.strip()
        question = (question or "").strip() or None
        if not answer:
            raise CommandError("correct with an empty answer", user_message=(
                "The corrected answer needs some text."))
        pair_id = self._target(pair_id, reply_to, "correct")
        change = self.curation.approve(pair_id, actor.key, answer=answer, question=question)
        return self._changed("correct", change, pair_id, "Corrected and approved")

    def reject(self, actor: Actor, pair_id: int | None,
               reply_to: ReplyTarget | None = None) -> CommandResult:
        self._require_admin(actor, "reject")
        pair_id = self._target(pair_id, reply_to, "reject")
        return self._changed("reject", self.curation.reject(pair_id, actor.key), pair_id,
                             "Rejected")

    def add(self, actor: Actor, question: str, answer: str) -> CommandResult:
        """A pair written by an admin: ``question`` and ``answer`` exactly as given."""
        self._require_admin(actor, "add")
        question, answer = question.strip(), answer.strip()
        if not question or not answer:
            raise CommandError("empty question or answer",
                               user_message="Both the question and the answer need some text.")
        change = self.curation.add(question, answer, actor.key)
        return self._changed("add", change, change.pair.id, "Added")

    def pending(self, actor: Actor, page: int = 1) -> CommandResult:
        self._require_admin(actor, "pending")
        if not 1 <= page <= MAX_PAGE:
            raise CommandError(f"bad page {page}", user_message=PENDING_USAGE)
        pairs, total = self.curation.pending(page, PAGE_SIZE)
        pages = max(1, -(-total // PAGE_SIZE))
        if not pairs:
            message = "Nothing is waiting for review." if total == 0 else (
                f"Page {page} is empty; there are {pages} page(s).")
        else:
            lines = [f"Pending pairs: {total} (page {page}/{pages}, oldest first)"]
            for p in pairs:
                who = f" — {p.asked_by}" if p.asked_by else ""
                lines.append(f"#{p.id}{who}\n  Q: {excerpt(p.question)}\n  A: {excerpt(p.answer)}")
            lines.append("Reply /approve ID, /correct ID <answer> or /reject ID.")
            message = "\n".join(lines)
        return CommandResult("pending", message, pairs,
                             {"total": total, "page": page, "pages": pages})

    def dataset(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "dataset")
        counts = self.curation.counts_by_status()
        seeds = self.persona.seed_pairs(self.language)
        rows = collect_rows(self.curation, self.persona, self.language)
        tokens = sum(self.count_tokens(training_messages(r)) for r in rows)
        snaps = self.curation.last_snapshots()
        lines = [
            f"Dataset for {self.persona.name} ({self.language}): {len(rows)} rows "
            f"({len(seeds)} seed, {counts['approved']} approved), {tokens} tokens.",
            "By status: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
            "Approved per persona: " + (", ".join(
                f"{k} {v}" for k, v in sorted(self.curation.approved_per_persona().items()))
                or "none"),
        ]
        data = {"persona": self.persona.name, "language": self.language, "rows": len(rows),
                "seed": len(seeds),
                "by_status": counts, "approved_per_persona": self.curation.approved_per_persona(),
                "tokens": tokens}
        for kind, snap in snaps.items():
            lines.append(f"Last {kind}: {snap.rows} rows, sha256 {snap.sha256[:12]}, "
                         f"{snap.created_at:%Y-%m-%d %H:%M} → {snap.path}")
            data[f"last_{kind}"] = {"rows": snap.rows, "sha256": snap.sha256, "path": snap.path,
                                    "format": snap.format, "at": snap.created_at.isoformat()}
        return CommandResult("dataset", "\n".join(lines), [], data)

    def persona_info(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "persona")
        p = self.persona
        version = self.model_version()
        message = (f"Persona: {p.display_name} ({p.name}, {self.language}). "
                   f"Answering model: {version}. Training base: {p.training.base_model}.")
        return CommandResult("persona", message, [], {
            "name": p.name, "display_name": p.display_name, "language": self.language,
            "model_version": version, "base_model": p.training.base_model})

    # --- training and model versions ---------------------------------------------------
    def retrain(self, actor: Actor, origin: ChatRef | None = None,
                max_steps: int | None = None) -> CommandResult:
        """Queue a job, unless one is training, or a version was trained, on exactly the same
        dataset and settings: then point there instead of training twice."""
        self._require_admin(actor, "retrain")
        if max_steps is not None and not 1 <= max_steps <= MAX_STEPS:
            raise CommandError(f"bad max steps {max_steps}", user_message=RETRAIN_USAGE)
        steps = max_steps or self.default_max_steps
        key = self.training_key(steps)
        trained = self.registry.find_trained(key.dataset_sha256, key.base_model, key.config)
        if trained is not None:
            return CommandResult("retrain", _already_trained(trained), [], {
                "job": None, "duplicate": "version", "existing": trained.to_dict()})
        try:
            job, behind = self.jobs.enqueue(actor.key, origin, steps, key)
        except DuplicateJob as same:
            return CommandResult("retrain", same.user_message, [], {
                "job": None, "duplicate": "job", "existing": same.job.to_dict()})
        message = (f"Queued training job #{job.id} for {self.persona.display_name}"
                   + (f" (at most {steps} steps)" if steps else "")
                   + ". It stops as soon as the evaluation gate passes; the current model keeps "
                   "answering meanwhile and is replaced only if the new one passes.")
        if steps and steps < FEW_STEPS:
            message += (f" Note: {steps} steps rarely pass the gate; the defaults need about "
                        "30 (/retrain without a number).")
        if behind is not None:
            message += f" It waits for job #{behind.id} ({behind.describe()})."
        if origin is not None and origin.platform != "cli":
            message += " Progress and the loss plot will come here."
        else:
            message += (" A running bot picks it up; `chatman train` trains in this shell "
                        "instead.")
        self.on_job_queued()
        return CommandResult("retrain", message, [], {"job": job.to_dict()})

    def training_key(self, max_steps: int | None) -> TrainingKey:
        """What a job queued now would train on (the worker derives the same from settings)."""
        return self._training_key(self.curation, self.persona, self.language,
                                  self.train_base_model or self.persona.training.base_model,
                                  {"max_steps": max_steps} if max_steps else {})

    def cancel_training(self, actor: Actor, job_id: int | None = None,
                        wait_seconds: float | None = None) -> CommandResult:
        """Cancel a queued job, or stop the running one and wait for the runner to confirm."""
        self._require_admin(actor, "canceltrain")
        job = self.jobs.cancel(job_id, actor.key)
        if job.status == JobStatus.RUNNING:
            self.on_job_queued()  # an in-process runner checks for the cancel at once
            wait = self.cancel_wait_seconds if wait_seconds is None else wait_seconds
            job = self.jobs.wait_ended(job.id, wait)
        answering = self._answering()
        if job.status == JobStatus.CANCELLED:
            message = f"Training job #{job.id} cancelled; {answering} keeps answering."
        elif job.status == JobStatus.RUNNING:
            message = (f"Asked training job #{job.id} to stop, but no job runner has confirmed "
                       "yet (is the bot running?); /trainstatus shows when it has stopped, and "
                       f"{answering} keeps answering meanwhile.")
        else:  # it ended on its own before the runner saw the request
            message = (f"Training job #{job.id} finished before it could be stopped "
                       f"({job.describe()}); {answering} is answering.")
        return CommandResult("canceltrain", message, [], {
            "job": job.to_dict(), "cancelled": job.status == JobStatus.CANCELLED})

    def _answering(self) -> str:
        """The version answering (what the registry says, so the CLI knows it too)."""
        active = self.registry.active()
        return active.version if active else f"the base model ({self.model_version()})"

    def train_status(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "trainstatus")
        active = self.registry.active()
        lines = [f"Answering: {self.model_version()}"
                 + (f" — {_metrics(active)}" if active else " (base model, no trained version)")]
        open_jobs = self.jobs.open_jobs()
        lines += [f"Job {j.describe()}" for j in open_jobs] or ["No training job is queued or "
                                                                 "running."]
        finished = [j for j in self.jobs.recent(3) if j.status not in ("queued", "running")]
        if finished:
            lines.append(f"Last finished: job {finished[0].describe()}")
        return CommandResult("trainstatus", "\n".join(lines), [], {
            "active": active.to_dict() if active else None,
            "jobs": [j.to_dict() for j in open_jobs],
            "last_finished": finished[0].to_dict() if finished else None})

    def models(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "models")
        versions = self.registry.list()
        if not versions:
            message = f"No trained versions yet; {self.model_version()} answers. Use /retrain."
        else:
            message = "\n".join(f"{v.version} {v.status}" + (f" — {_metrics(v)}" if v.metrics
                                                                else "")
                                 + (f" — {'; '.join(v.reasons)}" if v.status in (
                                     "rejected", "failed") and v.reasons else "")
                                 for v in versions[:PAGE_SIZE])
        return CommandResult("models", message, [], {"versions": [v.to_dict() for v in versions]})

    def activate(self, actor: Actor, version: str) -> CommandResult:
        self._require_admin(actor, "activate")
        view = self.registry.activate(version, actor.key)
        self.on_model_change()
        return CommandResult("activate", f"{view.version} is now active"
                             + (f" (was {view.previous})" if view.previous else "")
                             + "; switching between requests.", [], {"version": view.to_dict()})

    def rollback(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "rollback")
        before = self.registry.active()
        back = self.registry.rollback(actor.key)
        self.on_model_change()
        target = back.version if back else "the base model"
        return CommandResult("rollback", f"Rolled back from {before.version} to {target}; "
                             "switching between requests.", [], {
                                 "from": before.version, "to": back.version if back else None})

    def answer_all(self, actor: Actor, origin: ChatRef | None, on: bool) -> CommandResult:
        self._require_admin(actor, "answerall")
        if origin is None or origin.kind is not ChatKind.GROUP:
            raise CommandError("answerall outside a group", user_message=(
                "Use /answerall in the group or channel it should apply to; in private chats I "
                "answer every voice note anyway."))
        self.store.set_answer_every_voice(origin, on)
        log.info("%s set answer-every-voice %s in %s/%s", actor.key, on, origin.platform,
                 origin.chat_id)
        message = ("I'll answer every voice note here now." if on else
                   "I'll answer voice notes here only when mentioned or replied to.")
        return CommandResult("answerall", message, [], {"answer_all_voice": on})

    def forget(self, actor: Actor) -> CommandResult:
        forgotten = self.curation.forget_user(actor.platform, actor.user_id)
        counts = dict(forgotten.counts)
        # Reply audio kept on disk (web console, CLI) goes too; platforms keep their own copy.
        counts["audio_files"] = sum(
            self.reply_audio.forget(e.platform, e.id, e.reply_message_id)
            for e in forgotten.exchanges) if self.reply_audio is not None else 0
        log.info("forgot a user's data: %s", counts)
        message = (f"Done: I deleted {counts['exchanges']} of your messages and "
                   f"{counts['pairs_deleted']} unreviewed pairs. Answers already approved for "
                   "training stay, with your name removed.")
        return CommandResult("forget", message, [], counts)


#: How text splits into a pair (typed routes, Discord options and the web console's JSON, take
#: each field as it is and split nothing).
PAIR_RULE = 'the first " | " (a bar with spaces around it) splits them'
ADD_USAGE = f"Usage: /add <question> | <answer> — {PAIR_RULE}; the answer may contain more."
CORRECT_USAGE = (
    "Usage: /correct ID <better answer>, or /correct <better answer> as a reply to my answer "
    "(then all of the text is the answer). To fix the question too, write <question> | "
    f"<answer>: {PAIR_RULE}. To keep the question and have \" | \" in the answer, start with "
    '"| ", e.g. /correct 12 | Run ls | grep foo.')
PENDING_USAGE = "Usage: /pending [page number]"
MAX_STEPS = 100_000
RETRAIN_USAGE = ("Usage: /retrain [max steps]. Leave the number out: the defaults pass the "
                 "evaluation gate on the starter model in about 30 steps, and training stops "
                 "as soon as the gate passes.")
# Fewer steps than this rarely pass the gate with the default recipe (measured on the starter).
FEW_STEPS = 20


def _already_trained(v: VersionView) -> str:
    head = f"{v.version} was already trained on exactly this dataset with these settings"
    if v.status == ModelStatus.ACTIVE:
        return head + "; it is answering now."
    if v.status == ModelStatus.RETIRED:
        return head + f" (retired); /activate {v.version} to use it again."
    if v.status == ModelStatus.REJECTED:
        why = "; ".join(v.reasons) or "gate not passed"
        return (head + f" (rejected: {why}). Add or correct pairs first, or change the steps "
                "(/retrain STEPS).")
    if v.model_dir:  # trained without activating (`chatman train --no-activate`)
        return head + f" and is ready; /activate {v.version} to use it."
    return head + f" and is being evaluated ({v.status}); /trainstatus follows it."


def _metrics(v: VersionView) -> str:
    m = v.metrics
    if not m:
        return "not evaluated"
    return (f"persona {m['persona_score']:.2f}, retention {m['retention']:.2f}, "
            f"leakage {m['leakage']:.2f}")


def _is_number(text: str) -> bool:
    # str.isdigit() also accepts "²" and other digits int() refuses.
    return text.isascii() and text.isdigit()


def _max_steps(args: str) -> int | None:
    if not args:
        return None
    if not _is_number(args) or len(args) > 6 or not 1 <= int(args) <= MAX_STEPS:
        raise CommandError(f"bad max steps {args!r}", user_message=(
            RETRAIN_USAGE))
    return int(args)


def _job_id(args: str) -> int | None:
    token = args.lstrip("#")
    if not args:
        return None
    if not _is_number(token) or len(token) > 18:
        raise CommandError(f"bad job id {args[:40]!r}", user_message=(
            "Usage: /canceltrain [job number] (see /trainstatus)"))
    return int(token)


def _page(args: str) -> int:
    if not args:
        return 1
    if not _is_number(args) or len(args) > 7 or not 1 <= int(args) <= MAX_PAGE:
        raise CommandError(f"bad page {args[:40]!r}", user_message=PENDING_USAGE)
    return int(args)


def _leading_id(args: str) -> tuple[int | None, str]:
    head, _, rest = args.partition(" ")
    token = head.lstrip("#")
    if _is_number(token):
        if len(token) > 19 or int(token) > MAX_ID:
            raise CommandError(f"pair id {token[:40]} out of range",
                               user_message=f"There is no pair #{token[:20]}.")
        return int(token), rest.strip()
    return None, args


#: A pair separator: a bar standing alone (whitespace, or the start or end, on both sides).
PAIR_SEPARATOR = re.compile(r"(?<!\S)\|(?!\S)")


def _split_pair(text: str) -> tuple[str | None, str]:
    """``(question, answer)`` from "<question> | <answer>", split at the first bar with
    whitespace (or the text's start or end) on both sides; ``(None, text)`` without one. "a|b"
    never splits. Both stripped."""
    found = PAIR_SEPARATOR.search(text)
    if found is None:
        return None, text.strip()
    return text[:found.start()].strip(), text[found.end():].strip()
