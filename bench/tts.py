"""TTS benchmark: real-time factor and peak memory of Piper and ChatTTS on the same texts, as JSON.

    python bench/tts.py [--chattts-path DIR | --random-chattts DIR] [--max-new-tokens N]

Piper uses the starter voice. ChatTTS runs on real weights from --chattts-path (ChatTTS's asset
layout), or on random weights of the real architecture built into --random-chattts (what the
tests use: it measures the architecture's cost, not the voice; random weights never stop on
their own, so --max-new-tokens bounds each sentence). Each backend runs in its own process so
peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from bot.core.ports import SpeechSynthesizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXTS = {
    "en": ["Hello! I'm Manman.",
           "I curate good articles and republish them on my WeChat account; on 2024-03-15 I "
           "had 3,000 readers, up 45% from last year.",
           "ChatMan is my voice chat bot. Send it a voice note and it answers in my voice, "
           "usually within a few seconds, in private chats and in groups."],
    "zh": ["你好，我是慢慢。",
           "我在公众号上搬运优质文章，2024-03-15 那天有3,000位读者，比去年多了45%。",
           "ChatMan 是我开发的语音聊天机器人。给它发一条语音，它会用我的声音回答。"],
}


class TextRow(TypedDict):
    language: str
    chars: int
    audio_s: float
    synth_s: float
    rtf: float


def run_one(backend: str, path: str | None, max_new_tokens: int) -> dict[str, object]:
    from bot.infra.tts.chattts_tts import ChatTTSSpeech, ChatTTSVoice
    from bot.infra.tts.piper_tts import PiperTTS

    tts: SpeechSynthesizer
    if backend == "piper":
        tts = PiperTTS()
    else:
        tts = ChatTTSSpeech(path, ChatTTSVoice(max_new_tokens=max_new_tokens),
                            speaker_dirs=[Path(path or ".") / "bench-speaker"])
    started = time.perf_counter()
    tts.load()
    load_s = time.perf_counter() - started
    rows: list[TextRow] = []
    for language, texts in TEXTS.items():
        if backend == "piper" and language == "zh":
            continue  # the starter voice is English
        for text in texts:
            started = time.perf_counter()
            pcm = tts.synthesize(text, language)
            seconds = time.perf_counter() - started
            rows.append({"language": language, "chars": len(text),
                         "audio_s": round(pcm.duration_s, 2), "synth_s": round(seconds, 2),
                         "rtf": round(seconds / max(pcm.duration_s, 1e-6), 3)})
    return {"backend": backend, "load_s": round(load_s, 2), "texts": rows,
            "rtf_mean": round(sum(r["rtf"] for r in rows) / len(rows), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--chattts-path", help="real ChatTTS assets (folder with asset/)")
    source.add_argument("--random-chattts", help="build/use random-weight assets here")
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--only", choices=["piper", "chattts"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = args.chattts_path
    if args.random_chattts:
        from tests.chattts_assets import build_random_chattts

        path = str(build_random_chattts(Path(args.random_chattts)))
    if args.only:
        print(json.dumps(run_one(args.only, path, args.max_new_tokens)))
        return
    results = []
    for backend in ("piper", "chattts"):
        if backend == "chattts" and not path:
            continue
        cmd = [sys.executable, __file__, "--only", backend, "--max-new-tokens",
               str(args.max_new_tokens)] + (["--chattts-path", path] if path else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps({"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
                      "weights": "random" if args.random_chattts else ("real" if path else None),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
