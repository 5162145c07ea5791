"""/retrain as a background job in a real worker process, progress to the admin, failures.

The worker trains the tiny random Qwen2 (fast, and it can never pass the gate), so these tests
exercise the real process, protocol and bookkeeping; test_training.py shows a real pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from adapters.app import ChatmanApp
from bot.core.jobs import JobError, JobStatus
from bot.core.registry import ModelStatus
from bot.core.types import ChatKind, ChatRef, Incoming, UserRef
from bot.infra.storage.models import TrainingJob
from bot.services.admin import Actor
from tests.fakes import eventually

ADMIN = Actor("test", "1", "Ada", granted_admin=True)
ADMIN_CHAT = ChatRef("test", "admin-chat")
CAROL = UserRef("test", "2", "Carol")




async def ask(app: ChatmanApp, text: str, chat: str = "c1"):
    return await app.pipeline.handle(Incoming(ChatRef("test", chat, ChatKind.PRIVATE), CAROL,
                                              text=text, want_voice=False))


async def wait_for(app: ChatmanApp, job_id: int, predicate, timeout: float = 240.0):
    """The job once ``predicate(job)`` holds: the project's eventually() on the job's row."""
    def matching():
        job = app.jobs.get(job_id)
        return job if predicate(job) else None

    return await eventually(matching, timeout, lambda: f"job #{job_id}: {app.jobs.get(job_id)}")


async def finished(app: ChatmanApp, job_id: int, timeout: float = 240.0):
    """The job once it ended: the queue signals it (JobRepository.wait_ended), no polling here."""
    job = await asyncio.to_thread(app.jobs.wait_ended, job_id, timeout)
    assert job.status not in JobStatus.OPEN, f"job #{job_id} still {job.status}"
    return job


async def test_a_rejected_candidate_reports_and_keeps_the_model(job_app):
    app = job_app
    await app.start(load_models=False, background=True)
    try:
        result = app.admin.execute(ADMIN, "/retrain 2", origin=ADMIN_CHAT)
        job_id = result.data["job"]["id"]
        assert "Queued training job #1" in result.message and "Progress" in result.message
        # A second request while one waits is refused, and nothing is queued twice.
        with pytest.raises(JobError, match="already") as refused:
            app.admin.execute(ADMIN, "/retrain", origin=ADMIN_CHAT)
        assert "already waiting" in refused.value.user_message

        running = await wait_for(app, job_id,
                                 lambda j: j.status == JobStatus.RUNNING and j.pid is not None)
        assert running and running.pid is not None
        # The bot answers and text commands respond while the worker trains. The trainer is
        # held (SIGSTOP) meanwhile: two steps on the tiny model may otherwise end before the
        # answer does, and /trainstatus would rightly no longer say "running".
        os.kill(running.pid, signal.SIGSTOP)
        try:
            turn = await ask(app, "What is the capital of Japan?")
            assert turn.model_version == "SmolLM2-135M-Instruct.Q4_1" and turn.reply
            assert "#1 running" in app.admin.execute(ADMIN, "/trainstatus").message
        finally:
            os.kill(running.pid, signal.SIGCONT)

        job = await finished(app, job_id)
    finally:
        await app.stop()

    assert job.status == JobStatus.REJECTED and "gate not passed" in job.error
    assert job.model_version == "manman-v1"
    version = app.registry.get("manman-v1")
    assert version.status == ModelStatus.REJECTED and version.model_dir is None
    assert any("persona_score" in r for r in version.reasons)
    assert version.steps == 2 and version.metrics["retention"] <= 1.0
    assert app.registry.active() is None and app.llm.version == "SmolLM2-135M-Instruct.Q4_1"

    texts = [n.text for _, n in app.notices]
    assert all(chat == ADMIN_CHAT for chat, _ in app.notices)
    assert texts[0] == "Training job #1 started for manman."
    assert any(t.startswith("Training manman-v1: step 1/2 (50%), loss") for t in texts), texts
    assert any(t.startswith("Evaluation at step 2: persona 0.00") for t in texts), texts
    final = app.notices[-1][1]
    assert final.final and "gate not passed after 2 step(s)" in final.text
    assert "✗ persona_score 0.00, worst draw 0.00 (needs ≥ 0.90)" in final.text
    assert final.text.endswith("The current model keeps answering.")
    assert final.image is not None and final.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    models = app.admin.execute(ADMIN, "/models").message
    assert models.startswith("manman-v1 rejected — persona 0.00")


async def test_killing_the_trainer_fails_the_job_and_the_model_keeps_serving(job_app):
    app = job_app
    await app.start(load_models=False, background=True)
    try:
        job_id = app.admin.execute(ADMIN, "/retrain 5000", origin=ADMIN_CHAT).data["job"]["id"]
        job = await wait_for(app, job_id, lambda j: j.progress.get("step"))
        assert job.pid and "step" in job.progress and job.progress["max_steps"] == 5000
        os.kill(job.pid, signal.SIGKILL)
        job = await finished(app, job_id, timeout=30)
        turn = await ask(app, "What is the capital of Japan?")
    finally:
        await app.stop()
    assert job.status == JobStatus.FAILED and job.error == "the trainer was killed (SIGKILL)"
    assert app.registry.get("manman-v1").status == ModelStatus.FAILED
    assert turn.model_version == "SmolLM2-135M-Instruct.Q4_1" and "Tokyo" in turn.reply
    final = app.notices[-1][1]
    assert final.final and final.text == ("Training job #1 failed: the trainer was killed "
                                          "(SIGKILL). The current model keeps answering.")


async def test_a_restart_leaves_no_job_running(job_app):
    app = job_app
    app.migrate()
    # A job whose bot died with it: its pid is a process that has exited.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: ASYNC220 (test setup)
    gone.wait()
    with app.store.session() as s, s.begin():
        s.add(TrainingJob(persona="manman", status=JobStatus.RUNNING, requested_by="test:1",
                          progress={"step": 3}, pid=gone.pid))
    candidate = app.registry.create_candidate(base_model="x", config={}, job_id=1,
                                              created_by="test:1")
    await app.start(load_models=False, background=True)
    await app.stop()
    job = app.jobs.get(1)
    assert job.status == JobStatus.FAILED and job.error == "interrupted: the bot restarted"
    assert app.registry.get(candidate.version).status == ModelStatus.FAILED
    assert app.jobs.open_jobs() == []


async def test_a_worker_that_cannot_train_reports_why(job_app, tmp_path):
    app = job_app
    app.settings = app.settings.model_copy(update={"train_base_model": str(tmp_path / "nowhere")})
    await app.start(load_models=False, background=True)
    try:
        job_id = app.admin.execute(ADMIN, "/retrain", origin=ADMIN_CHAT).data["job"]["id"]
        job = await finished(app, job_id, timeout=120)
    finally:
        await app.stop()
    assert job.status == JobStatus.FAILED
    assert job.error == f"FileNotFoundError: model folder not found: {tmp_path / 'nowhere'}"
    assert app.registry.get("manman-v1").status == ModelStatus.FAILED
    assert "The current model keeps answering." in app.notices[-1][1].text


async def test_stopping_the_bot_mid_job_fails_the_job_and_stops_the_trainer(job_app):
    app = job_app
    await app.start(load_models=False, background=True)
    job_id = app.admin.execute(ADMIN, "/retrain 5000", origin=ADMIN_CHAT).data["job"]["id"]
    job = await wait_for(app, job_id, lambda j: j.pid)
    await app.stop()
    assert app.jobs.get(job_id).status == JobStatus.FAILED
    assert app.jobs.get(job_id).error == "the bot shut down during training"
    # The runner killed and reaped it: waiting on it returns at once (or it is gone already).
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(job.pid).wait(timeout=5)
    assert not psutil.pid_exists(job.pid)
