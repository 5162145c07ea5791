"""Background training jobs: a queue in the database and a runner in the serving process.

The runner trains in a separate process (``python -m training.worker``) so the bot keeps
answering, relays the worker's progress to the admin who asked, and on success asks the
application to hot-swap the model. The database is the queue, so ``chatman admin retrain``
from a shell reaches a running bot too. One job runs at a time per persona.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select, text

from bot.core.config import Settings
from bot.core.curation import CurationRepository
from bot.core.dataset import collect_rows, render
from bot.core.errors import UserFacingError
from bot.core.persona import PersonaProfile
from bot.core.types import ChatRef
from bot.infra.storage.curation import SqlCuration
from bot.infra.storage.models import JobStatus, ModelStatus, TrainingJob, utcnow
from bot.infra.storage.store import SqlStore
from bot.services.registry import ModelRegistry, same_config_form

log = logging.getLogger(__name__)

#: How long a trainer asked to stop (SIGTERM) may take before it is killed (SIGKILL).
STOP_GRACE_SECONDS = 10.0


class JobError(UserFacingError):
    pass


@dataclass(frozen=True)
class TrainingKey:
    """What a training run depends on: two runs with equal keys train the same model."""

    dataset_sha256: str
    base_model: str
    config: dict  # the full TrainConfig, in the form the database hands back


def training_key(curation: CurationRepository, persona: PersonaProfile, language: str, base_model: str,
                 overrides: dict) -> TrainingKey:
    """The key of a run started now: the dataset hashed as ``snapshot_dataset`` would freeze
    it, the base, and TrainConfig with ``overrides`` (as the worker and ``chatman train``
    build it)."""
    from training.sft import TrainConfig  # the trainer's module: imported when needed

    data = render(collect_rows(curation, persona, language), "alpaca")
    return TrainingKey(hashlib.sha256(data).hexdigest(), base_model,
                       same_config_form(TrainConfig(**overrides).model_dump()))


class DuplicateJob(JobError):
    """A job with the same key is training now; ``job`` is that job."""

    def __init__(self, job: JobView) -> None:
        super().__init__(f"job #{job.id} trains the same key", user_message=(
            f"Training job #{job.id} is already training on exactly this dataset and these "
            "settings; /trainstatus follows it."))
        self.job = job


@dataclass(frozen=True)
class JobView:
    id: int
    persona: str
    status: str
    requested_by: str
    notify: ChatRef | None
    max_steps: int | None
    progress: dict
    pid: int | None
    model_version: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dataset_sha256: str | None = None
    base_model: str | None = None
    config: dict | None = None
    cancel_requested_by: str | None = None

    @property
    def key(self) -> TrainingKey | None:
        if self.dataset_sha256 is None or self.base_model is None:
            return None  # queued before jobs recorded what they train on
        return TrainingKey(self.dataset_sha256, self.base_model, same_config_form(self.config))

    def describe(self) -> str:
        head = f"#{self.id} {self.status}"
        if self.model_version:
            head += f" ({self.model_version})"
        p = self.progress
        if self.status == JobStatus.RUNNING and self.cancel_requested_by:
            head += f": stopping, cancelled by {self.cancel_requested_by}"
        elif self.status == JobStatus.RUNNING:
            if p.get("step"):
                head += f": {progress_line(p)}"
            elif p.get("stage"):
                head += f": {p['stage']}"
        elif self.status == JobStatus.QUEUED:
            head += f", requested by {self.requested_by}"
        elif self.error:
            head += f": {self.error}"
        return head

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "notify"}
        d["notify"] = ({"platform": self.notify.platform, "chat_id": self.notify.chat_id}
                       if self.notify else None)
        for key in ("created_at", "started_at", "finished_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


def progress_line(p: dict) -> str:
    step, total = p.get("step", 0), p.get("max_steps") or 0
    text = f"step {step}/{total} ({100 * step // max(total, 1)}%)"
    if p.get("loss") is not None:
        text += f", loss {p['loss']:.3f}"
    if p.get("eta_s") is not None:
        # An upper bound: training stops as soon as the gate passes.
        text += f", at most {_duration(p['eta_s'])} left"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _view(j: TrainingJob) -> JobView:
    notify = ChatRef(j.notify_platform, j.notify_chat_id) if j.notify_platform else None
    return JobView(j.id, j.persona, j.status, j.requested_by, notify, j.max_steps,
                   dict(j.progress or {}), j.pid, j.model_version, j.error, j.created_at,
                   j.started_at, j.finished_at, j.dataset_sha256, j.base_model,
                   dict(j.config) if j.config is not None else None, j.cancel_requested_by)


class JobQueue:
    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona
        # Notified when a job ends in this process, so a waiter here needn't wait for its poll.
        self._ended = threading.Condition()

    def _open(self, s):
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
                raise JobError("already queued", user_message=(
                    f"Training job #{queued[0].id} is already waiting to run; it will train on "
                    "the dataset as it is when it starts. /trainstatus shows the queue."))
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

    def get(self, job_id: int) -> JobView | None:
        with self.store.session() as s:
            j = s.get(TrainingJob, job_id)
            return _view(j) if j else None

    def _lock(self, s) -> None:
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

    def claim_next(self) -> JobView | None:
        """The oldest queued job, now ``running``, unless one is running already.

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
            job.progress = {"stage": "starting the trainer"}
            return _view(job)

    def update(self, job_id: int, **values) -> None:
        with self.store.session() as s, s.begin():
            job = s.get(TrainingJob, job_id)
            for key, value in values.items():
                setattr(job, key, value)

    def finish(self, job_id: int, status: str, error: str | None = None,
               model_version: str | None = None) -> None:
        with self.store.session() as s, s.begin():
            job = s.get(TrainingJob, job_id)
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

    def _to_cancel(self, s, job_id: int | None) -> TrainingJob:
        if job_id is None:
            open_jobs = self._open(s)
            if not open_jobs:
                raise JobError("nothing to cancel", user_message=(
                    "No training job is queued or running; nothing to cancel."))
            if len(open_jobs) > 1:
                listed = " and ".join(f"#{j.id} ({j.status})" for j in open_jobs)
                raise JobError("which job?", user_message=(
                    f"Jobs {listed} are open; say which, e.g. /canceltrain {open_jobs[0].id}."))
            return open_jobs[0]
        job = s.get(TrainingJob, job_id)
        if job is None or job.persona != self.persona:
            raise JobError(f"no job {job_id}", user_message=f"There is no training job #{job_id}.")
        if job.status not in JobStatus.OPEN:
            raise JobError(f"job {job_id} is {job.status}", user_message=(
                f"Training job #{job_id} has already finished ({job.status}); nothing to "
                "cancel."))
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
            left = deadline - time.monotonic()
            if job.status not in JobStatus.OPEN or left <= 0:
                return job
            with self._ended:
                self._ended.wait(min(poll, left))

    def recover(self, reason: str) -> list[JobView]:
        """After a restart: no job may stay ``running`` with nobody running it."""
        with self.store.session() as s, s.begin():
            stuck = s.scalars(select(TrainingJob).where(TrainingJob.persona == self.persona,
                                                        TrainingJob.status == JobStatus.RUNNING)
                              ).all()
            for job in stuck:
                _kill_worker(job.pid)
                # A cancel that came while the bot was down is honoured as what it was.
                status, error = ((JobStatus.CANCELLED, f"cancelled by {job.cancel_requested_by}")
                                 if job.cancel_requested_by else (JobStatus.FAILED, reason))
                job.status, job.error, job.finished_at, job.pid = status, error, utcnow(), None
            return [_view(j) for j in stuck]


