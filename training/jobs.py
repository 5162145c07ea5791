"""Background training jobs: a queue in the database and a runner in the serving process.

The runner trains in a separate process (``python -m training.worker``) so the bot keeps
answering, relays the worker's progress to the admin who asked, and on success asks the
application to hot-swap the model. The database is the queue, so ``chatman admin retrain``
from a shell reaches a running bot too. One job runs at a time per persona.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from bot.config import Settings
from bot.errors import UserFacingError
from bot.registry import ModelRegistry
from bot.storage.models import JobStatus, TrainingJob, utcnow
from bot.storage.store import SqlStore
from bot.types import ChatRef

log = logging.getLogger(__name__)


class JobError(UserFacingError):
    pass


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

    def describe(self) -> str:
        head = f"#{self.id} {self.status}"
        if self.model_version:
            head += f" ({self.model_version})"
        p = self.progress
        if self.status == JobStatus.RUNNING:
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
                   j.started_at, j.finished_at)


class JobQueue:
    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona

    def _open(self, s):
        return s.scalars(select(TrainingJob).where(TrainingJob.persona == self.persona,
                                                   TrainingJob.status.in_(JobStatus.OPEN))
                         .order_by(TrainingJob.id)).all()

    def enqueue(self, requested_by: str, notify: ChatRef | None = None,
                max_steps: int | None = None) -> tuple[JobView, JobView | None]:
        """Queue a job; returns it and the running job it waits behind, if any."""
        with self.store.session() as s, s.begin():
            open_jobs = self._open(s)
            queued = [j for j in open_jobs if j.status == JobStatus.QUEUED]
            if queued:
                raise JobError("already queued", user_message=(
                    f"Training job #{queued[0].id} is already waiting to run; it will train on "
                    "the dataset as it is when it starts. /trainstatus shows the queue."))
            job = TrainingJob(persona=self.persona, status=JobStatus.QUEUED,
                              requested_by=requested_by, max_steps=max_steps, progress={},
                              notify_platform=notify.platform if notify else None,
                              notify_chat_id=notify.chat_id if notify else None)
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

    def claim_next(self) -> JobView | None:
        """The oldest queued job, now ``running``, unless one is running already."""
        with self.store.session() as s, s.begin():
            open_jobs = self._open(s)
            if any(j.status == JobStatus.RUNNING for j in open_jobs) or not open_jobs:
                return None
            job = open_jobs[0]
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

    def recover(self, reason: str) -> list[JobView]:
        """After a restart: no job may stay ``running`` with nobody running it."""
        with self.store.session() as s, s.begin():
            stuck = s.scalars(select(TrainingJob).where(TrainingJob.persona == self.persona,
                                                        TrainingJob.status == JobStatus.RUNNING)
                              ).all()
            for job in stuck:
                _kill_worker(job.pid)
                job.status, job.error, job.finished_at, job.pid = (
                    JobStatus.FAILED, reason, utcnow(), None)
            return [_view(j) for j in stuck]


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


class TrainingRunner:
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
        """Thread-safe nudge after a job was queued (the poll catches other processes)."""
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            job = await asyncio.to_thread(self.queue.claim_next)
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.registry_poll_seconds)
                self._wake.clear()
                continue
            try:
                await self.run_job(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # the runner outlives any one job
                log.exception("training job #%d: runner error", job.id)
                await asyncio.to_thread(self.queue.finish, job.id, JobStatus.FAILED,
                                        "internal error in the job runner")

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

    async def run_job(self, job: JobView) -> None:
        log_path = self._log_path(job.id)
        request = {"job_id": job.id, "requested_by": job.requested_by,
                   "settings": self.settings.for_worker(), "max_steps": job.max_steps}
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "training.worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            )
        running = self.current = _Running(job, process)
        log.info("training job #%d: worker pid %d, log %s", job.id, process.pid, log_path)
        await asyncio.to_thread(self.queue.update, job.id, pid=process.pid)
        process.stdin.write(json.dumps(request).encode())
        await process.stdin.drain()
        process.stdin.close()
        await self._tell(job, f"Training job #{job.id} started for {job.persona}.")
        try:
            while line := await process.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                await self._on_event(running, event)
            code = await process.wait()
        finally:
            self.current = None
        await self._finish(running, code, log_path)

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
