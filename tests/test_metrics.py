"""Observability (issue 16): /metrics counts what happened and parses with the Prometheus text
parser; /healthz and /readyz; JSON logs that carry the turn id and mask secrets. Fast tier:
model stand-ins, SQLite, real HTTP."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from adapters.app import ChatmanApp
from adapters.health import HealthServer
from adapters.web.server import WebAdapter
from bot.core.inbox import InboxStats
from bot.core.jobs import JobStatus
from bot.core.tracing import turn_id, turn_scope
from bot.core.types import ChatRef, Incoming, Turn, UserRef
from bot.infra import logs
from bot.infra.logs import LIBRARY_LOGGERS, configure_logging
from bot.infra.metrics import PrometheusMetrics
from tests.conftest import REPO, make_settings
from tests.fakes.models import EchoASR, ScriptedLLM, ToneTTS

SAMPLE = REPO / "persona" / "manman" / "samples" / "question.ogg"
CSRF = {"X-ChatMan": "1"}
TOKEN = "metrics-admin-token-s3cr3t"
PASSWORD = "db-pa55w0rd-s3cr3t"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels (the official parser: it raises on
    anything that is not valid exposition text)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def build(tmp_path, **overrides: Any) -> ChatmanApp:
    return ChatmanApp.from_settings(make_settings(tmp_path / "data", web_port=0, **overrides),
                                    asr=EchoASR("hello there"), llm=ScriptedLLM(answer="I am a fake."),
                                    tts=ToneTTS())


@pytest.fixture
async def console(tmp_path) -> AsyncIterator[tuple[ChatmanApp, httpx.AsyncClient]]:
    app = build(tmp_path, web_admin_token=TOKEN)
    async with app.running(load_models=False):
        web = WebAdapter(app)
        await web.start()
        try:
            async with httpx.AsyncClient(base_url=web.url, timeout=60) as client:
                yield app, client
        finally:
            await web.stop()


async def test_metrics_count_the_turns_that_happened(console):
    app, client = console
    voice = await client.post("/api/chat", headers=CSRF,
                              files={"audio": ("q.ogg", SAMPLE.read_bytes(), "audio/ogg")})
    text = await client.post("/api/chat", headers=CSRF, data={"text": "Who are you?"})
    empty = await client.post("/api/chat", headers=CSRF, data={"text": "   "})
    long = await client.post("/api/chat", headers=CSRF, data={"text": "a" * 2500})
    assert (voice.status_code, text.status_code, empty.status_code, long.status_code) == \
        (200, 200, 400, 400), (voice.text, text.text)

    scrape = await client.get("/metrics")  # no admin token
    assert scrape.status_code == 200
    assert scrape.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = parse(scrape.text)

    assert value(samples, "chatman_replies_total", platform="web") == 2
    assert value(samples, "chatman_errors_total", kind="input.empty") == 1
    assert value(samples, "chatman_errors_total", kind="text.too_long") == 1
    assert value(samples, "chatman_errors_total", kind="internal") is None
    # Each stage is observed once per answered turn that ran it: decode and ASR only for the
    # voice note; every turn here is voiced (the console asks for voice).
    counts = {stage: value(samples, "chatman_stage_seconds_count", stage=stage)
              for stage in ("decode", "asr", "prompt", "llm_first_token", "llm", "first_audio",
                            "tts", "encode", "total")}
    assert counts == {"decode": 1, "asr": 1, "prompt": 2, "llm_first_token": 2, "llm": 2,
                      "first_audio": 2, "tts": 2, "encode": 2, "total": 2}
    totals = [voice.json()["timings_ms"]["total"], text.json()["timings_ms"]["total"]]
    assert value(samples, "chatman_stage_seconds_sum", stage="total") == \
        pytest.approx(sum(totals) / 1000)
    assert value(samples, "chatman_stage_seconds_bucket", stage="total", le="+Inf") == 2
    assert value(samples, "chatman_turns_in_flight") == 0
    assert value(samples, "chatman_model_version_info", version=app.llm.version) == 1
    assert {value(samples, "chatman_training_jobs", state=s) for s in JobStatus} == {0}
    assert value(samples, "chatman_training_step_rate") == 0
    # Counts and names of stages, never what anybody said nor a secret.
    for private in (TOKEN, "Who are you", "hello there", "I am a fake"):
        assert private not in scrape.text

    app.jobs.enqueue("web:admin")
    again = parse((await client.get("/metrics")).text)
    assert value(again, "chatman_training_jobs", state="queued") == 1
    assert value(again, "chatman_replies_total", platform="web") == 2


async def test_a_failing_source_leaves_its_gauges_out_and_the_scrape_answers(console, monkeypatch):
    app, client = console

    def broken() -> dict[JobStatus, int]:
        raise RuntimeError(f"database down ({PASSWORD})")

    monkeypatch.setattr(app.jobs, "count_by_status", broken)
    await client.post("/api/chat", headers=CSRF, data={"text": "Hi"})
    scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    samples = parse(scrape.text)
    assert value(samples, "chatman_replies_total", platform="web") == 1
    assert not any(name.startswith("chatman_training") for name, _ in samples)
    assert value(samples, "chatman_turns_in_flight") == 0 and PASSWORD not in scrape.text


def test_training_jobs_inbox_and_step_rate_are_read_at_scrape_time(tmp_path):
    app = build(tmp_path)
    try:
        app.migrate()
        job, _ = app.jobs.enqueue("test:1")
        assert app.jobs.claim_next("test-replica") is not None
        app.jobs.update(job.id, progress={"stage": "training", "step": 3, "max_steps": 20,
                                          "step_s": 0.25})
        app.jobs.enqueue("test:2")
        app.metrics.sources.inbox_stats = lambda: InboxStats(depth=3, oldest_age_s=12.5)
        samples = parse(app.metrics.exposition().decode())
        assert value(samples, "chatman_training_jobs", state="running") == 1
        assert value(samples, "chatman_training_jobs", state="queued") == 1
        assert value(samples, "chatman_training_step_rate") == pytest.approx(4.0)
        assert value(samples, "chatman_inbox_depth") == 3
        assert value(samples, "chatman_inbox_oldest_age_seconds") == 12.5
        app.metrics.sources.inbox_stats = lambda: InboxStats(depth=0, oldest_age_s=None)
        assert value(parse(app.metrics.exposition().decode()),
                     "chatman_inbox_oldest_age_seconds") == 0
    finally:
        app.close()


def test_jobs_are_counted_by_status_on_each_database(database_url):
    from bot.infra.storage import migrate
    from bot.infra.storage.jobs import SqlJobQueue
    from bot.infra.storage.store import SqlStore, make_engine

    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine)
        store = SqlStore(engine)
        jobs, other = SqlJobQueue(store, "manman"), SqlJobQueue(store, "someone-else")
        assert jobs.count_by_status() == {}
        first, _ = jobs.enqueue("test:1")
        jobs.claim_next("test-replica")
        jobs.finish(first.id, JobStatus.FAILED, "broken")
        jobs.enqueue("test:2")
        other.enqueue("test:3")
        assert jobs.count_by_status() == {JobStatus.FAILED: 1, JobStatus.QUEUED: 1}
        store.ping()
    finally:
        engine.dispose()


def test_each_application_counts_in_its_own_registry():
    one, two = PrometheusMetrics(), PrometheusMetrics()
    one.turn_done("cli", Turn(transcript="q", language="en", reply="a", voice=None,
                              audio_duration_s=None, model_version="v1",
                              timings_ms={"total": 1500.0, "llm": 900.0, "unknown": 3.0}))
    one.turn_failed("cli", "busy.server")
    first, second = parse(one.exposition().decode()), parse(two.exposition().decode())
    assert value(first, "chatman_replies_total", platform="cli") == 1
    assert value(first, "chatman_stage_seconds_sum", stage="total") == 1.5
    assert value(first, "chatman_errors_total", kind="busy.server") == 1
    assert value(second, "chatman_replies_total", platform="cli") is None


async def test_health_and_readiness_follow_the_application(tmp_path, monkeypatch):
    app = build(tmp_path)
    health = HealthServer(app, port=0, host="127.0.0.1")
    await health.start()
    try:
        async with httpx.AsyncClient(base_url=health.url, timeout=30) as client:
            assert (await client.get("/healthz")).text == "ok"
            before = await client.get("/readyz")
            assert before.status_code == 503 and before.json()["reason"] == "application new"
            async with app.running(load_models=False):
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and ready.json() == {"status": "ready"}
                turn = await app.pipeline.handle(Incoming(
                    chat=ChatRef("cli", "c1"), user=UserRef("cli", "u1", "U"), text="Hello",
                    want_voice=False))
                assert turn.reply
                samples = parse((await client.get("/metrics")).text)
                assert value(samples, "chatman_replies_total", platform="cli") == 1

                def down() -> None:
                    raise ConnectionRefusedError(f"password {PASSWORD} refused")

                monkeypatch.setattr(app.store, "ping", down)
                broken = await client.get("/readyz")
                assert broken.status_code == 503
                assert broken.json()["reason"] == "database: ConnectionRefusedError"
                assert PASSWORD not in broken.text
            after = await client.get("/readyz")
            assert after.status_code == 503 and after.json()["reason"] == "application closed"
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await health.stop()


# --- logs ---------------------------------------------------------------------------------
@pytest.fixture
def log_output(monkeypatch) -> Iterator[Callable[..., io.StringIO]]:
    """configure_logging(level, secrets, fmt) writing to the buffer it returns; every logger
    restored after."""
    names = ["", *LIBRARY_LOGGERS]
    saved = {n: (lg.handlers[:], lg.filters[:], lg.level, lg.propagate)
             for n in names for lg in [logging.getLogger(n)]}
    monkeypatch.setattr(logs, "_masker", logs._masker)

    def configure(*args: Any, **kwargs: Any) -> io.StringIO:
        # Set in the test itself: pytest puts its own stderr back between setup and call.
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stderr", buffer)  # the stream the handler is built with
        configure_logging(*args, **kwargs)
        return buffer

    yield configure
    for name, (handlers, filters, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.filters[:] = handlers, filters
        logger.setLevel(level)
        logger.propagate = propagate


def test_json_logs_carry_the_turn_id_and_mask_secrets(log_output):
    output = log_output("INFO", [PASSWORD], fmt="json")
    log = logging.getLogger("chatman.test")
    with turn_scope("tg-12"):
        try:
            raise RuntimeError(f'connect "{PASSWORD}" failed')
        except RuntimeError:
            log.exception("login with %s failed", PASSWORD)
    log.info("between turns")

    inside, outside = [json.loads(line) for line in output.getvalue().splitlines()]
    assert inside["turn_id"] == "tg-12" and outside["turn_id"] is None
    assert (inside["level"], inside["logger"]) == ("ERROR", "chatman.test")
    assert inside["message"] == "login with *** failed"
    assert "Traceback (most recent call last)" in inside["exc_info"]
    assert 'RuntimeError: connect "***" failed' in inside["exc_info"]
    assert PASSWORD not in output.getvalue()


def test_text_logs_name_the_turn_only_inside_one(log_output):
    output = log_output("INFO", [PASSWORD])
    log = logging.getLogger("chatman.test")
    with turn_scope("web-7"):
        log.info("answering with %s", PASSWORD)
    log.info("idle")
    inside, outside = output.getvalue().splitlines()
    assert inside.endswith(" INFO chatman.test [turn web-7]: answering with ***")
    assert outside.endswith(" INFO chatman.test: idle")


async def test_one_turn_id_follows_a_voice_note_through_the_pipeline(tmp_path, log_output):
    output = log_output("INFO", fmt="json")
    app = build(tmp_path)
    async with app.running(load_models=False):
        note = Incoming(chat=ChatRef("cli", "c1"), user=UserRef("cli", "u1", "U"),
                        audio=SAMPLE.read_bytes(), message_id="m1")
        with turn_scope("telegram-41"):  # as the inbox worker sets it
            await app.pipeline.handle(note)
        await app.pipeline.handle(note)  # no id given: the pipeline makes one
        assert turn_id.get() is None
    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    turns = [line for line in lines if line["logger"] == "bot.services.pipeline"
             and line["message"].startswith("turn cli/c1")]
    assert len(turns) == 2
    assert turns[0]["turn_id"] == "telegram-41"
    assert turns[1]["turn_id"] not in (None, "telegram-41")


async def test_a_metrics_port_that_is_taken_stops_chatman_run_before_anything_starts(tmp_path):
    import socket

    from adapters.app import AppState
    from adapters.run import health_checks

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        app = build(tmp_path, metrics_port=taken.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            async with health_checks(app):
                pytest.fail("entered with the port taken")
    assert app.state is AppState.CLOSED