def _lock_key(persona: str) -> int:
    """The persona's advisory lock id: a signed 64-bit hash, stable across processes."""
    digest = hashlib.sha256(f"chatman.training_jobs:{persona}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _kill_worker(pid: int | None) -> None:
    """Stop a leftover trainer, but only if that pid is still one of ours."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone (or not Linux: the worker exits with its parent anyway)
    if b"training.worker" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Notice:
    """A message for the admin who asked: text, and at the end the loss plot."""

    job_id: int
    text: str
    image: Path | None = None
    final: bool = False


Notify = Callable[[ChatRef, Notice], Awaitable[None]]


@dataclass
class _Running:
    job: JobView
    process: asyncio.subprocess.Process
    version: str | None = None
    max_steps: int | None = None
    step_seconds: list[float] = field(default_factory=list)
    last_notice: float = 0.0
    done: dict | None = None
    error: str | None = None
    cancelled_by: str | None = None  # set once the runner stops the trainer for a cancel


class TrainingRunner:
    #: The trainer process; it reads the request on stdin and reports JSON lines on stdout.
    worker_command: tuple[str, ...] = (sys.executable, "-m", "training.worker")

    def __init__(
        self,
        queue: JobQueue,
        registry: ModelRegistry,
        settings: Settings,
        *,
        notify: Notify,
        on_release: Callable[[str], Awaitable[str | None]],
    ) -> None:
        """``on_release(version)`` hot-swaps to a version that passed; returns an error or None."""
        self.queue = queue
        self.registry = registry
        self.settings = settings
        self.notify = notify
        self.on_release = on_release
        self.current: _Running | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Thread-safe nudge after a job was queued or cancelled (the poll catches other
        processes)."""
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                job = await asyncio.to_thread(self.queue.claim_next)
            except Exception:  # the database away for a moment: try again at the next poll
                log.exception("could not look for queued training jobs")
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.registry_poll_seconds)
                self._wake.clear()
                continue
            try:
                await self.run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the runner outlives any one job
                log.exception("training job #%d: runner error", job.id)
                await self._runner_failed(job, exc)

    async def _runner_failed(self, job: JobView, exc: Exception) -> None:
        """The runner itself failed during ``job``. Its trainer is gone by now (run_job kills
        it and waits for it before an error leaves it); the versions come next, so whoever waits
        for the job to end sees the registry settled, then the job."""
        reason = (f"internal error in the job runner ({type(exc).__name__}); the trainer was "
                  "stopped")
        try:
            await asyncio.to_thread(self.registry.fail_job_candidates, job.id, reason)
            # The trainer may have activated its version before it was stopped (or the error
            # came while the bot swapped to it): nobody vouches for it now, the one before
            # answers again.
            active = await asyncio.to_thread(self.registry.active)
            if active is not None and active.job_id == job.id:
                await asyncio.to_thread(self.registry.fail, active.version, reason)
                try:
                    await self.on_release(active.version)  # follows the registry back
                except Exception:  # the registry poll gets there too
                    log.warning("training job #%d: could not swap back from %s", job.id,
                                active.version, exc_info=True)
        except Exception:
            log.exception("training job #%d: could not fail its versions", job.id)
        try:
            await asyncio.to_thread(self.queue.finish, job.id, JobStatus.FAILED, reason)
        except Exception:  # the next start's recovery marks it failed
            log.exception("training job #%d: could not mark it failed", job.id)
        await self._tell(job, f"Training job #{job.id} failed: {reason}. The current model "
                              "keeps answering.", final=True)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        running = self.current
        if running is not None and running.process.returncode is None:
            running.error = "the bot shut down during training"
            with contextlib.suppress(ProcessLookupError):
                running.process.terminate()

    def _log_path(self, job_id: int) -> Path:
        path = self.settings.data_dir / "training" / "jobs" / f"{job_id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _key_now(self, max_steps: int | None) -> TrainingKey:
        """What the worker is about to train on, derived as it derives it."""
        from bot.core.persona import load_persona

        s = self.settings
        persona = load_persona(s.persona, s.persona_dir)
        return training_key(SqlCuration(self.queue.store, persona.name), persona,
                            s.language or persona.language,
                            s.train_base_model or persona.training.base_model,
                            s.train_overrides(max_steps))

    async def _record_key(self, job: JobView) -> None:
        # A job that waited in the queue trains on the dataset as it is now, not as it was
        # when it was queued: record that, so duplicate requests are recognised.
        try:
            key = await asyncio.to_thread(self._key_now, job.max_steps)
        except Exception:  # the worker reports the real problem (persona, settings) itself
            log.warning("training job #%d: could not compute its dataset key", job.id,
                        exc_info=True)
            return
        await asyncio.to_thread(self.queue.update, job.id, dataset_sha256=key.dataset_sha256,
                                base_model=key.base_model, config=key.config)

    async def run_job(self, job: JobView) -> None:
        log_path = self._log_path(job.id)
        await self._record_key(job)
        request = {"job_id": job.id, "requested_by": job.requested_by,
                   "settings": self.settings.for_worker(), "max_steps": job.max_steps}
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *self.worker_command,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            )
        running = self.current = _Running(job, process)
        watcher = None
        try:
            log.info("training job #%d: worker pid %d, log %s", job.id, process.pid, log_path)
            await asyncio.to_thread(self.queue.update, job.id, pid=process.pid)
            watcher = asyncio.create_task(self._watch_for_cancel(running),
                                          name=f"training-job-{job.id}-cancel")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A trainer stopped at once (cancelled) may be gone before it reads this.
                process.stdin.write(json.dumps(request).encode())
                await process.stdin.drain()
                process.stdin.close()
            await self._tell(job, f"Training job #{job.id} started for {job.persona}.")
            while line := await process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                await self._on_event(running, event)
            code = await process.wait()
        except BaseException:
            # Whatever failed here (the database, an event, this task being cancelled), nobody
            # supervises the trainer any more: left running it could still activate its
            # version, and once the job is marked failed another trainer could be claimed.
            # Stopped and reaped before the error goes on to mark the job failed.
            await _kill(process)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            self.current = None
        await self._finish(running, code, log_path)

    async def _watch_for_cancel(self, r: _Running) -> None:
        """Stop the trainer once somebody cancels the job, from this process or another."""
        while r.process.returncode is None:
            # Cleared before reading the row, so a nudge that comes during the read counts.
            # (run_forever looks for queued jobs right after this job anyway.)
            self._wake.clear()
            by = await asyncio.to_thread(self.queue.cancel_requested, r.job.id)
            if by:
                log.info("training job #%d: cancelled by %s; stopping the trainer", r.job.id, by)
                r.cancelled_by = by
                await _stop(r.process)
                return
            # Nudged at once by a cancel in this process; other processes are seen by the poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.registry_poll_seconds)

    async def _on_event(self, r: _Running, event: dict) -> None:
        kind = event.get("event")
        job = r.job
        if kind == "candidate":
            r.version, r.max_steps = event["version"], event["max_steps"]
            await asyncio.to_thread(self.queue.update, job.id, model_version=r.version)
            await self._tell(job, f"Training {r.version}: up to {r.max_steps} steps; it stops "
                                  "as soon as the evaluation gate passes.")
        elif kind == "stage":
            await asyncio.to_thread(self.queue.update, job.id,
                                    progress={"stage": event["stage"], "max_steps": r.max_steps})
        elif kind == "step":
            r.step_seconds.append(event["seconds"])
            step, total = event["step"], event["max_steps"]
            recent = r.step_seconds[-10:]
            progress = {"stage": "training", "step": step, "max_steps": total,
                        "loss": event["loss"], "kl": event["kl"],
                        "eta_s": round(sum(recent) / len(recent) * (total - step), 1)}
            await asyncio.to_thread(self.queue.update, job.id, progress=progress)
            now = time.monotonic()
            if step == 1 or now - r.last_notice >= self.settings.train_progress_seconds:
                r.last_notice = now
                await self._tell(job, f"Training {r.version}: {progress_line(progress)}")
        elif kind == "eval":
            verdict = "gate passed" if event["passed"] else "continuing"
            await self._tell(job, f"Evaluation at step {event['step']}: persona "
                                  f"{event['persona_score']:.2f}, retention "
                                  f"{event['retention']:.2f}, leakage {event['leakage']:.2f} "
                                  f"— {verdict}.")
        elif kind == "done":
            r.done = event
        elif kind == "error":
            r.error = event["message"]

    async def _finish(self, r: _Running, code: int, log_path: Path) -> None:
        job = r.job
        if r.cancelled_by is not None and not (code == 0 and r.done is not None):
            await self._cancelled(r)
            return
        if code == 0 and r.done is not None:
            done = r.done
            passed = done["status"] == "active"
            status = JobStatus.SUCCEEDED if passed else JobStatus.REJECTED
            error = None if passed else "gate not passed: " + "; ".join(done["reasons"])
            await asyncio.to_thread(self.queue.finish, job.id, status, error, done["version"])
            plot = Path(done["plot"]) if done.get("plot") else None
            tail = ("\nThe current model keeps answering." if not passed else "")
            await self._tell(job, done["summary"] + tail, image=plot, final=not passed)
            if passed:
                problem = await self.on_release(done["version"])
                await self._tell(job, f"Now answering with {done['version']}." if problem is None
                                 else f"{done['version']} could not be loaded ({problem}); "
                                      "the previous model keeps answering.", final=True)
            return
        reason = r.error or _exit_reason(code, log_path)
        log.warning("training job #%d failed: %s", job.id, reason)
        await asyncio.to_thread(self.queue.finish, job.id, JobStatus.FAILED, reason)
        await asyncio.to_thread(self.registry.fail_job_candidates, job.id, reason)
        await self._tell(job, f"Training job #{job.id} failed: {reason}. The current model keeps "
                              "answering.", final=True)

    async def _cancelled(self, r: _Running) -> None:
        job, reason = r.job, f"cancelled by {r.cancelled_by}"
        # The versions first: whoever waits for the job to end sees the registry settled.
        await asyncio.to_thread(self.registry.fail_job_candidates, job.id, reason)
        if r.version is not None:
            # Stopped right after it activated its version: the one before answers again.
            version = await asyncio.to_thread(self.registry.get, r.version)
            if version is not None and version.status == ModelStatus.ACTIVE:
                await asyncio.to_thread(self.registry.fail, r.version, reason)
                await self.on_release(r.version)  # follows the registry back
        await asyncio.to_thread(self.queue.finish, job.id, JobStatus.CANCELLED, reason)
        if r.cancelled_by != job.requested_by:  # whoever cancelled was told by their command
            await self._tell(job, f"Training job #{job.id} was {reason}. The current model "
                                  "keeps answering.", final=True)

    async def _tell(self, job: JobView, text: str, image: Path | None = None,
                    final: bool = False) -> None:
        log.info("training job #%d: %s", job.id, text.splitlines()[0])
        if job.notify is None:
            return
        try:
            await self.notify(job.notify, Notice(job.id, text, image, final))
        except Exception:  # a chat that can't be reached must not stop the job
            log.warning("training job #%d: could not notify %s", job.id, job.notify.platform,
                        exc_info=True)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL if the trainer is still there after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        log.warning("trainer pid %d ignored SIGTERM for %.0f s; killing it", process.pid,
                    STOP_GRACE_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the trainer at once and wait until it is gone (reaped)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        log.warning("killed trainer pid %d", process.pid)
    await process.wait()


def _exit_reason(code: int, log_path: Path) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the trainer was killed ({name})"
    last = ""
    with contextlib.suppress(OSError):
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else ""
    return f"the trainer exited with code {code}" + (f": {last[:300]}" if last else "")
