"""Hostile-upload benchmark: what each file of tests/hostile_corpus.py costs to decode, and
what a burst of them does to everyone else's latency on the web console, as JSON.

    python bench/hostile.py [--decode-only] [--repeat 3] [--child-timeout 30]

Decode section: each corpus entry is decoded in a fresh child process (this interpreter, the
committed codec, max 120 s / 20 MB like the bot's defaults), ``--repeat`` times; it reports
the worst wall and CPU time and the child's peak RSS (and its RSS before decoding, so the
decoder's own share shows), worst first. A child that runs past ``--child-timeout`` is killed
and reported as such.

Web section: the app with the real starter models and the web adapter (as the tests' ``web``
fixture builds them) on a free loopback port; the latency of a text chat and of an admin
request, idle and then while 8 uploads of the SDP and bomb entries run concurrently (sent from
a separate process, as a remote attacker would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.hostile_corpus import HostileFile

#: A JSON object of the report, printed as it is.
Json = dict[str, Any]

# Starter models ship in packages: any hub access is a bug, so make it fail. (The model
# libraries are imported later, in the web section.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MAX_SECONDS = 120
MAX_BYTES = 20 * 2**20
# The tests' model cache: the starter LLM's one-off de-quantisation is already paid there.
MODEL_CACHE = Path(os.environ.get("CHATMAN_TEST_MODEL_CACHE", REPO / ".cache" / "test-models"))
ADMIN_TOKEN = "bench-admin-token-0123456789"
CSRF = {"X-ChatMan": "1"}
ATTACKERS = 8


# --- decode section ---------------------------------------------------------------------

def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process. Not ``ru_maxrss``: a spawned child's
    includes the parent's peak from before the exec (the forked copy of it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(repeat: int) -> None:
    """In the fresh process: decode stdin ``repeat`` times, print one JSON line."""
    data = sys.stdin.buffer.read()
    # Relative paths in scripts and playlists then name real files of the checkout.
    os.chdir(REPO)
    from bot.core.errors import UserFacingError
    from bot.infra.audio.codec import PyAvCodec

    codec = PyAvCodec(max_seconds=MAX_SECONDS, max_bytes=MAX_BYTES)
    before = memory_mb("VmRSS")
    walls, cpus, outcome, detail = [], [], "", ""
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            pcm = codec.decode(data)
            outcome, detail = "decodes", f"{pcm.duration_s:.2f} s of audio"
        except UserFacingError as err:
            outcome, detail = "refused", f"{type(err).__name__}: {err}"
        except Exception as err:
            outcome, detail = "error", f"{type(err).__name__}: {err}"
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    peak = memory_mb("VmHWM")
    print(json.dumps({"outcome": outcome, "detail": detail[:160], "wall_s": max(walls),
                      "cpu_s": max(cpus), "rss_before_mb": before, "peak_rss_mb": peak,
                      "decode_rss_mb": round(peak - before, 1)}))


def measure(entry: HostileFile, repeat: int, timeout: float) -> Json:
    row: Json = {"name": entry.name, "expect": entry.expect, "bytes": len(entry.data)}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", "--repeat", str(repeat)],
                              input=entry.data, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        row.update(outcome="timeout", detail=f"killed after {timeout:.0f} s",
                   wall_s=timeout, cpu_s=None, rss_before_mb=None, peak_rss_mb=None,
                   decode_rss_mb=None)
    else:
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            row.update(outcome="crash", detail=f"exit {done.returncode}: {tail}",
                       wall_s=None, cpu_s=None, rss_before_mb=None, peak_rss_mb=None,
                       decode_rss_mb=None)
        else:
            row.update(json.loads(lines[-1]))
    for key in ("wall_s", "cpu_s"):
        if row.get(key) is not None:
            row[key] = round(row[key], 4)
    row["as_expected"] = row["outcome"] == row["expect"] or (
        row["expect"] == "either" and row["outcome"] in ("decodes", "refused"))
    return row


def decode_section(entries: list[HostileFile], repeat: int, timeout: float) -> Json:
    rows = [measure(e, repeat, timeout) for e in entries]
    rows.sort(key=lambda r: -(r["wall_s"] or 0))
    known = [r for r in rows if r["wall_s"] is not None]
    rss = [r["peak_rss_mb"] for r in rows if r["peak_rss_mb"] is not None]
    base = [r["rss_before_mb"] for r in rows if r["rss_before_mb"] is not None]
    return {
        "repeat": repeat,
        "entries": rows,
        "totals": {
            "entries": len(rows),
            "sum_worst_wall_s": round(sum(r["wall_s"] for r in known), 3),
            "max_wall_s": max((r["wall_s"] for r in known), default=None),
            "max_cpu_s": max((r["cpu_s"] for r in known if r["cpu_s"] is not None),
                             default=None),
            "max_peak_rss_mb": max(rss, default=None),
            "max_decode_rss_mb": max((r["decode_rss_mb"] for r in rows
                                      if r["decode_rss_mb"] is not None), default=None),
            "median_rss_before_mb": statistics.median(base) if base else None,
            "outcomes": {k: sum(r["outcome"] == k for r in rows)
                         for k in ("decodes", "refused", "error", "timeout", "crash")},
            "not_as_expected": [r["name"] for r in rows if not r["as_expected"]],
        },
    }


# --- web section ------------------------------------------------------------------------

def latency_stats(samples: list[tuple[float, int]]) -> Json:
    ok = [ms for ms, status in samples if status == 200]
    statuses: dict[str, int] = {}
    for _, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"n": len(samples), "statuses": statuses,
            "p50_ms": round(statistics.median(ok), 1) if ok else None,
            "max_ms": round(max(ok), 1) if ok else None}


async def timed_request(client, method: str, path: str, **kwargs) -> tuple[float, int]:
    start = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    return (time.perf_counter() - start) * 1000, response.status_code


async def probe(client, rounds: int, min_seconds: float = 0.0) -> Json:
    """Alternate a text chat and an admin read, one at a time, as a single user would;
    ``rounds`` of them and for at least ``min_seconds`` (refusals come back at once)."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    chat: list[tuple[float, int]] = []
    models: list[tuple[float, int]] = []
    start = time.perf_counter()
    while len(chat) < rounds or time.perf_counter() - start < min_seconds:
        chat.append(await timed_request(client, "POST", "/api/chat", headers=CSRF,
                                        data={"text": "Hello"}))
        models.append(await timed_request(client, "GET", "/api/admin/models", headers=admin))
        if chat[-1][1] != 200:
            await asyncio.sleep(0.2)  # a person retries after a moment, not in a tight loop
    return {"chat": latency_stats(chat), "admin_models": latency_stats(models)}


