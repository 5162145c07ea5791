"""Chinese end to end, as JSON: ASR character error rate, each zh model's speed, a zh note's
latency through the whole pipeline.

    python bench/zh.py [--repeat N]     (make bench-zh; needs make setup LANGS=en,zh)

* ASR: sentences spoken by the Chinese starter voice, transcribed by the starter ASR as it
  serves (language detected among en and zh), scored by CER (training/speech_metrics.py).
  No real Mandarin recordings ship on PyPI (the few clips found are synthetic too), so the
  set is synthetic: it measures the ASR on clean speech, a lower bound on real notes' CER.
* RTF of the ASR (as served, and told the language: what detection costs) and of the voice;
  the LLM's tokens/s and time to first token.
* End to end: a Chinese voice note answered by ChatMan (CHATMAN_LANGUAGE=zh, the starters,
  greedy), with the pipeline's own stage timings; the reply's voice is transcribed back and
  scored against the reply text.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.core.types import ChatMessage, ChatRef, Incoming, Role, UserRef
from bot.infra.asr import FasterWhisperASR
from bot.infra.logs import configure_logging
from training.speech_metrics import error_rate

#: Everyday sentences, 1-5 s spoken: greetings, numbers, names, a question.
SENTENCES = [
    "你好，很高兴认识你。",
    "请问你叫什么名字？",
    "今天天气很好，我们去公园散步吧。",
    "我明天下午三点在图书馆等你。",
    "这本书一共有三百二十页。",
    "你在哪个公司工作？",
    "我想学习怎么做公众号。",
    "北京是中国的首都。",
    "周末你一般喜欢做什么？",
    "请帮我介绍一下语音聊天机器人。",
]
NOTE = "你好，请问你现在在做什么工作？"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rounded(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), digits), "max": round(max(values), digits)}


async def main(cache_dir: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="zh notes answered end to end")
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="chatman-bench-zh-") as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp), language="zh",
                            model_cache_dir=cache_dir,
                            llm_temperature=0.0, starter_persona=True)
        app = ChatmanApp.from_settings(settings)
        started = time.perf_counter()
        async with app.running():
            load_s = time.perf_counter() - started
            report: dict[str, object] = {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "python": platform.python_version()},
                "models": {"asr": app.asr.name, "llm": app.llm.version, "tts": app.tts.name},
                "load_s": round(load_s, 1),
            }
            # --- ASR on the synthetic set, and the voice's speed ---------------------------
            # The same model told the language: what detecting it costs.
            fixed = FasterWhisperASR(app.asr.model_ref, language="zh")  # type: ignore[attr-defined]
            await asyncio.to_thread(fixed.load)
            asr_rows, asr_rtf, fixed_rtf, tts_rtf = [], [], [], []
            whisper = app.asr._model  # type: ignore[attr-defined]
            passes_before = whisper.encoder_passes
            for text in SENTENCES:
                t0 = time.perf_counter()
                pcm = await asyncio.to_thread(app.tts.synthesize, text, "zh")
                tts_rtf.append((time.perf_counter() - t0) / pcm.duration_s)
                heard_pcm = app.codec.decode(app.codec.encode_voice_note(pcm).data)
                t0 = time.perf_counter()
                heard = await asyncio.to_thread(app.asr.transcribe, heard_pcm)
                asr_rtf.append((time.perf_counter() - t0) / heard_pcm.duration_s)
                t0 = time.perf_counter()
                await asyncio.to_thread(fixed.transcribe, heard_pcm)
                fixed_rtf.append((time.perf_counter() - t0) / heard_pcm.duration_s)
                asr_rows.append({"said": text, "heard": heard.text, "language": heard.language,
                                 "cer": round(error_rate(text, heard.text, "zh"), 3),
                                 "seconds": round(heard_pcm.duration_s, 2)})
            report["asr"] = {"set": "synthetic (the zh starter voice, via OGG/Opus)",
                             "sentences": len(asr_rows),
                             "cer": round(statistics.fmean(r["cer"] for r in asr_rows), 3),  # type: ignore[misc]
                             "language_detected_zh": sum(r["language"] == "zh" for r in asr_rows),
                             "rtf": rounded(asr_rtf),
                             "rtf_language_given": rounded(fixed_rtf),
                             # Detection reuses the transcription's pass (whisper_model.py).
                             "encoder_passes_per_note":
                                 (whisper.encoder_passes - passes_before) / len(asr_rows),
                             "rows": asr_rows}
            report["tts"] = {"rtf": rounded(tts_rtf)}
            # --- the LLM alone ---------------------------------------------------------------
            llm = app.llm
            prompt = llm.fit_history(app.pipeline.system_prompts["zh"], [],
                                     ChatMessage(Role.USER, "你现在做什么工作?"))
            t0 = time.perf_counter()
            stream = llm.stream(prompt)
            first = None
            for _ in stream:
                first = first or time.perf_counter() - t0
            reply = stream.reply
            total = time.perf_counter() - t0
            report["llm"] = {"reply": reply.text, "new_tokens": reply.new_tokens,
                             "first_token_ms": round((first or total) * 1000),
                             "tokens_per_s": round(reply.new_tokens / total, 1)}
            # --- a zh note end to end --------------------------------------------------------
            note = app.codec.encode_voice_note(app.tts.synthesize(NOTE, "zh")).data
            turns = []
            for i in range(args.repeat):
                chat = ChatRef("bench", f"zh-{i}")
                turn = await app.pipeline.handle(Incoming(chat, UserRef("bench", "u", "u"),
                                                          audio=note))
                assert turn.voice is not None
                back = await asyncio.to_thread(
                    app.asr.transcribe, app.codec.decode(turn.voice.data))
                turns.append({"heard": turn.transcript, "reply": turn.reply,
                              "language": turn.language, "timings_ms": turn.timings_ms,
                              "reply_heard_back": back.text,
                              "reply_cer": round(error_rate(turn.reply, back.text, "zh"), 3)})
            report["end_to_end"] = {
                "note": NOTE, "turns": turns,
                "first_audio_ms": rounded([float(t["timings_ms"]["first_audio"]) for t in turns], 0),  # type: ignore[index]
                "total_ms": rounded([float(t["timings_ms"]["total"]) for t in turns], 0),  # type: ignore[index]
                "reply_cer": round(statistics.fmean(float(t["reply_cer"]) for t in turns), 3),  # type: ignore[arg-type]
            }
            report["peak_rss_mb"] = peak_rss_mb()
        app.close()
    print(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    # The de-quantised models are kept between runs (CHATMAN_MODEL_CACHE_DIR as the bot's).
    asyncio.run(main(Path(os.environ.get("CHATMAN_MODEL_CACHE_DIR", "data/models")).resolve()))
