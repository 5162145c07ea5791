"""Lifecycle correctness of training jobs (issue 14).

* a run trains on exactly the rows it froze: hash = bytes written = rows trained, whatever is
  approved while it runs;
* an error in the job runner stops and reaps the trainer before the job is marked failed, and
  the job's version does not stay active;
* two bots (processes) on one database never run two trainers for a persona, nor claim a job
  twice, nor lose a cancel to a claim.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from adapters.app import ChatmanApp
from bot.core.formats import AlpacaRow, dump_alpaca
from bot.core.jobs import JobError, JobStatus, JobView, Notice
from bot.core.registry import ModelStatus
from bot.core.types import ChatRef
from bot.infra.storage import migrate
from bot.infra.storage.jobs import SqlJobQueue
from bot.infra.storage.models import TrainingJob
from bot.infra.storage.store import SqlStore, make_engine
from bot.services.admin import Actor
from tests.conftest import MODEL_CACHE, make_settings
from tests.fakes import eventually
from training import run
from training.evaluate import Decoding
from training.jobs import TrainingRunner
from training.sft import TrainConfig, train_persona

ADMIN = Actor("test", "1", "Ada", granted_admin=True)
ADMIN_CHAT = ChatRef("test", "admin-chat")
OPS = "cli:ops"


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def approvals_racing_each_read(curation) -> list[str]:
    """Every read of the approved pairs is followed at once by another admin approving a new
    pair (in another process, in real life): the worst timing for anything read twice."""
    read = curation.approved
    landed: list[str] = []

    def approved():
        pairs = read()
        question = f"Late question {len(landed) + 1}?"
        curation.add(question, "An answer approved after the dataset was read.", OPS)
        landed.append(question)
        return pairs

    curation.approved = approved
    return landed


# --- 1. one read per snapshot ----------------------------------------------------------------
def test_a_run_trains_on_exactly_the_rows_it_froze(tmp_path, tiny_qwen2_dir, monkeypatch):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data"))
    app.migrate()
    trained: list[list[AlpacaRow]] = []

    def recording_train_persona(model, tokenizer, *, rows, **kwargs):  # what the trainer is handed
        trained.append(list(rows))
        return train_persona(model, tokenizer, rows=rows, **kwargs)

    monkeypatch.setattr(run, "train_persona", recording_train_persona)
    try:
        landed = approvals_racing_each_read(app.curation)
        out = run.run_training(
            curation=app.curation, persona=app.persona, language=app.language,
            base_model=str(tiny_qwen2_dir), cache_dir=MODEL_CACHE, data_dir=tmp_path / "data",
            config=TrainConfig(max_steps=1, eval_every=1, eval_samples=1),
            decoding=Decoding(temperature=0.0, max_new_tokens=8, samples=1),
        )
    finally:
        app.close()

    assert landed, "no approval raced the run"
    report = json.loads((out.directory / "train_report.json").read_text())
    data_file = Path(report["dataset"]["path"])
    written = data_file.read_bytes()
    # hash = bytes written = rows trained
    assert report["dataset"]["sha256"] == out.dataset_sha256 == hashlib.sha256(written).hexdigest()
    assert data_file.parent.name == out.dataset_sha256[:16]
    [rows] = trained
    assert [dump_alpaca(r) for r in rows] == json.loads(written)
    assert out.dataset_rows == report["dataset"]["rows"] == len(rows)
    # A pair approved once the dataset was read is in none of them.
    assert not {r.instruction for r in rows} & set(landed)


# --- 2. a runner error stops the trainer ------------------------------------------------------


async def test_a_runner_error_mid_job_stops_the_trainer_before_the_job_fails(job_app):
    app = job_app
    pids: list[int] = []
    lost: list[int] = []
    update = app.jobs.update

    def update_then_lose_the_database(job_id: int, **values) -> None:
        if "pid" in values:
            pids.append(values["pid"])
        if values.get("progress", {}).get("step") and not lost:
            lost.append(job_id)  # once: the database goes away at the first training step
            raise OperationalError("UPDATE training_jobs", {}, Exception("connection lost"))
        update(job_id, **values)

    app.jobs.update = update_then_lose_the_database  # the runner's queue
    await app.start(load_models=False, background=True)
    served, answering = app.served, app.llm.version
    try:
        job_id = app.admin.execute(ADMIN, "/retrain 5000", origin=ADMIN_CHAT).data["job"]["id"]
        job = await eventually(lambda: (j := app.jobs.get(job_id)).status not in JobStatus.OPEN
                               and j, 240, lambda: f"job: {app.jobs.get(job_id)}")
        assert job  # the first truthy value: the finished job
        # Reaped before the job was marked failed: no trainer outlives its job.
        [pid] = pids
        assert lost == [job_id] and not process_exists(pid)
        assert app.jobs.open_jobs() == []
    finally:
        await app.stop()
    assert job.status == JobStatus.FAILED
    assert job.error == ("internal error in the job runner (OperationalError); the trainer was "
                         "stopped")
    assert app.registry.get(job.model_version).status == ModelStatus.FAILED
    assert app.registry.active() is None
    assert app.served == served and app.llm.version == answering
    final = app.notices[-1][1]
    assert final.final and final.text == (f"Training job #{job_id} failed: {job.error}. The "
                                          "current model keeps answering.")


# A trainer that "passes": it registers a version, activates it (as train_and_release does in
# the worker) and reports it; no model is trained.
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
registry.record_result(v, base_version="fake", directory=run, model_dir=run / "model",
                       dataset_sha256="ab" * 32, dataset_rows=1, steps=1, metrics={}, reasons=[])
registry.activate(v, request["requested_by"])
engine.dispose()
print(json.dumps({"event": "done", "version": v, "status": "active", "passed": True,
                  "reasons": [], "steps": 1, "summary": f"{v}: gate passed at step 1.",
                  "plot": None, "directory": str(run)}), flush=True)
"""


