"""The training job queue in SQL (``training_jobs``): :class:`SqlJobQueue`, the
:class:`bot.core.jobs.JobRepository` the application and the runner use.

The database is the queue, so ``chatman admin retrain`` from a shell reaches a running bot
too; queue changes are serialised per persona across processes (see ``SqlJobQueue._lock``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Unpack

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from bot.core.jobs import DuplicateJob, JobError, JobStatus, JobUpdate, JobView, TrainingKey
from bot.core.messages import Message
from bot.core.types import ChatRef
from bot.infra.storage.models import TrainingJob, utcnow
from bot.infra.storage.store import SqlStore

log = logging.getLogger(__name__)


def _view(j: TrainingJob) -> JobView:
    notify = (ChatRef(j.notify_platform, j.notify_chat_id)
              if j.notify_platform and j.notify_chat_id is not None else None)
    return JobView(j.id, j.persona, JobStatus(j.status), j.requested_by, notify, j.max_steps,
                   dict(j.progress or {}), j.pid, j.model_version, j.error, j.created_at,
                   j.started_at, j.finished_at, j.dataset_sha256, j.base_model,
                   dict(j.config) if j.config is not None else None, j.cancel_requested_by,
                   j.owner, j.heartbeat_at)


class SqlJobQueue:
    """:class:`bot.core.jobs.JobRepository` on the SQL store, for one persona."""

    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona
        # Notified when a job ends in this process, so a waiter here needn't wait for its poll.
        self._ended = threading.Condition()

    def _open(self, s: Session) -> Sequence[TrainingJob]:
        return s.scalars(select(TrainingJob).where(TrainingJob.persona == self.persona,
                                                   TrainingJob.status.in_(JobStatus.OPEN))
                         .order_by(TrainingJob.id)).all()

    def enqueue(self, requested_by: str, notify: ChatRef | None = None,
                max_steps: int | None = None,
                key: TrainingKey | None = None) -> tuple[JobView, JobView | None]:
        """Queue a job; returns it and the running job it waits behind, if any.

        Raises :class:`DuplicateJob` when the running job has the same ``key`` (and nobody
        cancelled it), and :class:`JobError` when a job is queued already.
        """
        with self.store.session() as s, s.begin():
            self._lock(s)
            open_jobs = self._open(s)
            if key is not None:
                same = next((j for j in map(_view, open_jobs) if j.status == JobStatus.RUNNING
                             and not j.cancel_requested_by and j.key == key), None)
                if same is not None:
                    raise DuplicateJob(same)
            queued = [j for j in open_jobs if j.status == JobStatus.QUEUED]
            if queued:
                raise JobError("already queued", code="job.already_queued",
                               params={"id": queued[0].id})
            job = TrainingJob(persona=self.persona, status=JobStatus.QUEUED,
                              requested_by=requested_by, max_steps=max_steps, progress={},
                              notify_platform=notify.platform if notify else None,
                              notify_chat_id=notify.chat_id if notify else None)
            if key is not None:
                job.dataset_sha256, job.base_model, job.config = (
                    key.dataset_sha256, key.base_model, key.config)
            s.add(job)
            s.flush()
            running = next((j for j in open_jobs if j.status == JobStatus.RUNNING), None)
            return _view(job), (_view(running) if running else None)

    def open_jobs(self) -> list[JobView]:
        with self.store.session() as s:
            return [_view(j) for j in self._open(s)]

    def recent(self, limit: int = 5) -> list[JobView]:
        with self.store.session() as s:
            rows = s.scalars(select(TrainingJob).where(TrainingJob.persona == self.persona)
                             .order_by(TrainingJob.id.desc()).limit(limit)).all()
            return [_view(j) for j in rows]

    def count_by_status(self) -> dict[JobStatus, int]:
        with self.store.session() as s:
            rows = s.execute(select(TrainingJob.status, func.count())
                             .where(TrainingJob.persona == self.persona)
                             .group_by(TrainingJob.status)).all()
            return {JobStatus(status): count for status, count in rows}

    def get(self, job_id: int) -> JobView | None:
        with self.store.session() as s:
            j = s.get(TrainingJob, job_id)
            return _view(j) if j else None

    def _lock(self, s: Session) -> None:
        """Serialise this persona's queue changes (enqueue, claim, cancel) across processes,
        until the transaction ends. Call it first in the transaction, before any read.

        PostgreSQL: a transaction-scoped advisory lock keyed by the persona. Row locks alone
        are not enough: "no job of the persona is running" is a fact about all its rows, and
        two claimers locking (or SKIP LOCKED-skipping) rows could each see the other's claim
        uncommitted and each claim a different queued job. The lock is released at commit, and
        under READ COMMITTED every statement after it sees what the previous holder committed.
        It needs no table of its own and is gone with the connection, so it never goes stale.

        SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock before the first read (the
        driver would otherwise read outside any transaction and begin one only at the first
        write, after the decision was taken on what may already have changed). Other writers
        wait for it through the busy timeout.
        """
        dialect = s.get_bind().dialect.name
        if dialect == "sqlite":
            s.execute(text("BEGIN IMMEDIATE"))
        elif dialect == "postgresql":
            s.execute(select(func.pg_advisory_xact_lock(_lock_key(self.persona))))

    def claim_next(self, owner: str) -> JobView | None:
        """The oldest queued job, now ``running`` and ``owner``'s, unless one is running
        already.

        Safe with several bots (processes) on one database: at most one job of the persona is
        ever ``running``, and each queued job is claimed at most once.
        """
        with self.store.session() as s, s.begin():
            self._lock(s)
            ours = TrainingJob.persona == self.persona
            if s.scalar(select(TrainingJob.id).where(ours, TrainingJob.status == JobStatus.RUNNING)
                        .limit(1)) is not None:
                return None
            # The persona lock already decides; the row lock keeps any other writer off the
            # row until the claim commits, and a row another transaction holds is left for
            # the next poll rather than waited for.
            job = s.scalars(select(TrainingJob).where(ours, TrainingJob.status == JobStatus.QUEUED)
                            .order_by(TrainingJob.id).limit(1)
                            .with_for_update(skip_locked=True)).first()
            if job is None:
                return None
            job.status, job.started_at = JobStatus.RUNNING, utcnow()
            job.owner, job.heartbeat_at = owner, job.started_at
            job.progress = {"stage": "starting the trainer"}
            return _view(job)

    def heartbeat(self, job_id: int, owner: str) -> bool:
        with self.store.session() as s, s.begin():
            # Conditional, so an owner whose job was taken back learns it and stops its trainer.
            done = s.execute(update(TrainingJob)
                             .where(TrainingJob.id == job_id, TrainingJob.owner == owner,
                                    TrainingJob.status == JobStatus.RUNNING)
                             .values(heartbeat_at=utcnow()))
            return bool(getattr(done, "rowcount", 0) == 1)

    def update(self, job_id: int, **values: Unpack[JobUpdate]) -> None:
        with self.store.session() as s, s.begin():
            job = _require(s, job_id)
            for key, value in values.items():
                setattr(job, key, value)

    def finish(self, job_id: int, status: JobStatus, error: str | None = None,
               model_version: str | None = None) -> None:
        with self.store.session() as s, s.begin():
            job = _require(s, job_id)
            job.status, job.error, job.finished_at, job.pid = status, error, utcnow(), None
            if model_version:
                job.model_version = model_version
        with self._ended:
            self._ended.notify_all()

    # --- cancelling -------------------------------------------------------------------
    def cancel(self, job_id: int | None, actor: str) -> JobView:
        """Cancel a queued job now, or ask the runner to stop a running one.

        Without ``job_id``: the one open job. Returns the job afterwards: ``cancelled`` if it
        was queued, still ``running`` (with ``cancel_requested_by``) if it was running.
        """
        with self.store.session() as s, s.begin():
            # Serialised with claims: a job claimed a moment ago is seen running, and flagged.
            self._lock(s)
            job = self._to_cancel(s, job_id)
            log.info("training job #%d (%s): cancel requested by %s", job.id, job.status, actor)
            # Set in both cases: a runner that claimed the job a moment ago sees it too.
            job.cancel_requested_by = job.cancel_requested_by or actor
            if job.status == JobStatus.QUEUED:
                job.status, job.error, job.finished_at = (
                    JobStatus.CANCELLED, f"cancelled by {actor}", utcnow())
            return _view(job)

    def _to_cancel(self, s: Session, job_id: int | None) -> TrainingJob:
        if job_id is None:
            open_jobs = self._open(s)
            if not open_jobs:
                raise JobError("nothing to cancel", code="job.nothing_to_cancel")
            if len(open_jobs) > 1:
                raise JobError("which job?", code="job.which", params={
                    # At most one job runs and one waits (enqueue refuses more).
                    "first": _ref(open_jobs[0]), "second": _ref(open_jobs[1]),
                    "id": open_jobs[0].id})
            return open_jobs[0]
        job = s.get(TrainingJob, job_id)
        if job is None or job.persona != self.persona:
            raise JobError(f"no job {job_id}", code="job.missing", params={"id": job_id})
        if job.status not in JobStatus.OPEN:
            raise JobError(f"job {job_id} is {job.status}", code="job.finished",
                           params={"id": job_id, "status": str(job.status)})
        return job

    def cancel_requested(self, job_id: int) -> str | None:
        """Who asked to cancel this job, if anybody has."""
        with self.store.session() as s:
            job = s.get(TrainingJob, job_id)
            return job.cancel_requested_by if job else None

    def wait_ended(self, job_id: int, timeout: float, poll: float = 0.5) -> JobView:
        """The job once it is no longer open, or as it is after ``timeout`` seconds.

        A runner in this process wakes the wait at once; one in another process (the bot, when
        the CLI cancels) is seen by reading the row every ``poll`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job is None:
                raise JobError(f"no job {job_id}", code="job.missing", params={"id": job_id})
            left = deadline - time.monotonic()
            if job.status not in JobStatus.OPEN or left <= 0:
                return job
            with self._ended:
                self._ended.wait(min(poll, left))

    def recover(self, owner: str | None, stale_after: float, reason: str,
                stop_worker: Callable[[int | None], None]) -> list[JobView]:
        """Take back running jobs nobody runs any more (see JobRepository.recover).

        ``stop_worker`` stops a leftover trainer of ``owner``'s (the runner knows what its
        processes look like); each is stopped before its job is marked ended, in the same
        transaction, so no other trainer can be claimed while it still runs. A job another
        runner owns is never stopped here: its pid names a process on that runner's host.
        """
        with self.store.session() as s, s.begin():
            # Serialised with claims, so a job claimed a moment ago is seen with its heartbeat.
            self._lock(s)
            now = utcnow()
            cutoff = now - timedelta(seconds=stale_after)
            running = s.scalars(select(TrainingJob).where(
                TrainingJob.persona == self.persona, TrainingJob.status == JobStatus.RUNNING)
                                .order_by(TrainingJob.id)).all()
            taken: list[TrainingJob] = []
            for job in running:
                # Rows from before owners were recorded were claimed by this host's only bot.
                mine = owner is not None and job.owner in (owner, None)
                if mine:
                    stop_worker(job.pid)
                    why = reason
                elif job.heartbeat_at is None or _aware(job.heartbeat_at) < cutoff:
                    last = (f"{(now - _aware(job.heartbeat_at)).total_seconds():.0f} s ago"
                            if job.heartbeat_at else "never")
                    why = (f"interrupted: its runner {job.owner or '(unknown)'} stopped "
                           f"responding (last heartbeat {last})")
                    log.warning("training job #%d: %s", job.id, why)
                else:
                    continue
                # A cancel that came while nobody ran it is honoured as what it was.
                status, error = ((JobStatus.CANCELLED, f"cancelled by {job.cancel_requested_by}")
                                 if job.cancel_requested_by else (JobStatus.FAILED, why))
                job.status, job.error, job.finished_at, job.pid = status, error, now, None
                taken.append(job)
            return [_view(j) for j in taken]


def _aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _lock_key(persona: str) -> int:
    """The persona's advisory lock id: a signed 64-bit hash, stable across processes."""
    digest = hashlib.sha256(f"chatman.training_jobs:{persona}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _require(s: Session, job_id: int) -> TrainingJob:
    job = s.get(TrainingJob, job_id)
    if job is None:
        raise JobError(f"no job {job_id}", code="job.missing", params={"id": job_id})
    return job


def _ref(job: TrainingJob) -> Message:
    """``#3 (running)``, the status worded per language."""
    return Message("job.ref", {"id": job.id, "status": Message(f"job_status.{job.status}")})
