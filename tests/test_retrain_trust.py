"""Retraining people can trust: no duplicate training, cancelling, forced activation.

* a /retrain identical to a running job or to a trained version points there instead of
  training again (the dataset as training would freeze it, the base and the TrainConfig);
* /canceltrain, `chatman train cancel` and the web console cancel a queued job at once and stop
  a running trainer (a real worker process, cancelled from another process through the
  database), and the served model does not change;
* `chatman models activate VERSION --force` merges a rejected version's adapter and serves it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from adapters.app import ChatmanApp
from bot.core.errors import UserFacingError
from bot.core.jobs import DuplicateJob, JobError, JobStatus, JobView, TrainingKey
from bot.core.registry import ModelStatus
from bot.core.types import ChatKind, ChatMessage, ChatRef, Incoming, Role, UserRef
from bot.infra.llm.chat_model import GenerationSettings, TransformersChatModel
from bot.infra.storage import migrate
from bot.infra.storage.jobs import SqlJobQueue
from bot.infra.storage.registry import SqlRegistry
from bot.infra.storage.store import SqlStore, make_engine
from bot.services.admin import Actor, PermissionDenied
from tests.conftest import MODEL_CACHE, make_settings
from tests.fakes import eventually
from tests.test_cli import chatman
from training.jobs import stop_leftover_worker

ADMIN = Actor("test", "1", "Ada", granted_admin=True)
ADMIN_CHAT = ChatRef("test", "admin-chat")
BOB = Actor("test", "2", "Bob")
CAROL = UserRef("test", "3", "Carol")


# --- the job queue -----------------------------------------------------------------------
@pytest.fixture
def queue(database_url):
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    yield SqlJobQueue(SqlStore(engine), "manman")
    engine.dispose()


def key(dataset: str = "a", steps: int = 60, base: str = "starter") -> TrainingKey:
    return TrainingKey(dataset * 64, base, {"max_steps": steps, "learning_rate": 0.001})


def test_the_queue_refuses_a_job_identical_to_the_running_one(queue):
    first, _ = queue.enqueue("test:1", None, 60, key())
    assert queue.claim_next("test").id == first.id
    with pytest.raises(DuplicateJob) as same:
        queue.enqueue("test:2", None, 60, key())
    assert same.value.job.id == first.id
    assert same.value.user_message == (
        f"Training job #{first.id} is already training on exactly this dataset and these "
        "settings; /trainstatus follows it.")
    assert [j.id for j in queue.open_jobs()] == [first.id]

    # Another dataset, base or setting is another model: it waits behind the running job.
    for other in (key(dataset="b"), key(base="tiny"), key(steps=61)):
        queued, behind = queue.enqueue("test:2", None, 60, other)
        assert behind.id == first.id and queued.key == other
        assert queue.cancel(queued.id, "test:2").status == JobStatus.CANCELLED

    # A running job somebody cancelled no longer counts as the same training.
    queue.cancel(first.id, "test:1")
    again, behind = queue.enqueue("test:2", None, 60, key())
    assert behind.id == first.id and again.id != first.id


def test_cancelling_queued_and_running_jobs_in_the_queue(queue):
    with pytest.raises(JobError) as nothing:
        queue.cancel(None, "test:1")
    assert nothing.value.user_message == "No training job is queued or running; nothing to cancel."
    running, _ = queue.enqueue("test:1", None, 60, key())
    queue.claim_next("test")
    waiting, _ = queue.enqueue("test:1", None, 60, key("b"))
    with pytest.raises(JobError) as which:
        queue.cancel(None, "test:1")
    assert which.value.user_message == (
        f"Jobs #{running.id} (running) and #{waiting.id} (queued) are open; say which, e.g. "
        f"/canceltrain {running.id}.")

    cancelled = queue.cancel(waiting.id, "test:ada")
    assert cancelled.status == JobStatus.CANCELLED and cancelled.error == "cancelled by test:ada"
    assert queue.claim_next("test") is None  # never runs

    # A running job is only flagged: its runner stops the trainer and finishes it.
    flagged = queue.cancel(None, "test:ada")
    assert flagged.status == JobStatus.RUNNING and queue.cancel_requested(running.id) == "test:ada"
    assert "stopping, cancelled by test:ada" in flagged.describe()
    assert queue.wait_ended(running.id, timeout=0).status == JobStatus.RUNNING
    queue.finish(running.id, JobStatus.CANCELLED, "cancelled by test:ada")
    assert queue.wait_ended(running.id, timeout=5).status == JobStatus.CANCELLED

    with pytest.raises(JobError) as done:
        queue.cancel(running.id, "test:ada")
    assert done.value.user_message == (
        f"Training job #{running.id} has already finished (cancelled); nothing to cancel.")
    with pytest.raises(JobError, match="no job"):
        queue.cancel(999, "test:ada")


# --- the admin command --------------------------------------------------------------------
@pytest.fixture
def app(tmp_path):
    application = ChatmanApp.from_settings(make_settings(tmp_path / "data"))
    application.migrate()
    yield application
    application.close()


def trained_on(app: ChatmanApp, steps: int, folder: Path, *, passed: bool) -> str:
    """A version trained on exactly what `/retrain steps` would train on now."""
    k = app.admin.training_key(steps)
    v = app.registry.create_candidate(base_model=k.base_model, config=k.config, job_id=None,
                                      created_by="test").version
    model_dir: Path | None = None
    if passed:
        model_dir = folder / v
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")
    reasons = [] if passed else ["persona_score 0.00 < 0.90"]
    app.registry.record_result(v, base_version="base", directory=folder, model_dir=model_dir,
                               dataset_sha256=k.dataset_sha256, dataset_rows=4, steps=steps,
                               metrics={}, reasons=reasons)
    if not passed:
        app.registry.reject(v, reasons)
    return v


def retrain(app: ChatmanApp, steps: int | None = None):
    return app.admin.execute(ADMIN, f"/retrain {steps}" if steps else "/retrain",
                             origin=ADMIN_CHAT)


def test_retrain_points_to_a_version_trained_on_the_same_data_and_settings(app, tmp_path):
    runs = tmp_path / "runs"
    rejected = trained_on(app, 5, runs, passed=False)
    same = retrain(app, 5)
    assert same.message == (
        f"{rejected} was already trained on exactly this dataset with these settings "
        "(rejected: persona_score 0.00 < 0.90). Add or correct pairs first, or change the "
        "steps (/retrain STEPS).")
    assert same.data["job"] is None and same.data["duplicate"] == "version"
    assert same.data["existing"]["version"] == rejected
    assert app.jobs.open_jobs() == []

    good = trained_on(app, 7, runs, passed=True)
    app.registry.activate(good, "test:ada")
    assert retrain(app, 7).message == (
        f"{good} was already trained on exactly this dataset with these settings; it is "
        "answering now.")
    newer = trained_on(app, 8, runs, passed=True)
    app.registry.activate(newer, "test:ada")
    assert retrain(app, 7).message == (
        f"{good} was already trained on exactly this dataset with these settings (retired); "
        f"/activate {good} to use it again.")
    app.registry.fail(newer, "could not be loaded")  # a failed version is no reason not to train
    assert retrain(app, 8).data["job"]["id"] == 1
    assert app.admin.execute(ADMIN, "/canceltrain").message.startswith("Training job #1 cancelled")

    # Other steps, or the data changed since: a new model, so it is queued.
    assert retrain(app, 6).message.startswith("Queued training job #2")
    app.admin.execute(ADMIN, "/canceltrain 2")
    app.curation.add("What do you cook?", "Dumplings, always.", "test:ada")
    queued = retrain(app, 5)
    assert queued.message.startswith("Queued training job #3")
    job = app.jobs.get(3)
    assert job.key == app.admin.training_key(5) and job.key.dataset_sha256 != \
        app.registry.get(rejected).dataset_sha256
    assert job.base_model == app.persona.training.base_model and job.config["max_steps"] == 5


def test_canceltrain_cancels_a_queued_job_and_explains_itself(app):
    with pytest.raises(UserFacingError) as unknown:
        app.admin.execute(ADMIN, "/nope")
    assert "/canceltrain" in unknown.value.user_message
    job_id = retrain(app, 5).data["job"]["id"]
    with pytest.raises(PermissionDenied):
        app.admin.execute(BOB, f"/canceltrain {job_id}")
    with pytest.raises(UserFacingError) as usage:
        app.admin.execute(ADMIN, "/canceltrain soon")
    assert usage.value.user_message == "Usage: /canceltrain [job number] (see /trainstatus)"

    result = app.admin.execute(ADMIN, f"/canceltrain #{job_id}")
    # No trained version: the configured model answers.
    assert result.message == (f"Training job #{job_id} cancelled; the base model "
                              f"({app.llm.version}) keeps answering.")
    assert result.data["cancelled"] and result.data["job"]["status"] == "cancelled"
    job = app.jobs.get(job_id)
    assert job.status == JobStatus.CANCELLED and job.error == "cancelled by test:1"
    assert "cancelled: cancelled by test:1" in app.admin.execute(ADMIN, "/trainstatus").message

    with pytest.raises(UserFacingError) as nothing:
        app.admin.execute(ADMIN, "/canceltrain")
    assert nothing.value.user_message == "No training job is queued or running; nothing to cancel."
    with pytest.raises(UserFacingError) as finished:
        app.admin.execute(ADMIN, f"/canceltrain {job_id}")
    assert "has already finished (cancelled)" in finished.value.user_message
    with pytest.raises(UserFacingError) as missing:
        app.admin.execute(ADMIN, "/canceltrain 42")
    assert missing.value.user_message == "There is no training job #42."


def test_a_cancel_nobody_confirms_says_so_and_a_restart_honours_it(app):
    job_id = retrain(app, 5).data["job"]["id"]
    assert app.jobs.claim_next("test").id == job_id  # "running", but no runner: the bot is down
    unconfirmed = app.admin.cancel_training(ADMIN, wait_seconds=0)
    assert unconfirmed.message == (
        f"Asked training job #{job_id} to stop, but no job runner has confirmed yet (is the bot "
        f"running?); /trainstatus shows when it has stopped, and the base model "
        f"({app.llm.version}) keeps answering meanwhile.")
    assert not unconfirmed.data["cancelled"]
    assert "stopping, cancelled by test:1" in app.admin.execute(ADMIN, "/trainstatus").message
    # The next start finds the job without a runner and records it as the cancel it was.
    [recovered] = app.jobs.recover("test", 60, "interrupted: the bot restarted",
                                    stop_leftover_worker)
    assert (recovered.status, recovered.error) == (JobStatus.CANCELLED, "cancelled by test:1")


# --- a real trainer, cancelled from another process -----------------------------------------


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def trainer_started(app: ChatmanApp, job_id: int) -> JobView:
    """The job once its worker runs and has registered its candidate version."""
    def ready() -> JobView | None:
        job = app.jobs.get(job_id)
        assert job is not None
        return job if job.pid and job.model_version and process_exists(job.pid) else None

    started = await eventually(ready, 240, lambda: f"job: {app.jobs.get(job_id)}")
    assert started is not None  # eventually returns the first truthy value
    return started


async def ask(app: ChatmanApp, text: str):
    return await app.pipeline.handle(Incoming(ChatRef("test", "c1", ChatKind.PRIVATE), CAROL,
                                              text=text, want_voice=False))


async def test_a_running_trainer_is_stopped_by_a_cancel_from_another_process(job_app, tmp_path):
    app = job_app
    await app.start(load_models=False, background=True)
    served, answering = app.served, app.llm.version
    # What the answering model is called here, and in a shell that has not loaded it.
    told_here = answering if served.version else f"the base model ({answering})"
    told_cli = answering if served.version else f"the base model ({app.settings.llm_model})"
    try:
        first = retrain(app, 5000).data["job"]["id"]
        job = await trainer_started(app, first)
        # The same request again while it trains: pointed to the job, nothing queued.
        same = retrain(app, 5000)
        assert same.message == (f"Training job #{first} is already training on exactly this "
                                "dataset and these settings; /trainstatus follows it.")
        assert same.data["duplicate"] == "job" and [j.id for j in app.jobs.open_jobs()] == [first]

        # `chatman train cancel` is another process: the database carries the request.
        cli = await asyncio.to_thread(chatman, tmp_path, "train", "cancel", "--as", "ops")
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == f"Training job #{first} cancelled; {told_cli} keeps answering."
        assert job.pid is not None  # trainer_started waited for it
        assert not process_exists(job.pid)  # reaped before the job was marked cancelled
        done = app.jobs.get(first)
        assert done.status == JobStatus.CANCELLED and done.error == "cancelled by cli:ops"
        candidate = app.registry.get(job.model_version)
        assert candidate.status == ModelStatus.FAILED
        assert candidate.reasons == ["cancelled by cli:ops"]
        # The one who started it hears about it.
        told = (ADMIN_CHAT, f"Training job #{first} was cancelled by cli:ops. The current model "
                            "keeps answering.", True)
        await eventually(lambda: told in [(chat, n.text, n.final) for chat, n in app.notices], 30,
                         lambda: f"notices: {app.notices}")

        # In-process (a chat's /canceltrain): the runner is nudged and stops the trainer at once.
        second = retrain(app, 5000).data["job"]["id"]
        job = await trainer_started(app, second)
        result = await asyncio.to_thread(app.admin.execute, ADMIN, "/canceltrain", None,
                                         ADMIN_CHAT)
        assert result.message == f"Training job #{second} cancelled; {told_here} keeps answering."
        assert job.pid is not None and not process_exists(job.pid)
        assert app.registry.get(job.model_version).reasons == ["cancelled by test:1"]
        # Whoever cancelled was told by their command; no second notice for the same person.
        assert not any("cancelled by test:1" in n.text for _, n in app.notices)

        turn = await ask(app, "What is the capital of Japan?")
    finally:
        await app.stop()
    assert app.served == served and app.llm.version == answering
    assert turn.model_version == answering and turn.reply
    assert app.registry.active() is None or app.registry.active().version == answering
    assert app.jobs.open_jobs() == []


async def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(monkeypatch):
    import signal
    import sys

    from training import jobs

    monkeypatch.setattr(jobs, "STOP_GRACE_SECONDS", 0.5)
    stubborn = await asyncio.create_subprocess_exec(
        # It waits for a signal it does not ignore: only SIGKILL ends it.
        sys.executable, "-c", "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); signal.pause()", stdout=asyncio.subprocess.PIPE)
    assert stubborn.stdout is not None
    assert await stubborn.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    await jobs._stop(stubborn)
    assert stubborn.returncode == -signal.SIGKILL and not process_exists(stubborn.pid)


def test_chatman_train_cancel_for_a_queued_job(tmp_path):
    nothing = chatman(tmp_path, "train", "cancel")
    assert nothing.returncode == 2
    assert "No training job is queued or running; nothing to cancel." in nothing.stderr
    queued = chatman(tmp_path, "admin", "retrain", "5", "--as", "ops", "--json")
    job_id = json.loads(queued.stdout)["data"]["job"]["id"]
    again = chatman(tmp_path, "admin", "retrain", "5", "--as", "ops")
    assert "already waiting" in again.stderr  # queued, not yet training: not queued twice
    cancelled = chatman(tmp_path, "train", "cancel", str(job_id), "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    payload = json.loads(cancelled.stdout)
    assert payload["command"] == "canceltrain" and payload["data"]["cancelled"]
    assert payload["message"].startswith(f"Training job #{job_id} cancelled; ")
    status = chatman(tmp_path, "admin", "trainstatus").stdout
    assert "No training job is queued or running." in status and "cancelled by cli:" in status


# --- forced activation of a rejected version -------------------------------------------------
def rejected_run(tmp_path: Path, base: Path) -> tuple[str, Path]:
    """A rejected version as a training run leaves it: a LoRA adapter in its run folder, no
    merged model. (The trainer itself writing ``<run>/adapter`` is test_training.py's.)"""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'chatman.db'}")
    migrate.upgrade(engine)
    registry = SqlRegistry(SqlStore(engine), "manman")
    v = registry.create_candidate(base_model=str(base), config={"max_steps": 1}, job_id=None,
                                  created_by="test").version
    run = tmp_path / "data" / "training" / "manman" / v
    torch.manual_seed(1)
    # Non-zero B matrices: merging really changes the weights, so a skipped merge would show.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(
        str(run / "adapter"))
    registry.record_result(v, base_version=base.name, directory=run, model_dir=None,
                           dataset_sha256="ab" * 32, dataset_rows=4, steps=1, metrics={},
                           reasons=["persona_score 0.00 < 0.90"])
    registry.reject(v, ["persona_score 0.00 < 0.90"])
    engine.dispose()
    return v, run