async def test_a_runner_error_after_the_trainer_activated_hands_back_to_the_previous(tmp_path):
    app = ChatmanApp.from_settings(make_settings(tmp_path / "data", registry_poll_seconds=0.2))
    app.migrate()
    registry = app.registry
    # What answers before the job: an earlier trained version.
    earlier = registry.create_candidate(base_model="fake", config={"n": 0}, job_id=None,
                                        created_by="test").version
    (tmp_path / earlier).mkdir()
    registry.record_result(earlier, base_version="fake", directory=tmp_path,
                           model_dir=tmp_path / earlier, dataset_sha256="cd" * 32,
                           dataset_rows=1, steps=1, metrics={}, reasons=[])
    registry.activate(earlier, "test")
    notices: list[Notice] = []
    swaps: list[str] = []

    async def notify(chat: ChatRef, notice: Notice) -> None:
        notices.append(notice)

    async def release_that_breaks(version: str) -> str | None:
        swaps.append(version)
        raise RuntimeError("the swap broke")

    runner = TrainingRunner(app.jobs, registry, app.settings, curation=app.curation,
                            notify=notify, on_release=release_that_breaks)
    runner.worker_command = (sys.executable, "-c", FAKE_PASSING_WORKER)
    job, _ = app.jobs.enqueue("test:1", ADMIN_CHAT)
    task = asyncio.create_task(runner.run_forever())
    try:
        # The runner's last word on the job: its final notice (the job itself reads
        # "succeeded" for a moment, between the trainer's report and the swap).
        await eventually(lambda: any(n.final for n in notices), 60,
                         lambda: f"job: {app.jobs.get(job.id)}, notices: {notices}")
        done = app.jobs.get(job.id)
        assert done is not None and done.model_version is not None
    finally:
        await runner.stop()
        await asyncio.wait_for(task, 30)  # the runner's loop ends once it is stopped
        app.close()
    assert done.status == JobStatus.FAILED
    assert done.error == "internal error in the job runner (RuntimeError); the trainer was stopped"
    version = registry.get(done.model_version)
    assert version is not None
    assert version.status == ModelStatus.FAILED and done.error in version.reasons
    answering = registry.active()
    assert answering is not None
    assert answering.version == earlier  # the version before the job answers again
    assert swaps == [done.model_version, done.model_version]  # the swap, then the swap back
    assert notices[-1].final and notices[-1].text.startswith(f"Training job #{job.id} failed")


# --- 3. one trainer per persona across processes ---------------------------------------------
@pytest.fixture
def two_bots(database_url):
    """Two job queues on one database, each with its own engine, as two bot processes have."""
    engines = [make_engine(database_url) for _ in range(2)]
    migrate.upgrade(engines[0])
    yield [SqlJobQueue(SqlStore(e), "manman") for e in engines]
    for e in engines:
        e.dispose()


def together(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released at the same instant; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run_one(i: int, call: Callable[[], object]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run_one, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a call hung"
    return results


ROUNDS = 40


def test_two_bots_never_run_two_trainers_for_a_persona(two_bots):
    a, b = two_bots
    for n in range(ROUNDS):
        # Two waiting jobs (as older releases could queue), so each bot has one to take.
        with a.store.session() as s, s.begin():
            s.add_all([TrainingJob(persona="manman", status=JobStatus.QUEUED,
                                   requested_by="test:1", progress={}) for _ in range(2)])
        got = together(lambda: a.claim_next("a"), lambda: b.claim_next("b"))
        assert not [g for g in got if isinstance(g, Exception)], got
        claimed = [g for g in got if g is not None]
        assert len(claimed) == 1, f"round {n}: {got}"
        [winner] = claimed
        assert isinstance(winner, JobView), winner
        running = [j.id for j in b.open_jobs() if j.status == JobStatus.RUNNING]
        assert running == [winner.id], f"round {n}"
        # While it runs, neither bot claims the other queued job.
        assert together(lambda: a.claim_next("a"), lambda: b.claim_next("b")) == [None, None]
        a.finish(winner.id, JobStatus.SUCCEEDED)
        [left] = a.open_jobs()
        a.cancel(left.id, "test:1")
    assert a.open_jobs() == []


def test_two_bots_queue_one_job_and_a_cancel_is_never_lost_to_a_claim(two_bots):
    a, b = two_bots
    for n in range(ROUNDS // 2):
        queued = together(lambda: a.enqueue("test:1"), lambda: b.enqueue("test:2"))
        jobs = [q[0] for q in queued if isinstance(q, tuple)]
        refused = [q for q in queued if isinstance(q, JobError)]
        assert len(jobs) == 1 and len(refused) == 1, f"round {n}: {queued}"
        assert [j.id for j in a.open_jobs()] == [jobs[0].id]

        claim, cancel = together(lambda: a.claim_next("a"),
                                 functools.partial(b.cancel, jobs[0].id, "test:ops"))
        assert isinstance(cancel, JobView), cancel
        job = a.get(jobs[0].id)
        if claim is None:  # the cancel came first: it never runs
            assert job.status == cancel.status == JobStatus.CANCELLED, f"round {n}"
        else:  # the claim came first: it runs, flagged, and its runner stops it
            assert isinstance(claim, JobView), claim
            assert claim.id == job.id and job.status == cancel.status == JobStatus.RUNNING
            assert job.cancel_requested_by == "test:ops", f"round {n}"
            a.finish(job.id, JobStatus.CANCELLED, "cancelled by test:ops")
    assert a.open_jobs() == []
