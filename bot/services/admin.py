"""The admin service: one set of commands for every adapter and the CLI.

Adapters hand over who is asking (:class:`Actor`) and a typed request
(:mod:`bot.core.commands`) to :meth:`AdminService.run`: Discord options and the web console's
JSON build the request directly; text (chat messages, the CLI) goes through
:meth:`AdminService.execute`, which parses it once. The :class:`CommandResult` is data: a
:class:`~bot.core.messages.Message` (code + params) and the typed payload; each adapter puts
it into words in the persona's language and lays it out its own way. Nothing here knows a chat
platform or a language's words.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.core.commands import (
    ADMIN_COMMANDS,
    CHAT_COMMANDS,
    MAX_ID,
    MAX_PAGE,
    MAX_STEPS,
    USER_COMMANDS,
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
    command_name,
    parse_command,
)
from bot.core.curation import Change, CurationRepository, PairView
from bot.core.dataset import collect_rows, training_messages
from bot.core.errors import CommandError, PermissionDenied
from bot.core.jobs import DuplicateJob, JobRepository, JobStatus, TrainingKey
from bot.core.messages import Message, Param
from bot.core.persona import PersonaProfile
from bot.core.ports import ReplyAudio, Store
from bot.core.registry import ModelStatus, RegistryRepository, VersionView
from bot.core.types import ChatKind, ChatMessage, ChatRef
from bot.core.wording import word

log = logging.getLogger(__name__)

#: What a run started now would train on: training.jobs.training_key, handed in by the
#: application (it renders the dataset and the TrainConfig as the trainer does, and bot/ never
#: imports training/).
TrainingKeyOf = Callable[[CurationRepository, PersonaProfile, str, str, dict[str, Any]], TrainingKey]

PAGE_SIZE = 10
# Re-exported: where adapters and tests have always found them.
__all__ = ["ADMIN_COMMANDS", "CHAT_COMMANDS", "MAX_ID", "MAX_PAGE", "USER_COMMANDS", "Actor",
           "AdminService", "CommandError", "CommandResult", "PermissionDenied", "ReplyTarget"]


@dataclass
class CommandResult:
    """What a command did, as data. ``reply`` says it (a code and its parameters: the adapter
    renders it in the persona's language); ``pairs`` and ``versions`` are the typed payload
    lists lay out (the pairs touched or listed, model versions); ``data`` is the rest, as
    JSON-ready values (the web console and ``chatman admin --json`` show it as is)."""

    command: str
    reply: Message
    pairs: list[PairView] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    versions: list[VersionView] = field(default_factory=list)

    @property
    def message(self) -> str:
        """``reply`` in English (logs, tests and callers that have no language)."""
        return word(self.reply, "en")


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
    def run(self, actor: Actor, request: Command, origin: ChatRef | None = None
            ) -> CommandResult:
        """Run ``request`` for ``actor``. ``origin`` is the chat the command came from: where
        /retrain reports progress and what /answerall changes."""
        self._require_admin(actor, request.name)
        match request:
            case Forget():
                return self.forget(actor)
            case Approve(pair_id, reply_to):
                return self.approve(actor, pair_id, reply_to)
            case Correct(answer, pair_id, question, reply_to):
                return self.correct(actor, pair_id, answer, question, reply_to)
            case Reject(pair_id, reply_to):
                return self.reject(actor, pair_id, reply_to)
            case Add(question, answer):
                return self.add(actor, question, answer)
            case Pending(page):
                return self.pending(actor, page)
            case Dataset():
                return self.dataset(actor)
            case PersonaInfo():
                return self.persona_info(actor)
            case Retrain(max_steps):
                return self.retrain(actor, origin, max_steps)
            case CancelTraining(job_id):
                return self.cancel_training(actor, job_id)
            case TrainStatus():
                return self.train_status(actor)
            case Models():
                return self.models(actor)
            case Activate(version):
                return self.activate(actor, version)
            case Rollback():
                return self.rollback(actor)
            case AnswerAll(on):
                return self.answer_all(actor, origin, on)
        raise AssertionError(f"unknown request {request!r}")

    def execute(self, actor: Actor, text: str, reply_to: ReplyTarget | None = None,
                origin: ChatRef | None = None) -> CommandResult:
        """Run ``/command args`` (the slash is optional) for ``actor``: the text route
        (Telegram messages, ``chatman admin``, typed chat commands), parsed once by
        :func:`~bot.core.commands.parse_command`. ``reply_to`` is the bot message the command
        replied to.

        A non-admin learns only that a command is for admins, not how to write it: permission
        is checked before the arguments are.
        """
        name = command_name(text)
        if name in ADMIN_COMMANDS:
            self._require_admin(actor, name)
        reply_is_answer = name == "correct" and self._answer_replied_to(reply_to) is not None
        return self.run(actor, parse_command(text, reply_to, reply_is_answer=reply_is_answer),
                        origin)

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
                raise CommandError("reply target is not an answer", code="pair.not_an_answer")
            return found
        raise CommandError("no target", code="pair.which", params={"name": command})

    def _changed(self, command: str, change: Change | None, pair_id: int, done: str
                 ) -> CommandResult:
        """``done``: the code of the message when something changed (``pair.approved``…)."""
        if change is None:
            raise CommandError(f"no pair {pair_id}", code="pair.missing", params={"id": pair_id})
        p = change.pair
        if not change.changed:
            reply = Message("pair.unchanged", {"id": p.id,
                                               "status": Message(f"status.{p.status}")})
        else:
            replaces: Param = Message("pair.replaces", {
                "ids": ", ".join(f"#{i}" for i in change.superseded)}) if change.superseded else ""
            reply = Message(done, {"id": p.id, "question": excerpt(p.question),
                                   "answer": excerpt(p.answer), "replaces": replaces})
        return CommandResult(command, reply, [p], {"changed": change.changed,
                                                   "superseded": change.superseded})

    # The typed commands :meth:`run` dispatches to, each field as given (never rebuilt into
    # text and split again). ``pair_id`` None: the pair whose answer ``reply_to`` is.
    def approve(self, actor: Actor, pair_id: int | None,
                reply_to: ReplyTarget | None = None) -> CommandResult:
        self._require_admin(actor, "approve")
        pair_id = self._target(pair_id, reply_to, "approve")
        return self._changed("approve", self.curation.approve(pair_id, actor.key), pair_id,
                             "pair.approved")

    def correct(self, actor: Actor, pair_id: int | None, answer: str,
                question: str | None = None, reply_to: ReplyTarget | None = None
                ) -> CommandResult:
        """Approve with ``answer`` (exactly as given, "|" and all); ``question`` too unless
        None or blank."""
        self._require_admin(actor, "correct")
        answer = answer.strip()
        question = (question or "").strip() or None
        if not answer:
            raise CommandError("correct with an empty answer", code="correct.empty")
        pair_id = self._target(pair_id, reply_to, "correct")
        change = self.curation.approve(pair_id, actor.key, answer=answer, question=question)
        return self._changed("correct", change, pair_id, "pair.corrected")

    def reject(self, actor: Actor, pair_id: int | None,
               reply_to: ReplyTarget | None = None) -> CommandResult:
        self._require_admin(actor, "reject")
        pair_id = self._target(pair_id, reply_to, "reject")
        return self._changed("reject", self.curation.reject(pair_id, actor.key), pair_id,
                             "pair.rejected")

    def add(self, actor: Actor, question: str, answer: str) -> CommandResult:
        """A pair written by an admin: ``question`` and ``answer`` exactly as given."""
        self._require_admin(actor, "add")
        question, answer = question.strip(), answer.strip()
        if not question or not answer:
            raise CommandError("empty question or answer", code="add.empty")
        change = self.curation.add(question, answer, actor.key)
        return self._changed("add", change, change.pair.id, "pair.added")

    def pending(self, actor: Actor, page: int = 1) -> CommandResult:
        self._require_admin(actor, "pending")
        if not 1 <= page <= MAX_PAGE:
            raise CommandError(f"bad page {page}", code="usage.pending")
        pairs, total = self.curation.pending(page, PAGE_SIZE)
        pages = max(1, -(-total // PAGE_SIZE))
        if not pairs:
            reply = Message("pending.none") if total == 0 else Message(
                "pending.empty_page", {"page": page, "pages": pages})
        else:
            lines = [Message("pending.title", {"total": total, "page": page, "pages": pages})]
            for p in pairs:
                shown: dict[str, Param] = {"id": p.id, "question": excerpt(p.question),
                                           "answer": excerpt(p.answer)}
                lines.append(Message("pending.pair_by", {**shown, "asked_by": p.asked_by})
                             if p.asked_by else Message("pending.pair", shown))
            lines.append(Message("pending.hint"))
            reply = Message("lines", {"lines": lines})
        return CommandResult("pending", reply, pairs,
                             {"total": total, "page": page, "pages": pages})

    def dataset(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "dataset")
        counts = self.curation.counts_by_status()
        seeds = self.persona.seed_pairs(self.language)
        rows = collect_rows(self.curation, self.persona, self.language)
        tokens = sum(self.count_tokens(training_messages(r)) for r in rows)
        snaps = self.curation.last_snapshots()
        per_persona = self.curation.approved_per_persona()
        lines = [
            Message("dataset.summary", {
                "persona": self.persona.name, "language": self.language, "rows": len(rows),
                "seed": len(seeds), "approved": counts["approved"], "tokens": tokens}),
            Message("dataset.by_status", dict(counts)),
            Message("dataset.per_persona", {"counts": ", ".join(
                f"{k} {v}" for k, v in sorted(per_persona.items())) or Message("dataset.none")}),
        ]
        data = {"persona": self.persona.name, "language": self.language, "rows": len(rows),
                "seed": len(seeds),
                "by_status": counts, "approved_per_persona": per_persona,
                "tokens": tokens}
        for kind, snap in snaps.items():
            lines.append(Message(f"dataset.last_{kind}", {
                "rows": snap.rows, "sha256": snap.sha256[:12],
                "at": f"{snap.created_at:%Y-%m-%d %H:%M}", "path": snap.path}))
            data[f"last_{kind}"] = {"rows": snap.rows, "sha256": snap.sha256, "path": snap.path,
                                    "format": snap.format, "at": snap.created_at.isoformat()}
        return CommandResult("dataset", Message("lines", {"lines": lines}), [], data)

    def persona_info(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "persona")
        p = self.persona
        version = self.model_version()
        return CommandResult("persona", Message("persona.info", {
            "display_name": p.display_name, "name": p.name, "language": self.language,
            "model": version, "base_model": p.training.base_model}), [], {
            "name": p.name, "display_name": p.display_name, "language": self.language,
            "model_version": version, "base_model": p.training.base_model})

    # --- training and model versions ---------------------------------------------------
    def retrain(self, actor: Actor, origin: ChatRef | None = None,
                max_steps: int | None = None) -> CommandResult:
        """Queue a job, unless one is training, or a version was trained, on exactly the same
        dataset and settings: then point there instead of training twice."""
        self._require_admin(actor, "retrain")
        if max_steps is not None and not 1 <= max_steps <= MAX_STEPS:
            raise CommandError(f"bad max steps {max_steps}", code="usage.retrain")
        steps = max_steps or self.default_max_steps
        key = self.training_key(steps)
        trained = self.registry.find_trained(key.dataset_sha256, key.base_model, key.config)
        if trained is not None:
            return CommandResult("retrain", _already_trained(trained), [], {
                "job": None, "duplicate": "version", "existing": trained.to_dict()},
                [trained])
        try:
            job, behind = self.jobs.enqueue(actor.key, origin, steps, key)
        except DuplicateJob as same:
            return CommandResult("retrain", same.message, [], {
                "job": None, "duplicate": "job", "existing": same.job.to_dict()})
        here = origin is not None and origin.platform != "cli"
        reply = Message("retrain.queued", {
            "id": job.id, "persona": self.persona.display_name,
            "steps": Message("retrain.steps", {"steps": steps}) if steps else "",
            "few": Message("retrain.few_steps", {"steps": steps})
            if steps and steps < FEW_STEPS else "",
            "behind": Message("retrain.behind", {"id": behind.id, "describe": behind.summary()})
            if behind is not None else "",
            "where": Message("retrain.progress_here" if here else "retrain.runner_elsewhere")})
        self.on_job_queued()
        return CommandResult("retrain", reply, [], {"job": job.to_dict()})

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
            reply = Message("canceltrain.cancelled", {"id": job.id, "answering": answering})
        elif job.status == JobStatus.RUNNING:
            reply = Message("canceltrain.unconfirmed", {"id": job.id, "answering": answering})
        else:  # it ended on its own before the runner saw the request
            reply = Message("canceltrain.finished", {"id": job.id, "describe": job.summary(),
                                                     "answering": answering})
        return CommandResult("canceltrain", reply, [], {
            "job": job.to_dict(), "cancelled": job.status == JobStatus.CANCELLED})

    def _answering(self) -> Param:
        """The version answering (what the registry says, so the CLI knows it too)."""
        active = self.registry.active()
        return active.version if active else Message("model.base",
                                                      {"model": self.model_version()})

    def train_status(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "trainstatus")
        active = self.registry.active()
        lines = [Message("trainstatus.answering", {"model": self.model_version(),
                                                   "metrics": metrics_message(active)})
                 if active else Message("trainstatus.answering_base",
                                        {"model": self.model_version()})]
        open_jobs = self.jobs.open_jobs()
        lines += [Message("trainstatus.job", {"describe": j.summary()}) for j in open_jobs] \
            or [Message("trainstatus.no_job")]
        finished = [j for j in self.jobs.recent(3) if j.status not in ("queued", "running")]
        if finished:
            lines.append(Message("trainstatus.last", {"describe": finished[0].summary()}))
        return CommandResult("trainstatus", Message("lines", {"lines": lines}), [], {
            "active": active.to_dict() if active else None,
            "jobs": [j.to_dict() for j in open_jobs],
            "last_finished": finished[0].to_dict() if finished else None},
            [active] if active else [])

    def models(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "models")
        versions = self.registry.list()
        if not versions:
            reply = Message("models.none", {"model": self.model_version()})
        else:
            reply = Message("lines", {"lines": [version_line(v) for v in versions[:PAGE_SIZE]]})
        return CommandResult("models", reply, [], {"versions": [v.to_dict() for v in versions]},
                             versions)

    def activate(self, actor: Actor, version: str) -> CommandResult:
        self._require_admin(actor, "activate")
        view = self.registry.activate(version, actor.key)
        self.on_model_change()
        return CommandResult("activate", Message("activate.done", {
            "version": view.version,
            "was": Message("activate.was", {"previous": view.previous}) if view.previous else ""}),
            [], {"version": view.to_dict()}, [view])

    def rollback(self, actor: Actor) -> CommandResult:
        self._require_admin(actor, "rollback")
        before = self.registry.active()
        back = self.registry.rollback(actor.key)
        assert before is not None  # rollback() refuses when nothing is active
        self.on_model_change()
        return CommandResult("rollback", Message("rollback.done", {
            "from_version": before.version,
            "to": back.version if back else Message("model.base_short")}), [], {
                "from": before.version, "to": back.version if back else None},
            [back] if back else [])

    def answer_all(self, actor: Actor, origin: ChatRef | None, on: bool) -> CommandResult:
        self._require_admin(actor, "answerall")
        if origin is None or origin.kind is not ChatKind.GROUP:
            raise CommandError("answerall outside a group", code="answerall.group_only")
        self.store.set_answer_every_voice(origin, on)
        log.info("%s set answer-every-voice %s in %s/%s", actor.key, on, origin.platform,
                 origin.chat_id)
        return CommandResult("answerall", Message("answerall.on" if on else "answerall.off"),
                             [], {"answer_all_voice": on})

    def forget(self, actor: Actor) -> CommandResult:
        forgotten = self.curation.forget_user(actor.platform, actor.user_id)
        counts = dict(forgotten.counts)
        # Reply audio kept on disk (web console, CLI) goes too; platforms keep their own copy.
        counts["audio_files"] = sum(
            self.reply_audio.forget(e.platform, e.id, e.reply_message_id)
            for e in forgotten.exchanges) if self.reply_audio is not None else 0
        log.info("forgot a user's data: %s", counts)
        return CommandResult("forget", Message("forget.done", {
            "exchanges": counts["exchanges"], "pairs": counts["pairs_deleted"]}), [], counts)


# Fewer steps than this rarely pass the gate with the default recipe (measured on the starter).
FEW_STEPS = 20


def _already_trained(v: VersionView) -> Message:
    if v.status == ModelStatus.ACTIVE:
        return Message("retrain.trained.active", {"version": v.version})
    if v.status == ModelStatus.RETIRED:
        return Message("retrain.trained.retired", {"version": v.version})
    if v.status == ModelStatus.REJECTED:
        why: Param = "; ".join(v.reasons) or Message("retrain.gate_not_passed")
        return Message("retrain.trained.rejected", {"version": v.version, "why": why})
    if v.model_dir:  # trained without activating (`chatman train --no-activate`)
        return Message("retrain.trained.ready", {"version": v.version})
    return Message("retrain.trained.evaluating", {"version": v.version, "status": v.status})


def metrics_message(v: VersionView) -> Message:
    m = v.metrics
    if not m:
        return Message("metrics.none")
    return Message("metrics", {k: m[k] for k in ("persona_score", "retention", "leakage")})


def version_line(v: VersionView) -> Message:
    """One line of /models: version, status, evaluation, and why it was turned down."""
    return Message("models.version", {
        "version": v.version, "status": Message(f"model_status.{v.status}"),
        "metrics": Message("suffix.dash", {"text": metrics_message(v)}) if v.metrics else "",
        "reasons": Message("suffix.dash", {"text": "; ".join(v.reasons)})
        if v.status in ("rejected", "failed") and v.reasons else ""})
