"""Load benchmark: N concurrent voice notes through the web console's streaming API, for the
in-process and the engine backends side by side in one run, as JSON.

    python bench/load.py [--concurrency 1,4,8,16] [--backends transformers,openai]
                         [--base-url URL --served-model NAME]   # an engine already running

For each backend and each N, N different spoken questions are posted at once (fresh
conversations) to ``/api/chat/stream``; per reply it records the time to the first sentence's
audio and to the whole reply (the ``done`` event), then reports p50/p95 of both, replies per
minute, and busy refusals. The ``openai`` backend starts a real ``transformers serve
--continuous-batching`` on the starter persona's exported folder unless ``--base-url`` names an
engine (vLLM on a GPU: pass its URL and served model). Concurrency 1 asks six questions one
after another; its wall_s is their mean. Greedy decoding with the persona's speech
budget (so replies run to several sentences), the settings' models otherwise.

Goals (issue 15): for multi-sentence replies, first audio at most half the full-reply time;
with the engine on CPU, 8 concurrent chats finish within 3x the time of one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import ChatmanApp
from adapters.web.server import WebAdapter
from bot.core.config import Settings
from bot.core.types import ChatMessage, Role
from bot.infra.logs import configure_logging

QUESTIONS = [
    "Who are you, and what do you like to do?",
    "Tell me about the moon and why it changes shape.",
    "How should I start learning to cook at home?",
    "What makes a good article worth sharing?",
    "Why do people enjoy walking in the park?",
    "What is the best way to learn a new language?",
    "Tell me a little about the ocean.",
    "How do you stay focused when you write?",
    "What do you think about trains compared to planes?",
    "Give me some advice for a rainy weekend.",
    "Why is the sky blue during the day?",
    "What should I know before I buy a bicycle?",
    "How do bees make honey?",
    "What is your favourite kind of story?",
    "How can I sleep better at night?",
    "What makes a city pleasant to live in?",
]
CSRF = {"X-ChatMan": "1"}
#: Concurrency 1 is measured over this many questions asked one after another (wall_s: mean).
SEQUENTIAL = 6


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), 1)


@dataclass
class Reply:
    first_audio_ms: float | None
    full_ms: float
    sentences: int
    refused: str | None = None


async def ask(client: httpx.AsyncClient, clip: bytes, conversation: str) -> Reply:
    start = time.perf_counter()
    first: float | None = None
    sentences = 0
    files = {"audio": ("question.ogg", clip, "audio/ogg")}
    async with client.stream("POST", "/api/chat/stream", headers=CSRF, files=files,
                             data={"conversation_id": conversation}) as response:
        if response.status_code != 200:
            body = json.loads(await response.aread())
            return Reply(None, (time.perf_counter() - start) * 1000, 0, body.get("error"))
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "sentence":
                    sentences += 1
                    if first is None and data.get("audio"):
                        base64.b64decode(data["audio"])  # a real clip, not a promise of one
                        first = (time.perf_counter() - start) * 1000
                elif event == "error":
                    return Reply(None, (time.perf_counter() - start) * 1000, 0, data["error"])
                elif event == "done":
                    return Reply(first, (time.perf_counter() - start) * 1000, sentences)
    raise RuntimeError("the stream ended without a done event")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def transformers_serve() -> Any:
    """A real OpenAI-compatible engine on CPU: ``transformers serve --continuous-batching``,
    loading whichever exported folder a request names (as a version switch asks for it)."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", "--continuous-batching", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("transformers serve exited")
            time.sleep(0.5)  # polling a starting server: there is no signal to wait on
        else:
            raise RuntimeError("transformers serve did not start in 300 s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


async def llm_rounds(app: ChatmanApp) -> dict[str, Any]:
    """The model alone (no ASR, no TTS: those are CPU-bound per turn and do not batch): one
    reply, then eight at once, each a different question in a fresh conversation."""
    prompts = [app.llm.fit_history(app.pipeline.system_prompts[app.language], [],
                                   ChatMessage(Role.USER, q)) for q in QUESTIONS[:8]]

    async def reply(prompt: list[ChatMessage]) -> int:
        return (await asyncio.to_thread(app.llm.generate, prompt)).new_tokens

    start = time.perf_counter()
    one = [await reply(p) for p in prompts[:3]]
    single = (time.perf_counter() - start) / 3
    start = time.perf_counter()
    eight = await asyncio.gather(*(reply(p) for p in prompts))
    together = time.perf_counter() - start
    return {"one_s": round(single, 2), "eight_s": round(together, 2),
            "eight_over_one": round(together / single, 2),
            "tokens_one_mean": round(statistics.mean(one), 1),
            "tokens_eight_mean": round(statistics.mean(eight), 1)}


async def run_backend(base: Settings, backend: str, levels: list[int], clips: list[bytes],
                      tmp: Path, engine_url: str | None, served: str | None) -> dict[str, Any]:
    update: dict[str, Any] = {"database_url": None, "data_dir": tmp / backend, "web_port": 0,
                              "llm_temperature": 0.0, "llm_backend": backend,
                              "max_turns_in_flight": max(levels) * 2,
                              "chat_queue_limit": 5}
    if backend == "openai":
        update.update(llm_base_url=engine_url, llm_served_model=served)
    settings = Settings(_env_file=None, **{**base.model_dump(), **update})
    app = ChatmanApp.from_settings(settings)
    await app.start()
    web = WebAdapter(app)
    await web.start()
    rounds: list[dict[str, Any]] = []
    walls: dict[int, float] = {}
    try:
        async with httpx.AsyncClient(base_url=web.url, timeout=600) as client:
            await ask(client, clips[0], "warm-up-" + backend)  # first-request costs apart
            for n in levels:
                start = time.perf_counter()
                if n == 1:
                    # One at a time over several questions: the single-chat latency, and enough
                    # replies of several sentences to see how early the voice starts.
                    replies = [await ask(client, clip, f"{backend}-1-{i}")
                               for i, clip in enumerate(clips[:SEQUENTIAL])]
                    wall = walls[n] = (time.perf_counter() - start) / SEQUENTIAL
                else:
                    replies = list(await asyncio.gather(*(
                        ask(client, clips[i % len(clips)], f"{backend}-{n}-{i}")
                        for i in range(n))))
                    wall = walls[n] = time.perf_counter() - start
                ok = [r for r in replies if r.refused is None]
                firsts = [r.first_audio_ms for r in ok if r.first_audio_ms is not None]
                fulls = [r.full_ms for r in ok]
                multi = [r for r in ok if r.sentences > 1 and r.first_audio_ms is not None]
                rounds.append({
                    "concurrency": n,
                    "wall_s": round(wall, 2),
                    "replies_per_min": round(len(ok) / (wall * (SEQUENTIAL if n == 1 else 1))
                                             * 60, 1),
                    "refused": len(replies) - len(ok),
                    "first_audio_ms": {"p50": percentile(firsts, 0.5),
                                       "p95": percentile(firsts, 0.95)} if firsts else None,
                    "full_reply_ms": {"p50": percentile(fulls, 0.5),
                                      "p95": percentile(fulls, 0.95)} if fulls else None,
                    "sentences_mean": round(statistics.mean(r.sentences for r in ok), 2)
                    if ok else 0,
                    # Multi-sentence replies only: how early the voice starts.
                    "first_audio_over_full_p50": round(statistics.median(
                        r.first_audio_ms / r.full_ms for r in multi if r.first_audio_ms), 3)
                    if multi else None,
                })
        llm_only = await llm_rounds(app)
    finally:
        await web.stop()
        await app.stop()
        app.close()
    out: dict[str, Any] = {"backend": backend, "model": app.llm.version, "rounds": rounds,
                           "llm_only": llm_only}
    if 1 in walls and 8 in walls:
        out["wall_8_over_1"] = round(walls[8] / walls[1], 2)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--backends", default="transformers,openai")
    parser.add_argument("--base-url", help="a running engine (else transformers serve starts)")
    parser.add_argument("--served-model", help="the base model's name on that engine")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]

    base = Settings()
    configure_logging("WARNING", base.secret_values())
    tmp = Path(tempfile.mkdtemp(prefix="chatman-load-"))
    cache = base.resolved_model_cache_dir.resolve()
    base = base.model_copy(update={"model_cache_dir": cache})

    # The spoken questions, and the starter persona's exported folder for the engine.
    setup = ChatmanApp.from_settings(base.model_copy(update={"data_dir": tmp / "setup",
                                                             "database_url": None}))
    await setup.start(load_models=False)
    setup.tts.load()
    clips = [setup.codec.encode_voice_note(setup.tts.synthesize(q, "en")).data
             for q in QUESTIONS]
    served = setup.served
    await setup.stop()
    setup.close()

    results = []
    for backend in args.backends.split(","):
        if backend == "openai" and not args.base_url:
            with transformers_serve() as url:
                results.append(await run_backend(base, backend, levels, clips, tmp, url, None))
        else:
            results.append(await run_backend(base, backend, levels, clips, tmp, args.base_url,
                                             args.served_model))
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "persona_version": served.version,
        "backends": results,
        "peak_rss_mb": peak_rss_mb(),
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
