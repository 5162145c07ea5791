"""Training workers (issue 16): several runners on one database, each job run by exactly one of
them; a runner that dies is noticed by the others; `chatman worker` trains with no chat adapter
and its notices reach the admin through a replica that has one.

The trainers here are fakes (small scripts speaking the worker's protocol): what is tested is
the claiming, the heartbeats and the outbox, not training (test_jobs.py trains for real).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from adapters.app import ChatmanApp
from adapters.cli import app as cli
from adapters.worker import run_worker
from bot.core.jobs import JobStatus, JobView, Notice
from bot.core.messages import Message
from bot.core.types import ChatRef
from bot.infra.storage import migrate
from bot.infra.storage.jobs import SqlJobQueue
from bot.infra.storage.models import TrainingJob, TrainingNoticeRow, utcnow
from bot.infra.storage.notices import SqlNoticeOutbox
from bot.infra.storage.store import SqlStore, make_engine
from bot.services.notice_relay import NoticeRelay
from tests.conftest import make_settings
from tests.fakes import eventually
from tests.test_job_lifecycle import together
from training.jobs import TrainingRunner

ADMIN_CHAT = ChatRef("telegram", "admin-chat")


@pytest.fixture
def two_workers(database_url):
    """Two job queues on one database, each with its own engine, as two worker hosts have."""
    engines = [make_engine(database_url) for _ in range(2)]
    migrate.upgrade(engines[0])
    yield [SqlJobQueue(SqlStore(e), "manman") for e in engines]
    for e in engines:
        e.dispose()


def running_job(queue: SqlJobQueue, owner: str, pid: int | None = None) -> JobView:
    job, _ = queue.enqueue("test:1", ADMIN_CHAT)
    claimed = queue.claim_next(owner)
    assert claimed is not None and claimed.id == job.id
    if pid is not None:
        queue.update(job.id, pid=pid)
    return claimed


def age_heartbeat(queue: SqlJobQueue, job_id: int, seconds: float) -> None:
    with queue.store.session() as s, s.begin():
        s.execute(update(TrainingJob).where(TrainingJob.id == job_id)
                  .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


# --- claiming ---------------------------------------------------------------------------------
def test_a_job_is_claimed_by_exactly_one_of_two_workers(two_workers):
    a, b = two_workers
    for n in range(20):
        job, _ = a.enqueue("test:1", ADMIN_CHAT)
        got = together(lambda: a.claim_next("host-a"), lambda: b.claim_next("host-b"))
        assert not [g for g in got if isinstance(g, Exception)], got
        claimed = [(owner, g) for owner, g in zip(("host-a", "host-b"), got, strict=True)
                   if g is not None]
        assert len(claimed) == 1, f"round {n}: {got}"
        [(owner, view)] = claimed
        assert isinstance(view, JobView) and view.id == job.id
        stored = b.get(job.id)
        assert stored is not None and stored.status == JobStatus.RUNNING
        assert stored.owner == owner and stored.heartbeat_at is not None
        # Only the owner's heartbeat counts: the other learns the job is not its own.
        loser = "host-b" if owner == "host-a" else "host-a"
        assert a.heartbeat(job.id, owner) and not a.heartbeat(job.id, loser)
        a.finish(job.id, JobStatus.SUCCEEDED)
    assert a.open_jobs() == []


# --- recovering -------------------------------------------------------------------------------
def test_recovery_leaves_another_owners_live_job_alone(two_workers):
    a, b = two_workers
    job = running_job(a, "host-a", pid=4242)
    stopped: list[int | None] = []
    # host-b restarting, and host-b's periodic look: neither touches host-a's job.
    assert b.recover("host-b", 60, "interrupted: the bot restarted", stopped.append) == []
    assert b.recover(None, 60, "interrupted: the bot restarted", stopped.append) == []
    assert stopped == []
    after = b.get(job.id)
    assert after is not None and after.status == JobStatus.RUNNING and after.pid == 4242


def test_a_job_whose_heartbeat_stopped_fails_without_touching_its_pid(two_workers):
    a, b = two_workers
    job = running_job(a, "host-a", pid=4242)
    age_heartbeat(a, job.id, 120)
    stopped: list[int | None] = []
    [taken] = b.recover(None, 60, "interrupted: the bot restarted", stopped.append)
    assert stopped == []  # pid 4242 is a process on host-a, not here
    assert taken.id == job.id and taken.status == JobStatus.FAILED
    assert taken.error is not None and taken.error.startswith(
        "interrupted: its runner host-a stopped responding (last heartbeat 12")
    # host-a, if it was only cut off, learns at its next heartbeat that the job is gone.
    assert not a.heartbeat(job.id, "host-a")
    # The queue moves on: the next job is claimable.
    b.enqueue("test:2")
    assert b.claim_next("host-b") is not None


def test_a_restart_of_the_same_owner_takes_its_job_back_and_stops_its_trainer(two_workers):
    a, b = two_workers
    job = running_job(a, "host-a", pid=4242)
    stopped: list[int | None] = []
    assert b.recover("host-b", 60, "interrupted: the bot restarted", stopped.append) == []
    [taken] = a.recover("host-a", 60, "interrupted: the bot restarted", stopped.append)
    assert stopped == [4242]
    assert (taken.id, taken.status, taken.error) == (job.id, JobStatus.FAILED,
                                                     "interrupted: the bot restarted")


# --- the runner: heartbeats, periodic recovery ------------------------------------------------
# A trainer that reports a rejected candidate once the test lets it go: it blocks reading a
# byte from the FIFO named in argv[1] (see trainer_gate).
FAKE_WORKER = r"""
import json, sys
sys.stdin.read()
with open(sys.argv[1], "rb") as gate:
    gate.read(1)