def test_activate_force_merges_a_rejected_version_and_serves_it(tmp_path, tiny_qwen2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    v, run = rejected_run(tmp_path, tiny_qwen2_dir)
    refused = chatman(tmp_path, "models", "activate", v)
    assert refused.returncode == 2 and "no merged model" in refused.stderr
    assert f"models activate {v} --force" in refused.stderr

    forced = chatman(tmp_path, "models", "activate", v, "--force", "--as", "ops")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == f"{v} is active"
    listed = json.loads(chatman(tmp_path, "models", "list", "--json").stdout)
    assert listed["serving"] == v
    version = listed["versions"][0]
    assert (version["version"], version["status"]) == (v, "active")
    model_dir = Path(version["model_dir"])
    assert model_dir == run / "model" and (model_dir / "config.json").is_file()
    assert not list(run.glob(".export-*"))  # no staging folder left behind

    # The merged folder loads and answers, with the persona's prompt as default system turn...
    model = TransformersChatModel(str(model_dir), cache_dir=MODEL_CACHE, version=v,
                                  generation=GenerationSettings(max_new_tokens=4, temperature=0))
    assert "You are Manman" in model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False)
    reply = model.generate([ChatMessage(Role.USER, "Hi")])
    assert reply.model_version == v and 1 <= reply.new_tokens <= 4
    # ...and holds the adapter's weights, not the base's.
    merged = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"],
                       base["model.layers.0.mlp.up_proj.weight"])


def test_activate_force_says_why_it_cannot_export(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'chatman.db'}")
    migrate.upgrade(engine)
    registry = SqlRegistry(SqlStore(engine), "manman")
    v = registry.create_candidate(base_model="starter", config={}, job_id=None,
                                  created_by="test").version
    run = tmp_path / "runs" / v
    run.mkdir(parents=True)
    registry.record_result(v, base_version="base", directory=run, model_dir=None,
                           dataset_sha256="ab" * 32, dataset_rows=4, steps=1, metrics={},
                           reasons=["persona_score 0.00 < 0.90"])
    registry.reject(v, ["persona_score 0.00 < 0.90"])
    engine.dispose()

    refused = chatman(tmp_path, "models", "activate", v, "--force")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {v} cannot be exported: its adapter {run / 'adapter'} is missing (status "
        "rejected; a run that crashed or was cancelled saves none).")
    assert json.loads(chatman(tmp_path, "models", "list", "--json").stdout)["serving"] == "starter"
