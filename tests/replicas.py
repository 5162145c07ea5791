"""`chatman run` as subprocesses (replicas), for the tests and the benchmark of running several
on one database: their environment, start, SIGKILL, and a look at the inbox they share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.infra.storage.models import InboxMessage, InboxSent
from bot.infra.storage.store import make_engine
from tests.conftest import MODEL_CACHE
from tests.fakes.telegram_api import TOKEN, FakeTelegram

REPO = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "replica-test-webhook-secret"


def replica_env(data_dir: Path, database_url: str, fake: FakeTelegram, name: str,
                **settings: str) -> dict[str, str]:
    """A replica's environment: the starter models with short greedy answers, text answered
    with text, no web console, no training (workers do that)."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CHATMAN_", "TELEGRAM_", "DISCORD_"))}
    environ.update(
        CHATMAN_DATA_DIR=str(data_dir), CHATMAN_DATABASE_URL=database_url,
        CHATMAN_MODEL_CACHE_DIR=str(MODEL_CACHE), CHATMAN_LLM_TEMPERATURE="0",
        CHATMAN_LLM_MAX_NEW_TOKENS="6", CHATMAN_HISTORY_MAX_MESSAGES="0",
        CHATMAN_WEB_ENABLED="false",
        CHATMAN_RUN_TRAINING="false", CHATMAN_REPLICA_ID=name,
        TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_FILE_BASE_URL=fake.base_file_url, HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO))
    environ.update(settings)
    return environ


@dataclass
class Replica:
    name: str
    env: dict[str, str]
    cwd: Path
    process: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adapters", "run", cwd=self.cwd, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            self.output.append(line.decode(errors="replace"))

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no clean-up of any kind
        await self.process.wait()
        if self._reader is not None:
            # Its decoder processes hold the pipe until they notice (a second or so).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 10)

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, and its exit code (killed if it doesn't stop in ``timeout``)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            await self._reader
        assert self.process.returncode is not None
        return self.process.returncode

    def log(self) -> str:
        return "".join(self.output)


@dataclass(frozen=True)
class Held:
    """A message a replica holds a claim on, and what was sent in answer to it."""

    inbox_id: int
    message_id: int
    recorded_sends: int


class InboxView:
    """The shared inbox, read directly (as an operator would with psql)."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)

    def close(self) -> None:
        self.engine.dispose()

    def held_by(self, owner: str) -> list[Held]:
        with self.engine.connect() as c:
            rows = c.execute(select(InboxMessage.id, InboxMessage.payload)
                             .where(InboxMessage.owner == owner,
                                    InboxMessage.state == "claimed")).all()
            sends = c.execute(select(InboxSent.inbox_id)).scalars().all()
        return [Held(r.id, _message_id(r.payload), sends.count(r.id)) for r in rows]

    def states(self) -> dict[str, int]:
        with self.engine.connect() as c:
            rows = c.execute(select(InboxMessage.state)).scalars().all()
        return {s: rows.count(s) for s in set(rows)}

    def owners_of(self, inbox_ids: list[int]) -> dict[int, tuple[str | None, str]]:
        with self.engine.connect() as c:
            rows = c.execute(select(InboxMessage.id, InboxMessage.owner, InboxMessage.state)
                             .where(InboxMessage.id.in_(inbox_ids))).all()
        return {r.id: (r.owner, r.state) for r in rows}

    def received_to_done_ms(self) -> list[float]:
        """Per answered message, from being stored to being done (the inbox's whole wait)."""
        with self.engine.connect() as c:
            rows = c.execute(select(InboxMessage.received_at, InboxMessage.finished_at)
                             .where(InboxMessage.state == "done")).all()
        return [(f - r).total_seconds() * 1000 for r, f in rows if f is not None]


def _message_id(payload: Mapping[str, Any]) -> int:
    return int(payload["message"]["message_id"])


def sends_for(fake: FakeTelegram, message_id: int) -> int:
    return sum(1 for s in fake.sent if s.method in ("sendMessage", "sendVoice")
               and s.reply_to == message_id)


@contextmanager
def paused(replica: Replica) -> Iterator[None]:
    """Frozen for the block (SIGSTOP … SIGCONT)."""
    replica.pause()
    try:
        yield
    finally:
        replica.resume()


def kill_point_is_clean(view: InboxView, fake: FakeTelegram, owner: str) -> bool:
    """Whether the (paused) replica holds claims, and every answer it sent for them is
    recorded: killing it now tests a takeover, not the one moment no platform lets anybody
    close (a send Telegram took whose id the replica has not written down yet)."""
    held = view.held_by(owner)
    return bool(held) and all(sends_for(fake, h.message_id) == h.recorded_sends for h in held)


def database_path(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'chatman.db').resolve()}"