print(json.dumps({"event": "done", "version": "manman-v9", "status": "rejected",
                  "passed": False, "reasons": ["fake"], "steps": 1,
                  "summary": "manman-v9: gate not passed.", "plot": None, "directory": "."}),
      flush=True)
"""


@contextmanager
def trainer_gate(path: Path) -> Iterator[Callable[[], None]]:
    """A FIFO at ``path`` for FAKE_WORKER to block on, and the function that lets it go.

    The test holds the FIFO open read-write from the start, so the trainer's open never waits
    and the byte written stays in the pipe until the trainer reads it, whenever it gets there.
    """
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)
    def let_go() -> None:
        os.write(fd, b"x")

    try:
        yield let_go
    finally:
        os.close(fd)


def fake_runner(app: ChatmanApp, owner: str, release: Path,
                notices: list[tuple[ChatRef, Notice]]) -> TrainingRunner:
    async def notify(chat: ChatRef, notice: Notice) -> None:
        notices.append((chat, notice))

    async def on_release(version: str) -> str | None:
        raise AssertionError("nothing passes here")

    runner = TrainingRunner(app.jobs, app.registry, app.settings, curation=app.curation,
                            notify=notify, on_release=on_release, owner=owner)
    runner.worker_command = (sys.executable, "-c", FAKE_WORKER, str(release))
    runner.heartbeat_seconds, runner.stale_after_seconds = 0.05, 1.0
    return runner


@pytest.fixture
def fast_app(tmp_path):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", registry_poll_seconds=0.2))
    app.migrate()
    yield app
    app.close()


async def test_a_runner_fails_a_dead_hosts_job_then_runs_the_next(fast_app, tmp_path):
    app = fast_app
    dead = running_job(app.jobs, "dead-host", pid=4242)
    age_heartbeat(app.jobs, dead.id, 120)
    with app.store.session() as s, s.begin():  # queued behind it, as enqueue refuses now
        s.add(TrainingJob(persona="manman", status=JobStatus.QUEUED, requested_by="test:2",
                          progress={}, notify_platform="telegram", notify_chat_id="admin-chat"))
    release = tmp_path / "release"
    notices: list[tuple[ChatRef, Notice]] = []
    runner = fake_runner(app, "host-b", release, notices)
    with trainer_gate(release) as let_go:
        task = asyncio.create_task(runner.run_forever())
        try:
            nxt = await eventually(lambda: (j := app.jobs.get(dead.id + 1)) and j.pid and j, 30,
                                   lambda: f"{app.jobs.open_jobs()}")
            assert nxt.owner == "host-b"
            # It beats while its trainer runs.
            await eventually(lambda: (j := app.jobs.get(nxt.id)) and j.heartbeat_at
                             and j.heartbeat_at > nxt.heartbeat_at, 30,
                             lambda: f"{app.jobs.get(nxt.id)}")
            let_go()
            done = await asyncio.to_thread(app.jobs.wait_ended, nxt.id, 30)
        finally:
            await runner.stop()
            await asyncio.wait_for(task, 30)
    failed = app.jobs.get(dead.id)
    assert failed is not None and failed.status == JobStatus.FAILED
    assert failed.error is not None and "dead-host stopped responding" in failed.error
    assert done.status == JobStatus.REJECTED and done.owner == "host-b"
    told = [n.text for _, n in notices]
    assert told[0] == f"Training job #{dead.id} failed: {failed.error}. The current model keeps " \
                      "answering."
    assert told[1] == f"Training job #{nxt.id} started for manman."


async def test_a_runner_whose_job_was_taken_back_stops_its_trainer(fast_app, tmp_path):
    app = fast_app
    notices: list[tuple[ChatRef, Notice]] = []
    runner = fake_runner(app, "host-a", tmp_path / "never", notices)
    job, _ = app.jobs.enqueue("test:1", ADMIN_CHAT)
    with trainer_gate(tmp_path / "never"):  # never let go: only a kill ends the trainer
        task = asyncio.create_task(runner.run_forever())
        try:
            running = await eventually(lambda: (j := app.jobs.get(job.id)) and j.pid and j, 30,
                                       lambda: f"{app.jobs.get(job.id)}")
            # host-b saw host-a silent for too long (the database was out of its reach, say).
            age_heartbeat(app.jobs, job.id, 120)
            other = SqlJobQueue(app.store, "manman")
            [taken] = other.recover("host-b", 60, "unused", lambda pid: None)
            assert taken.id == job.id
            # host-a's next heartbeat finds the job gone and stops the trainer.
            await eventually(lambda: runner.current is None, 30, lambda: "the trainer still runs")
        finally:
            await runner.stop()
            await asyncio.wait_for(task, 30)
    assert running.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(running.pid, 0)
    after = app.jobs.get(job.id)
    assert after is not None and after.status == JobStatus.FAILED and after.error == taken.error


# --- `chatman worker` and its notices -----------------------------------------------------------
FAKE_PASSING_WORKER = r"""
import json, sys
from bot.core.config import Settings
from bot.infra.storage.registry import SqlRegistry
from bot.infra.storage.store import SqlStore, make_engine

