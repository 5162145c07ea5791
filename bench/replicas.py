"""Replicas benchmark: replies per minute and latency with 1, 2 and 3 `chatman run` replicas on
one PostgreSQL (the LLM engine shared), and what the durable inbox costs per turn, as JSON.

    CHATMAN_TEST_POSTGRES_URL=postgresql+psycopg://… python bench/replicas.py
        [--replicas 1,2,3] [--updates 60] [--chats 20] [--backend openai|transformers]
        [--base-url URL --served-model NAME]    # an engine already running (vLLM)

Each level starts N replicas (subprocesses) behind a round-robin proxy in front of the local
fake Telegram in webhook mode, on a fresh database, then sends ``--updates`` text questions over
``--chats`` private chats at once. Latency is from Telegram receiving a question to it receiving
the answer. With ``--backend openai`` (the default) every replica asks one shared engine — a
real ``transformers serve --continuous-batching`` started here on CPU unless ``--base-url`` is
given — so replicas add ASR/TTS/bookkeeping capacity, not LLM capacity; with
``transformers`` each replica runs its own model in process.

The inbox's cost: ``inbox_ops_ms`` times its own operations per message on PostgreSQL (put,
claim, the done-mark inside the turn's transaction, one recorded send) against storing the turn
directly; ``overhead_ms`` is, per answered question with one replica, the time from Telegram
sending it to receiving the answer minus the pipeline's own time for the turn (webhook hop,
waiting in the inbox, claim, bookkeeping): p50 of both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import peak_rss_mb, percentile, transformers_serve
from bot.core.types import ChatKind, ChatRef, Turn, UserRef
from bot.infra.storage import migrate
from bot.infra.storage.inbox import SqlInbox
from bot.infra.storage.models import Exchange, InboxMessage
from bot.infra.storage.store import SqlStore, make_engine
from tests.fakes import eventually
from tests.fakes.proxy import RoundRobinProxy
from tests.fakes.telegram_api import FakeTelegram, private_chat, user
from tests.replicas import WEBHOOK_SECRET, Replica, replica_env


def fresh_database(admin_url: str) -> tuple[str, Any]:
    name = f"chatman_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def run_level(n: int, args: argparse.Namespace, admin_url: str, engine_url: str | None,
                    work: Path) -> dict[str, Any]:
    url, drop = fresh_database(admin_url)
    fake = FakeTelegram(retry_backoff=0.05, retry_backoff_max=0.5)
    await fake.start()
    proxy = RoundRobinProxy()
    await proxy.start()
    llm = ({"CHATMAN_LLM_BACKEND": "openai", "CHATMAN_LLM_BASE_URL": engine_url}
           if engine_url else {})
    if args.served_model:
        llm["CHATMAN_LLM_SERVED_MODEL"] = args.served_model
    ports = [free_port() for _ in range(n)]
    replicas = []
    for i, port in enumerate(ports):
        proxy.add_backend(f"http://127.0.0.1:{port}")
        replicas.append(Replica(f"b{i}", replica_env(
            work / f"data{n}", url, fake, f"b{i}",
            TELEGRAM_WEBHOOK_URL=f"{proxy.url}/telegram/hook",
            TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET, TELEGRAM_WEBHOOK_LISTEN="127.0.0.1",
            TELEGRAM_WEBHOOK_PORT=str(port), CHATMAN_LLM_MAX_NEW_TOKENS="16", **llm), work))
    try:
        for r in replicas:  # together: migrations wait on each other's lock
            await r.start()
        for r, port in zip(replicas, ports, strict=True):
            await eventually(lambda p=port: port_open(p), 600,  # type: ignore[misc]
                             lambda r=r: r.log()[-2000:])  # type: ignore[misc]
        # One question answered first: the engine has loaded the persona's folder.
        warm = user(999, "Warm")
        await fake.send_text(private_chat(warm), warm, "Hello?")
        await eventually(lambda: fake.sent_to(warm["id"], "sendMessage"), 600,
                         lambda: "no answer yet; " + replicas[0].log()[-3000:])
        people = [user(5000 + i, f"U{i}") for i in range(args.chats)]
        asked: dict[int, float] = {}
        start = time.monotonic()
        for k in range(args.updates):
            p = people[k % args.chats]
            m = await fake.send_text(private_chat(p), p, QUESTIONS[k % len(QUESTIONS)])
            asked[m["message_id"]] = time.monotonic()

        def answers() -> dict[int, float]:
            return {s.reply_to: s.at for s in fake.sent
                    if s.method == "sendMessage" and s.reply_to in asked}

        await fake.wait_for(lambda: len(answers()) >= args.updates, timeout=1800)
        got = answers()
        latencies = [(got[m] - t) * 1000 for m, t in asked.items()]
        wall = max(got.values()) - start
        overhead = await asyncio.to_thread(_overhead_ms, url, asked, got)
    finally:
        for r in replicas:
            await r.stop()
        await proxy.stop()
        await fake.stop()
        drop()
    return {"replicas": n, "updates": args.updates, "chats": args.chats,
            "wall_s": round(wall, 1), "replies_per_min": round(args.updates / wall * 60, 1),
            "latency_ms": {"p50": round(percentile(latencies, 0.5)),
                           "p95": round(percentile(latencies, 0.95))},
            "overhead_ms_p50": round(percentile(overhead, 0.5), 1) if overhead else None}


def _overhead_ms(url: str, asked: dict[int, float], got: dict[int, float]) -> list[float]:
    """Per answer: Telegram-to-Telegram time minus the pipeline's own total for the turn."""
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(Exchange.incoming_message_id, Exchange.timings_ms)).all()
    finally:
        engine.dispose()
    out = []
    for message_id, timings in rows:
        mid = int(message_id) if message_id and message_id.isdigit() else None
        if mid in asked and mid in got and timings and "total" in timings:
            out.append((got[mid] - asked[mid]) * 1000 - float(timings["total"]))
    return out