async def attacker(client, files: list[HostileFile], first: int, stop: asyncio.Event,
                   log: list[tuple[float, int]]) -> None:
    import httpx

    i = first
    while not stop.is_set():
        entry = files[i % len(files)]
        i += 1
        upload = {"audio": (entry.filename, entry.data, "application/octet-stream")}
        start = time.perf_counter()
        try:
            log.append(await timed_request(client, "POST", "/api/chat", headers=CSRF,
                                           files=upload))
        except httpx.TransportError:  # refused and closed while the upload was still going
            log.append(((time.perf_counter() - start) * 1000, 0))
        if log[-1][1] in (0, 429):
            await asyncio.sleep(0.05)  # refused at once: a real client pauses before retrying


def hostile_entries(entries: list[HostileFile]) -> list[HostileFile]:
    return [e for e in entries if e.name.startswith("sdp-") or "bomb" in e.name]


async def attack(url: str, concurrency: int, seconds: float) -> Json:
    """The attackers' side, in a process of its own (a remote attacker costs the server only
    its requests, not the client's own CPU and event loop)."""
    import httpx

    from tests.hostile_corpus import corpus

    files = hostile_entries(corpus())
    uploads: list[tuple[float, int]] = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(attacker(client, files, i, stop, uploads))
                 for i in range(concurrency)]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return latency_stats(uploads) | {
        "p50_any_status_ms": round(statistics.median(ms for ms, _ in uploads), 1)
        if uploads else None,
        # On a small machine the attacking client's own CPU competes with the server's.
        "attacker_cpu_s": round(time.process_time(), 1), "seconds": seconds}