request = json.loads(sys.stdin.read())
settings = Settings(_env_file=None, **request["settings"])
engine = make_engine(settings.resolved_database_url)
registry = SqlRegistry(SqlStore(engine), settings.persona)
v = registry.create_candidate(base_model="fake", config={}, job_id=request["job_id"],
                              created_by=request["requested_by"]).version
print(json.dumps({"event": "candidate", "version": v, "max_steps": 1}), flush=True)
run = settings.data_dir / "training" / settings.persona / v
(run / "model").mkdir(parents=True)
(run / "model" / "config.json").write_text("{}")
plot = run / "loss.png"
plot.write_bytes(b"\x89PNG\r\n\x1a\n")
registry.record_result(v, base_version="fake", directory=run, model_dir=run / "model",
                       dataset_sha256="ab" * 32, dataset_rows=1, steps=1, metrics={}, reasons=[])
registry.activate(v, request["requested_by"])
engine.dispose()
print(json.dumps({"event": "done", "version": v, "status": "active", "passed": True,
                  "reasons": [], "steps": 1, "summary": f"{v}: gate passed at step 1.",
                  "plot": str(plot), "directory": str(run)}), flush=True)
"""


async def test_chatman_worker_trains_a_queued_job_and_a_replica_tells_the_admin(
        tmp_path, monkeypatch):
    data = tmp_path / "data"
    # The bot queues (it runs no training: CHATMAN_RUN_TRAINING=false); the worker trains.
    # Its registry follower stays put: the fake version has no model to load.
    bot = ChatmanApp.from_settings(make_settings(data, run_training=False, replica_id="bot-1",
                                                 registry_poll_seconds=600))
    sent: list[tuple[ChatRef, Notice]] = []

    async def telegram(chat: ChatRef, notice: Notice) -> None:
        sent.append((chat, notice))

    monkeypatch.setattr(TrainingRunner, "worker_command",
                        (sys.executable, "-c", FAKE_PASSING_WORKER))
    stop = asyncio.Event()
    async with bot.running(load_models=False, background=True):
        assert bot.runner is None  # this replica trains nothing
        # Started once the bot has migrated the schema: Alembic is not thread-safe, and both
        # run in this one process here (in production they are processes of their own).
        worker = asyncio.create_task(run_worker(
            make_settings(data, replica_id="gpu-1", registry_poll_seconds=0.2), stop))
        bot.notifiers["telegram"] = telegram  # as the Telegram adapter registers itself
        job, _ = bot.jobs.enqueue("telegram:1", ADMIN_CHAT)
        try:
            done = await asyncio.to_thread(bot.jobs.wait_ended, job.id, 60)
            assert done.status == JobStatus.SUCCEEDED and done.owner == "gpu-1"
            assert done.heartbeat_at is not None and done.model_version == "manman-v1"
            active = bot.registry.active()
            assert active is not None and active.version == "manman-v1"
            await eventually(lambda: sent and sent[-1][1].final, 30, lambda: f"sent: {sent}")
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
        # Nothing is sent twice, by this replica or another.
        again = NoticeRelay(bot.outbox, {"telegram": telegram}, "bot-2")
        assert await again.relay_once() == 0
    assert all(chat == ADMIN_CHAT for chat, _ in sent)
    assert [n.message.code for _, n in sent] == ["notice.started", "notice.plan", "lines",
                                                  "notice.now_answering"], sent
    assert sent[0][1].text == f"Training job #{job.id} started for manman."
    assert sent[2][1].text == "manman-v1: gate passed at step 1."
    assert sent[3][1].text == "Now answering with manman-v1."
    assert sent[-1][1].final and sent[2][1].image is not None
    assert sent[2][1].image.read_bytes().startswith(b"\x89PNG")


async def test_stored_notices_go_once_in_order_per_chat_across_replicas(database_url):
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    outbox = SqlNoticeOutbox(SqlStore(engine), "manman")
    other_chat = ChatRef("telegram", "other")
    for i in range(5):
        outbox.add(ADMIN_CHAT, Notice(1, Message("notice.started", {"id": i, "persona": "x"})))
        outbox.add(other_chat, Notice(2, Message.text(f"other {i}"), final=i == 4))
    outbox.add(ChatRef("discord", "d"), Notice(3, Message.text("nobody here has discord")))
    sent: list[tuple[str, ChatRef, Notice]] = []

    def sender(name: str):
        async def send(chat: ChatRef, notice: Notice) -> None:
            sent.append((name, chat, notice))
            await asyncio.sleep(0)  # let the other replica interleave
        return send

    one = NoticeRelay(outbox, {"telegram": sender("one")}, "one")
    two = NoticeRelay(outbox, {"telegram": sender("two")}, "two")
    while sum(await asyncio.gather(one.relay_once(), two.relay_once())):
        pass
    engine.dispose()
    assert len(sent) == 10
    words = [n.message.params for _, c, n in sent if c == ADMIN_CHAT]
    assert [p["id"] for p in words] == list(range(5))
    assert [n.message.params["text"] for _, c, n in sent if c == other_chat] == [
        f"other {i}" for i in range(5)]
    assert [n.final for _, c, n in sent if c == other_chat] == [False] * 4 + [True]
    with SqlStore(make_engine(database_url)).session() as s:
        rows = s.query(TrainingNoticeRow).order_by(TrainingNoticeRow.id).all()
        assert [r.sent_at is not None for r in rows] == [True] * 10 + [False]


async def test_a_notice_that_cannot_be_sent_is_retried_then_given_up(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine)
    outbox = SqlNoticeOutbox(SqlStore(engine), "manman")
    first = outbox.add(ADMIN_CHAT, Notice(1, Message.text("first")))
    outbox.add(ADMIN_CHAT, Notice(1, Message.text("second")))
    [claimed] = outbox.claim(["telegram"], "one", 60)
    assert claimed.id == first
    # While it is leased, or waiting for its retry, nobody sends it or what follows it.
    assert outbox.claim(["telegram"], "two", 60) == []
    outbox.failed(first, "one", "telegram is down", retry_after=0)
    for attempt in range(2, 6):
        [again] = outbox.claim(["telegram"], "two", 60)
        assert (again.id, again.attempts) == (first, attempt - 1)
        outbox.failed(first, "two", "telegram is down", retry_after=0)
    # Given up after MAX_ATTEMPTS: the chat's next notice goes.
    [nxt] = outbox.claim(["telegram"], "two", 60)
    assert nxt.notice.message == Message.text("second")
    engine.dispose()


def test_the_command_line_offers_a_worker():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "worker" in result.output
    result = CliRunner().invoke(cli, ["worker", "--help"])
    assert result.exit_code == 0 and "Run training jobs only" in result.output
