"""Background training jobs: the runner in the serving process.

The runner claims jobs from the queue (a :class:`bot.core.jobs.JobRepository`, in the database
so ``chatman admin retrain`` from a shell reaches a running bot too) and trains in a separate
process (``python -m training.worker``) so the bot keeps answering. It relays the worker's
progress to the admin who asked, and on success asks the application to hot-swap the model.
One job runs at a time per persona.
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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.core.config import Settings
from bot.core.curation import CurationRepository
from bot.core.dataset import collect_rows, render
from bot.core.jobs import (
    JobRepository,
    JobStatus,
    JobView,
    Notice,
    Notify,
    TrainingKey,
    progress_message,
)
from bot.core.messages import Message
from bot.core.persona import PersonaProfile
from bot.core.registry import ModelStatus, RegistryRepository, same_config_form
from bot.core.wording import word

log = logging.getLogger(__name__)

#: How long a trainer asked to stop (SIGTERM) may take before it is killed (SIGKILL).
STOP_GRACE_SECONDS = 10.0
#: How often a runner says it still runs its job, and how long a silence means it is gone:
#: a job whose runner (or its host) died is failed by any other runner within about a minute.
#: Hosts' clocks must agree to well within the difference (NTP does).
HEARTBEAT_SECONDS = 10.0
STALE_AFTER_SECONDS = 60.0


def training_key(curation: CurationRepository, persona: PersonaProfile, language: str,
                 base_model: str, overrides: dict[str, Any]) -> TrainingKey:
    """The key of a run started now: the dataset hashed as ``snapshot_dataset`` would freeze
    it, the base, and TrainConfig with ``overrides`` (as the worker and ``chatman train``
    build it)."""
    from training.sft import TrainConfig  # the trainer's module: imported when needed

    data = render(collect_rows(curation, persona, language), "alpaca")
    return TrainingKey(hashlib.sha256(data).hexdigest(), base_model,
                       same_config_form(TrainConfig(**overrides).model_dump()))


def stop_leftover_worker(pid: int | None) -> None:
    """Stop a trainer left from before a restart (see JobRepository.recover), but only if
    that pid is still one of ours."""
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone (or not Linux: the worker exits with its parent anyway)
    if b"training.worker" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class _Running:
    job: JobView
    process: asyncio.subprocess.Process
    version: str | None = None
    max_steps: int | None = None
    step_seconds: list[float] = field(default_factory=list)
    last_notice: float = 0.0
    done: dict[str, Any] | None = None
    error: str | None = None
    cancelled_by: str | None = None  # set once the runner stops the trainer for a cancel
    lost: bool = False  # the job was taken back from this runner (it looked dead)


class TrainingRunner:
    #: The trainer process; it reads the request on stdin and reports JSON lines on stdout.
    worker_command: tuple[str, ...] = (sys.executable, "-m", "training.worker")
    heartbeat_seconds = HEARTBEAT_SECONDS
    stale_after_seconds = STALE_AFTER_SECONDS

    def __init__(
        self,
        queue: JobRepository,
        registry: RegistryRepository,
        settings: Settings,
        *,
        curation: CurationRepository,
        notify: Notify,
        on_release: Callable[[str], Awaitable[str | None]],
        owner: str | None = None,
    ) -> None:
        """``on_release(version)`` hot-swaps to a version that passed; returns an error or None.
        ``curation`` is the persona's dataset, read to record what each job trains on.
        ``owner``: this runner's name on the jobs it claims (default CHATMAN_REPLICA_ID)."""
        self.owner = owner or settings.resolved_replica_id
        self.queue = queue
        self.registry = registry
        self.settings = settings
        self.curation = curation
        self.notify = notify
        self.on_release = on_release
        self.current: _Running | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None  # set once run_forever runs

    def wake(self) -> None:
        """Thread-safe nudge after a job was queued or cancelled (the poll catches other
        processes)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    async def recover(self, restarted: bool = False) -> list[JobView]:
        """Take back running jobs nobody runs any more (JobRepository.recover): those whose
        heartbeat stopped, and with ``restarted`` this runner's own from before a restart.
        Their versions fail too, and whoever asked is told."""
        taken = await asyncio.to_thread(
            self.queue.recover, self.owner if restarted else None, self.stale_after_seconds,
            "interrupted: the bot restarted", stop_leftover_worker)
        for job in taken:
            log.warning("training job #%d was running with nobody running it; %s: %s", job.id,
                        job.status, job.error)
            await asyncio.to_thread(self.registry.fail_job_candidates, job.id, job.error or "")
            await self._tell(job, Message("notice.failed", {"id": job.id,
                                                            "reason": job.error or ""}),
                             final=True)
        return taken

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        recovered = 0.0
        while not self._stopping:
            if time.monotonic() - recovered >= self.heartbeat_seconds:
                # Between jobs: a job whose runner died elsewhere ends, so the queue moves on.
                recovered = time.monotonic()
                try:
                    await self.recover()
                except Exception:
                    log.exception("could not look for abandoned training jobs")
            try:
                job = await asyncio.to_thread(self.queue.claim_next, self.owner)
            except Exception:  # the database away for a moment: try again at the next poll
                log.exception("could not look for queued training jobs")
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(
                        self.settings.registry_poll_seconds, self.heartbeat_seconds))
                self._wake.clear()
                continue
            log.info("training job #%d claimed by %s (requested by %s)", job.id, self.owner,
                     job.requested_by)
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
        await self._tell(job, Message("notice.failed", {"id": job.id, "reason": reason}),
                         final=True)

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
        return training_key(self.curation, persona,
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
        watcher = heart = None
        try:
            stdin, stdout = process.stdin, process.stdout
            assert stdin is not None and stdout is not None  # both piped above
            log.info("training job #%d: worker pid %d, log %s", job.id, process.pid, log_path)
            await asyncio.to_thread(self.queue.update, job.id, pid=process.pid)
            watcher = asyncio.create_task(self._watch_for_cancel(running),
                                          name=f"training-job-{job.id}-cancel")
            heart = asyncio.create_task(self._heartbeat(running),
                                        name=f"training-job-{job.id}-heartbeat")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A trainer stopped at once (cancelled) may be gone before it reads this.
                stdin.write(json.dumps(request).encode())
                await stdin.drain()
                stdin.close()
            await self._tell(job, Message("notice.started", {"id": job.id,
                                                             "persona": job.persona}))
            while line := await stdout.readline():
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
            for task in (watcher, heart):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
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

    async def _heartbeat(self, r: _Running) -> None:
        """Tell the other runners this job is alive; stop the trainer if it was taken back
        (this runner looked dead to them: the database was out of reach for too long)."""
        while r.process.returncode is None:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                alive = await asyncio.to_thread(self.queue.heartbeat, r.job.id, self.owner)
            except Exception:  # the database away for a moment: the next beat may get through
                log.warning("training job #%d: heartbeat failed", r.job.id, exc_info=True)
                continue
            if not alive:
                log.error("training job #%d was taken back from %s; stopping its trainer",
                          r.job.id, self.owner)
                r.lost = True
                await _stop(r.process)
                return

    async def _on_event(self, r: _Running, event: dict[str, Any]) -> None:
        kind = event.get("event")
        job = r.job
        if kind == "candidate":
            r.version, r.max_steps = event["version"], event["max_steps"]
            await asyncio.to_thread(self.queue.update, job.id, model_version=r.version)
            await self._tell(job, Message("notice.plan", {"version": r.version,
                                                          "steps": r.max_steps}))
        elif kind == "stage":
            await asyncio.to_thread(self.queue.update, job.id,
                                    progress={"stage": event["stage"], "max_steps": r.max_steps})
        elif kind == "step":
            r.step_seconds.append(event["seconds"])
            step, total = event["step"], event["max_steps"]
            recent = r.step_seconds[-10:]
            progress = {"stage": "training", "step": step, "max_steps": total,
                        "loss": event["loss"], "kl": event["kl"],
                        # seconds a step takes lately (the metrics' step rate)
                        "step_s": round(sum(recent) / len(recent), 3),
                        "eta_s": round(sum(recent) / len(recent) * (total - step), 1)}
            await asyncio.to_thread(self.queue.update, job.id, progress=progress)
            now = time.monotonic()
            if step == 1 or now - r.last_notice >= self.settings.train_progress_seconds:
                r.last_notice = now
                await self._tell(job, Message("notice.progress", {
                    "version": r.version, "progress": progress_message(progress)}))
        elif kind == "eval":
            await self._tell(job, Message("notice.eval", {
                "step": event["step"], "persona": event["persona_score"],
                "retention": event["retention"], "leakage": event["leakage"],
                "verdict": Message("notice.gate_passed" if event["passed"]
                                   else "notice.continuing")}))
        elif kind == "done":
            r.done = event
        elif kind == "error":
            r.error = event["message"]

    async def _finish(self, r: _Running, code: int, log_path: Path) -> None:
        job = r.job
        if r.lost:
            # Whoever took the job back ended it, failed its versions and told the admin; a
            # version the trainer activated meanwhile is vouched for by nobody.
            log.warning("training job #%d: its trainer stopped after the job was taken back",
                        job.id)
            await self._unvouch(r.version, "its job was taken back from a runner that "
                                           "looked dead")
            return
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
            # The evaluation table is the worker's (numbers and metric names).
            summary = [Message.text(done["summary"])]
            if not passed:
                summary.append(Message("notice.keeps_answering"))
            await self._tell(job, Message("lines", {"lines": summary}), image=plot,
                             final=not passed)
            if passed:
                problem = await self.on_release(done["version"])
                await self._tell(job, Message("notice.now_answering", {"version": done["version"]})
                                 if problem is None else Message("notice.not_loaded", {
                                     "version": done["version"], "problem": problem}),
                                 final=True)
            return
        reason = r.error or _exit_reason(code, log_path)
        log.warning("training job #%d failed: %s", job.id, reason)
        await asyncio.to_thread(self.queue.finish, job.id, JobStatus.FAILED, reason)
        await asyncio.to_thread(self.registry.fail_job_candidates, job.id, reason)
        await self._tell(job, Message("notice.failed", {"id": job.id, "reason": reason}),
                         final=True)

    async def _cancelled(self, r: _Running) -> None:
        job, reason = r.job, f"cancelled by {r.cancelled_by}"
        # The versions first: whoever waits for the job to end sees the registry settled.
        await asyncio.to_thread(self.registry.fail_job_candidates, job.id, reason)
        await self._unvouch(r.version, reason)
        await asyncio.to_thread(self.queue.finish, job.id, JobStatus.CANCELLED, reason)
        if r.cancelled_by != job.requested_by:  # whoever cancelled was told by their command
            await self._tell(job, Message("notice.cancelled", {"id": job.id,
                                                               "by": r.cancelled_by}),
                             final=True)

    async def _unvouch(self, version: str | None, reason: str) -> None:
        """A trainer stopped right after it activated ``version``: the one before answers
        again."""
        if version is None:
            return
        found = await asyncio.to_thread(self.registry.get, version)
        if found is not None and found.status == ModelStatus.ACTIVE:
            await asyncio.to_thread(self.registry.fail, version, reason)
            await self.on_release(version)  # follows the registry back

    async def _tell(self, job: JobView, message: Message, image: Path | None = None,
                    final: bool = False) -> None:
        log.info("training job #%d: %s", job.id, word(message, "en").splitlines()[0])
        if job.notify is None:
            return
        try:
            await self.notify(job.notify, Notice(job.id, message, image, final))
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
