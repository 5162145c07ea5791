"""Pipeline benchmark: per-stage time, real-time factors, tokens/s, peak RSS, as JSON.

    python bench/pipeline.py [--max-new-tokens N] [--repeat N]

Spoken questions of ~2-15 s are synthesised with the configured TTS, then each goes through
the full pipeline; afterwards the same stages run standalone on the same inputs, so pipeline
overhead shows as a ratio. Uses the settings from the environment / .env (models, devices)
with a throw-away database, greedy decoding, and the model cache under CHATMAN_DATA_DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.core.types import ChatMessage, ChatRef, Incoming, Role, UserRef
from bot.infra.logs import configure_logging

QUESTIONS = [
    "Hello there! Who are you, and what do you do?",
    "What is the capital of Japan, and what is it famous for?",
    "I want to start writing a blog about technology. How should I choose my first topics, "
    "and how often should I publish?",
    "Yesterday I went to the market and bought apples, bread and cheese. Then I met an old "
    "friend and we talked about our school days for an hour. Do you think it is worth keeping "
    "in touch with old friends, even when life gets busy and we live in different cities?",
]


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


R = TypeVar("R")
Ts = TypeVarTuple("Ts")


def timed(fn: Callable[[*Ts], R], *args: *Ts) -> tuple[R, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    base = Settings()
    configure_logging("WARNING", base.secret_values())
    tmp = Path(tempfile.mkdtemp(prefix="chatman-bench-"))
    settings = base.model_copy(update={
        "database_url": None,
        "data_dir": tmp,
        "model_cache_dir": base.resolved_model_cache_dir.resolve(),
        "llm_temperature": 0.0,
        "llm_max_new_tokens": args.max_new_tokens,
    })
    app = ChatmanApp.from_settings(settings)
    load_start = time.perf_counter()
    await app.start()
    load_ms = (time.perf_counter() - load_start) * 1000

    user = UserRef("bench", "bench", "Bench")
    clips = [app.codec.encode_voice_note(app.tts.synthesize(q, app.language)).data
             for q in QUESTIONS]
    runs = []
    for rep in range(args.repeat):
        for i, (question, clip) in enumerate(zip(QUESTIONS, clips)):
            chat = ChatRef("bench", f"r{rep}-q{i}")  # fresh chat: no history effects
            turn = await app.pipeline.handle(Incoming(chat=chat, user=user, audio=clip))
            t = turn.timings_ms
            stand: dict[str, float] = {}
            pcm, stand["decode"] = timed(app.codec.decode, clip)
            _, stand["asr"] = timed(app.asr.transcribe, pcm)
            prompt = app.llm.fit_history(
                app.pipeline.system_prompts[turn.language], [], ChatMessage(Role.USER, turn.transcript)
            )
            reply, stand["llm"] = timed(app.llm.generate, prompt)
            speech, stand["tts"] = timed(app.tts.synthesize, turn.reply, turn.language)
            _, stand["encode"] = timed(app.codec.encode_voice_note, speech)
            stand["sum"] = sum(stand.values())
            # A spoken reply to a spoken question: both durations are known.
            assert turn.voice is not None and turn.audio_duration_s is not None
            reply_s = turn.voice.duration_s
            runs.append({
                "question": question,
                "question_audio_s": round(turn.audio_duration_s, 2),
                "transcript": turn.transcript,
                "reply_audio_s": reply_s,
                "reply_tokens": turn.reply_tokens,
                "pipeline_ms": t,
                "standalone_ms": {k: round(v, 1) for k, v in stand.items()},
                "asr_rtf": round(t["asr"] / 1000 / turn.audio_duration_s, 3),
                "tts_rtf": round(t["tts"] / 1000 / reply_s, 3),
                "llm_tokens_per_s": round(turn.reply_tokens / (t["llm"] / 1000), 1),
                "pipeline_over_standalone": round(t["total"] / stand["sum"], 3),
            })
    app.close()
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "models": {"asr": app.asr.name, "llm": app.llm.version, "tts": app.tts.name},
        "load_ms": round(load_ms, 1),
        "runs": runs,
        "peak_rss_mb": peak_rss_mb(),
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
