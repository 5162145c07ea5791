"""Training jobs as the rest of the bot sees them: records, statuses, errors, the notices sent
to the admin who asked, and the :class:`JobRepository` port (the queue).

The queue lives in the database (:class:`bot.infra.storage.jobs.SqlJobQueue`), so
``chatman admin retrain`` from a shell reaches a running bot too; the runner that trains
(``training.jobs.TrainingRunner``) claims jobs from it. One job runs at a time per persona.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum, nonmember
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

from bot.core.errors import UserFacingError
from bot.core.messages import Message
from bot.core.registry import same_config_form
from bot.core.types import ChatRef
from bot.core.wording import word


class JobStatus(StrEnum):
    """A job's state. Stored as its value (a plain string column)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # trained, passed the gate, activated
    REJECTED = "rejected"  # trained, failed the gate; the active model is unchanged
    FAILED = "failed"  # crashed, killed, or interrupted by a restart
    CANCELLED = "cancelled"  # an admin cancelled it: never ran, or its trainer was stopped
    # Not a status: the ones a job is still open in (plain strings, usable in SQL ``IN``).
    OPEN = nonmember((QUEUED, RUNNING))


class JobError(UserFacingError):
    pass


@dataclass(frozen=True)
class TrainingKey:
    """What a training run depends on: two runs with equal keys train the same model."""

    dataset_sha256: str
    base_model: str
    config: dict[str, Any]  # the full TrainConfig, in the form the database hands back