def inbox_ops_ms(admin_url: str, rounds: int = 200) -> dict[str, float]:
    """The inbox's own database work per message, against storing the turn without it."""
    url, drop = fresh_database(admin_url)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        store = SqlStore(engine)
        inbox = SqlInbox(store)
        chat, who = ChatRef("telegram", "1", ChatKind.PRIVATE), UserRef("telegram", "1", "U")
        turn = Turn(transcript="q?", language="en", reply="a.", voice=None,
                    audio_duration_s=None, model_version="m", persona="p")
        direct, through = [], []
        for k in range(rounds):
            t = time.perf_counter()
            store.record_turn(chat, who, str(k), turn, "text", "1")
            direct.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            inbox.put("telegram", str(k), "1", {"update_id": k}, 5)
            item = inbox.claim("bench", 30, ("telegram",))
            assert item is not None
            inbox.record_sent(item.id, "text:0", "1")
            store.record_turn(chat, who, str(k), turn, "text", "1", item.receipt)
            through.append((time.perf_counter() - t) * 1000)
        with engine.connect() as c:
            assert c.scalar(select(InboxMessage.id).where(InboxMessage.state != "done")) is None
    finally:
        engine.dispose()
        drop()
    return {"store_turn_p50": round(percentile(direct, 0.5), 2),
            "inbox_and_store_turn_p50": round(percentile(through, 0.5), 2),
            "inbox_cost_p50": round(percentile(through, 0.5) - percentile(direct, 0.5), 2)}


QUESTIONS = ["What is the capital of Japan?", "How many legs does a spider have?",
             "What colour is the sky on a clear day?", "Who wrote Romeo and Juliet?",
             "What is two plus two?", "What is the largest ocean?"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--backend", choices=("openai", "transformers"), default="openai")
    parser.add_argument("--base-url", help="a running engine (else transformers serve starts)")
    parser.add_argument("--served-model")
    args = parser.parse_args()
    admin_url = os.environ.get("CHATMAN_TEST_POSTGRES_URL")
    if not admin_url:
        sys.exit("set CHATMAN_TEST_POSTGRES_URL (a PostgreSQL role that may create databases)")
    levels = [int(x) for x in args.replicas.split(",")]
    ops = await asyncio.to_thread(inbox_ops_ms, admin_url)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.backend == "openai" and not args.base_url:
            with transformers_serve() as url:
                results = [await run_level(n, args, admin_url, url, work) for n in levels]
        else:
            engine = args.base_url if args.backend == "openai" else None
            results = [await run_level(n, args, admin_url, engine, work) for n in levels]
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "backend": args.backend, "levels": results, "inbox_ops_ms": ops,
        "peak_rss_mb_bench_process": peak_rss_mb(),
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