def ratio(loaded: Json, idle: Json, key: str) -> float | None:
    if loaded[key] is None or not idle[key]:
        return None
    value: float = loaded[key] / idle[key]
    return round(value, 2)


async def loaded_phase(url: str, user, attackers: int, rounds: int, idle: Json) -> Json:
    """The user's probe while ``attackers`` hostile uploads run concurrently (SDP and bomb
    entries, round-robin), sent from another process."""
    seconds = 20.0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--attack", url, "--concurrency", str(attackers),
        "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE, cwd=REPO)
    await asyncio.sleep(3.0)  # the attacker process imports and starts uploading
    cpu, wall = time.process_time(), time.perf_counter()
    loaded = await probe(user, rounds, min_seconds=10.0)
    server_cpu = (time.process_time() - cpu) / (time.perf_counter() - wall)
    out, _ = await proc.communicate()
    return {
        "concurrent_uploads": attackers,
        "bot_process_cpu_cores_busy": round(server_cpu, 2),
        "uploads": json.loads(out),
        "probe": loaded,
        "ratio_loaded_over_idle": {
            name: {"p50": ratio(loaded[name], idle[name], "p50_ms"),
                   "max": ratio(loaded[name], idle[name], "max_ms")}
            for name in ("chat", "admin_models")},
    }


async def web_section(entries: list[HostileFile], rounds: int) -> Json:
    import httpx

    from adapters.app import ChatmanApp
    from adapters.web.server import WebAdapter
    from bot.core.config import Settings
    from bot.infra.logs import configure_logging

    tmp = Path(tempfile.mkdtemp(prefix="chatman-hostile-"))
    settings = Settings(_env_file=None, data_dir=tmp / "data", web_port=0,
                        web_admin_token=ADMIN_TOKEN, model_cache_dir=MODEL_CACHE,
                        llm_temperature=0.0, llm_max_new_tokens=16)
    configure_logging("ERROR", settings.secret_values())  # each refusal logs otherwise
    # from_settings builds the real starter models with adapters.app.build_asr/build_llm/build_tts.
    app = ChatmanApp.from_settings(settings)
    load = time.perf_counter()
    await app.start()
    load_s = time.perf_counter() - load
    adapter = WebAdapter(app)
    with contextlib.redirect_stdout(sys.stderr):  # its banner would break the JSON on stdout
        await adapter.start()
    hostile = hostile_entries(entries)
    try:
        async with httpx.AsyncClient(base_url=adapter.url, timeout=120) as user:
            await probe(user, 1)  # warm-up: first generation, first connection
            cpu, wall = time.process_time(), time.perf_counter()
            idle = await probe(user, rounds)
            idle["bot_process_cpu_cores_busy"] = round(
                (time.process_time() - cpu) / (time.perf_counter() - wall), 2)
            loaded = await loaded_phase(adapter.url, user, ATTACKERS, rounds, idle)
    finally:
        await adapter.stop()
        with contextlib.suppress(Exception):
            await app.stop()
        app.close()
    return {
        "load_models_s": round(load_s, 1),
        "max_turns_in_flight": settings.max_turns_in_flight,
        "hostile_files": [e.name for e in hostile],
        "idle": idle,
        "loaded": loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decode-only", action="store_true", help="skip the web section")
    parser.add_argument("--repeat", type=int, default=3, help="decodes per entry (worst kept)")
    parser.add_argument("--child-timeout", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=5, help="probe requests per phase")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attack", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=ATTACKERS, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.repeat)
        return
    if args.attack:
        print(json.dumps(asyncio.run(attack(args.attack, args.concurrency, args.seconds))))
        return

    from tests.hostile_corpus import corpus

    start = time.perf_counter()
    entries = corpus()
    generate_s = time.perf_counter() - start
    report = {
        "machine": {"processor": platform.processor(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "corpus": {"entries": len(entries), "generate_s": round(generate_s, 2),
                   "bytes": sum(len(e.data) for e in entries)},
        "decode": decode_section(entries, args.repeat, args.child_timeout),
    }
    if not args.decode_only:
        report["web"] = asyncio.run(web_section(entries, args.rounds))
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