@dataclass(frozen=True)
class JobView:
    id: int
    persona: str
    status: JobStatus
    requested_by: str
    notify: ChatRef | None
    max_steps: int | None
    progress: dict[str, Any]
    pid: int | None
    model_version: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dataset_sha256: str | None = None
    base_model: str | None = None
    config: dict[str, Any] | None = None
    cancel_requested_by: str | None = None
    # Who runs it (a replica id) and when its runner last said it still does.
    owner: str | None = None
    heartbeat_at: datetime | None = None

    @property
    def key(self) -> TrainingKey | None:
        if self.dataset_sha256 is None or self.base_model is None:
            return None  # queued before jobs recorded what they train on
        return TrainingKey(self.dataset_sha256, self.base_model, same_config_form(self.config))

    def describe(self) -> str:
        """One line about the job, in English (logs); front ends word :meth:`summary`."""
        return word(self.summary(), "en")

    def summary(self) -> Message:
        """One line about the job: number, status, version, then progress, who asked, or
        why it ended."""
        none = Message.text("")
        p = self.progress
        detail = none
        if self.status == JobStatus.RUNNING and self.cancel_requested_by:
            detail = Message("job.stopping", {"by": self.cancel_requested_by})
        elif self.status == JobStatus.RUNNING:
            if p.get("step"):
                detail = Message("job.detail", {"text": progress_message(p)})
            elif p.get("stage"):
                detail = Message("job.detail", {"text": str(p["stage"])})
        elif self.status == JobStatus.QUEUED:
            detail = Message("job.requested_by", {"by": self.requested_by})
        elif self.error:
            detail = Message("job.detail", {"text": self.error})
        version = (Message("job.version", {"version": self.model_version})
                   if self.model_version else none)
        return Message("job.line", {"id": self.id, "status": Message(f"job_status.{self.status}"),
                                    "version": version, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "notify"}
        d["notify"] = ({"platform": self.notify.platform, "chat_id": self.notify.chat_id}
                       if self.notify else None)
        for key in ("created_at", "started_at", "finished_at", "heartbeat_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


class DuplicateJob(JobError):
    """A job with the same key is training now; ``job`` is that job."""

    def __init__(self, job: JobView) -> None:
        super().__init__(f"job #{job.id} trains the same key", code="job.already_training",
                         params={"id": job.id})
        self.job = job


def progress_message(p: dict[str, Any]) -> Message:
    """A running job's progress (``JobView.progress``), worded per language."""
    step, total = p.get("step", 0), p.get("max_steps") or 0
    loss = (Message("progress.loss", {"loss": p["loss"]}) if p.get("loss") is not None
            else Message.text(""))
    # An upper bound: training stops as soon as the gate passes.
    eta = (Message("progress.eta", {"duration": _duration(p["eta_s"])})
           if p.get("eta_s") is not None else Message.text(""))
    return Message("progress.line", {"step": step, "total": total,
                                     "percent": 100 * step // max(total, 1), "loss": loss,
                                     "eta": eta})


def _duration(seconds: float) -> Message:
    seconds = int(round(seconds))
    if seconds >= 60:
        return Message("duration.min_s", {"min": seconds // 60, "s": seconds % 60})
    return Message("duration.s", {"s": seconds})


@dataclass(frozen=True)
class Notice:
    """A message for the admin who asked (worded by the front end in the persona's language),
    and at the end the loss plot."""

    job_id: int
    message: Message
    image: Path | None = None
    final: bool = False

    @property
    def text(self) -> str:
        """The English words (logs, tests)."""
        return word(self.message, "en")


#: How the runner reaches the chat a job was requested from (the application routes it to
#: the adapter of that platform).
Notify = Callable[[ChatRef, Notice], Awaitable[None]]


class JobUpdate(TypedDict, total=False):
    """What the runner records on a job while it runs (only the keys given change)."""

    pid: int | None
    progress: dict[str, Any]
    model_version: str
    # What the job trains on (see TrainingKey), once the runner has derived it.
    dataset_sha256: str
    base_model: str
    config: dict[str, Any]


class JobRepository(Protocol):
    """A persona's training jobs: the queue the runner claims from."""

    def enqueue(self, requested_by: str, notify: ChatRef | None = None,
                max_steps: int | None = None,
                key: TrainingKey | None = None) -> tuple[JobView, JobView | None]:
        """Queue a job; returns it and the running job it waits behind, if any.

        Raises :class:`DuplicateJob` when the running job has the same ``key`` (and nobody
        cancelled it), and :class:`JobError` when a job is queued already.
        """

    def open_jobs(self) -> list[JobView]: ...

    def recent(self, limit: int = 5) -> list[JobView]: ...

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many of the persona's jobs are in each status (only statuses with some)."""

    def get(self, job_id: int) -> JobView | None: ...

    def claim_next(self, owner: str) -> JobView | None:
        """The oldest queued job, now ``running`` and owned by ``owner`` (its heartbeat starts
        now), unless one is running already (across processes: at most one running job per
        persona, each job claimed at most once)."""

    def heartbeat(self, job_id: int, owner: str) -> bool:
        """``owner`` still runs the job; False when it no longer does (the job ended, or was
        taken back from an owner that looked dead): its trainer must stop."""

    def update(self, job_id: int, **values: Unpack[JobUpdate]) -> None: ...

    def finish(self, job_id: int, status: JobStatus, error: str | None = None,
               model_version: str | None = None) -> None: ...

    def cancel(self, job_id: int | None, actor: str) -> JobView:
        """Cancel a queued job now, or ask the runner to stop a running one (without
        ``job_id``: the one open job). Returns the job afterwards."""

    def cancel_requested(self, job_id: int) -> str | None:
        """Who asked to cancel this job, if anybody has."""

    def wait_ended(self, job_id: int, timeout: float, poll: float = 0.5) -> JobView:
        """The job once it is no longer open, or as it is after ``timeout`` seconds."""

    def recover(self, owner: str | None, stale_after: float, reason: str,
                stop_worker: Callable[[int | None], None]) -> list[JobView]:
        """Take back running jobs nobody runs any more; returns them, ended.

        * ``owner``'s own jobs (a restart of that runner; None: none): its leftover trainer
          is handed to ``stop_worker`` (its pid, if one was recorded), then the job is marked
          failed with ``reason``. Jobs from before owners were recorded count as these.
        * anybody's job whose heartbeat is older than ``stale_after`` seconds: its runner is
          gone (or cut off), on a host whose processes are not ours to stop; marked failed
          with a reason that says so.

        A job a cancel was asked for ends cancelled instead. Jobs with a fresh heartbeat and
        another owner are left alone."""
