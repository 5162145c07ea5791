"""The whole hostile corpus through every way audio comes in: the web API, `chatman ask`, and
the pipeline that the Telegram and Discord adapters hand their downloads to.

Each refused file gets a 4xx (web) or exit code 2 with one line (CLI) or a user-facing error
(pipeline); nothing is stored, no temporary file is left, and the server keeps answering.
Time is bounded by pytest-timeout and the codec's own CPU budget, not by wall-clock asserts.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from typing import TYPE_CHECKING

import httpx
import pytest
from typer.testing import CliRunner

from adapters.app import ChatmanApp
from bot.core.errors import UserFacingError
from bot.core.types import ChatRef, Incoming, UserRef
from bot.infra.storage.models import Pair
from tests.conftest import MODEL_CACHE, start_web, stop_web
from tests.hostile_corpus import corpus

if TYPE_CHECKING:
    from bot.infra.audio.isolated import IsolatedDecoder

REFUSED = [f for f in corpus() if f.expect == "refused"]
EITHER = [f for f in corpus() if f.expect == "either"]
CSRF = {"X-ChatMan": "1"}
TOKEN = "hostile-admin-token"


class Console(httpx.AsyncClient):
    """A client of the web console that also holds the app behind it."""

    app: ChatmanApp


def worker_pids(decoder: IsolatedDecoder) -> list[int]:
    """The process ids of the decoder's running pool."""
    pool = decoder._pool
    assert pool is not None, "the decoder has no pool running"
    pids = []
    for process in pool._processes.values():
        assert process.pid is not None, "a worker that never started"
        pids.append(process.pid)
    return pids


def stored(app: ChatmanApp) -> int:
    with app.store.session() as s:
        return len(app.store.exchanges()) + s.query(Pair).count()


@pytest.fixture
async def web(tmp_path, asr, llm, tts):
    app, adapter = await start_web(tmp_path, asr, llm, tts, max_new_tokens=8,
                                   web_admin_token=TOKEN)
    async with Console(base_url=adapter.url, timeout=60) as client:
        client.app = app
        yield client
    await stop_web(app, adapter)


@pytest.mark.timeout(300)
async def test_the_web_api_refuses_every_hostile_file_and_stays_up(web, tmp_path, monkeypatch):
    # A temp folder of our own (uploads spool there; decoder workers start with TMPDIR set):
    # nothing else on the machine writes into it.
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))
    for f in REFUSED:
        response = await web.post("/api/chat", headers=CSRF,
                                  files={"audio": (f.filename, f.data, "application/octet-stream")})
        assert 400 <= response.status_code < 500, (f.name, response.status_code, response.text)
        assert set(response.json()) <= {"error", "code", "params"} and response.json()["error"], \
            f.name
    assert stored(web.app) == 0
    for f in EITHER:  # damaged but maybe partly decodable: an answer or a refusal, never a 500
        response = await web.post("/api/chat", headers=CSRF,
                                  files={"audio": (f.filename, f.data, "application/octet-stream")})
        assert response.status_code == 200 or 400 <= response.status_code < 500, (
            f.name, response.status_code, response.text)
    assert list(private.iterdir()) == []
    models = await web.get("/api/admin/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert models.status_code == 200


@pytest.mark.timeout(300)
async def test_the_adapters_decode_path_refuses_every_hostile_file(app):
    """Telegram and Discord download the bytes and hand them to the pipeline, as here."""
    chat, user = ChatRef("telegram", "4242"), UserRef("telegram", "4242", "Mallory")
    for f in REFUSED:
        with pytest.raises(UserFacingError) as refused:
            await app.pipeline.handle(Incoming(chat=chat, user=user, audio=f.data,
                                               message_id=f.name))
        assert refused.value.user_message, f.name
    assert stored(app) == 0


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`chatman` in this process (one interpreter start, not a hundred), logging restored."""
    from adapters.cli import app as cli_app

    monkeypatch.setenv("CHATMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CHATMAN_MODEL_CACHE_DIR", str(MODEL_CACHE))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli_app, list(args))
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.timeout(300)
def test_chatman_ask_refuses_every_hostile_file_with_one_line(cli, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    for f in REFUSED:
        path = folder / f"{f.name}-{f.filename}"
        path.write_bytes(f.data)
        result = cli("ask", "--audio", str(path))
        assert result.exit_code == 2, (f.name, result.exit_code, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        # One error line for the user (and the log line that records the refusal).
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], (f.name, result.output)
        assert len(lines) <= 2 and "Traceback" not in result.output, (f.name, result.output)
    engine_db = tmp_path / "data" / "chatman.db"
    if engine_db.exists():
        from sqlalchemy import create_engine, text

        with create_engine(f"sqlite:///{engine_db}").connect() as conn:
            tables = {r[0] for r in conn.execute(text(
                "SELECT name FROM sqlite_master WHERE type='table'"))}
            if "exchanges" in tables:
                assert conn.execute(text("SELECT count(*) FROM exchanges")).scalar() == 0


@pytest.mark.timeout(120)
async def test_a_decoder_process_that_dies_costs_one_upload_not_the_bot(codec, speak):
    import signal

    import psutil

    from bot.core.errors import UnsupportedAudio
    from bot.infra.audio.isolated import IsolatedDecoder
    from tests.fakes import eventually
    from tests.hostile_corpus import by_name

    decoder = IsolatedDecoder(codec)
    try:
        await decoder.warm_up()
        workers = [psutil.Process(pid) for pid in worker_pids(decoder)]
        busy_before = sum(w.cpu_times().user for w in workers)
        # The slowest file of the corpus: a worker is decoding it when it dies.
        pending = asyncio.ensure_future(decoder.decode(by_name()["flac-384khz-8ch-110s"].data))
        # The signal: a worker has spent CPU on it (or, wrongly, it is already over).
        await eventually(lambda: pending.done()
                         or sum(w.cpu_times().user for w in workers) >= busy_before + 0.1,
                         30, lambda: "no worker started decoding")
        assert not pending.done(), "the decode finished before it could be interrupted"
        for worker in workers:  # as a crash inside FFmpeg would
            worker.send_signal(signal.SIGKILL)
        with pytest.raises(UnsupportedAudio):
            await pending
        killed = {w.pid for w in workers}
        again = await decoder.decode(speak("Hello there."))
        assert again.sample_rate == 16_000 and again.duration_s > 0.3
        assert not killed & set(worker_pids(decoder))
    finally:
        decoder.close()
