"""The persona as users hear it: the shipped starter version, a fresh `chatman train`, and the
base model, side by side, as JSON.

    python bench/persona.py [--samples 3] [--skip-train]

Every model answers the persona's probes (identity, facts, consistency after two unrelated
turns, identity injection) and the general set with the serving decoding (CHATMAN_LLM_*
settings, the persona's speech budget, the cut to the last sentence), ``--samples`` seeded
draws each; none of those questions is a training question. Reported per model: every score's
mean and worst draw, retention of the base's knowledge, leakage, replies that fit the budget
uncut, and reply length in seconds of speech (p50/p95). The fresh training adds seconds per
step, the step at which the gate passed and the trainer's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import ChatmanApp, build_local_llm
from bot.core.config import Settings
from bot.infra.logs import configure_logging
from training.evaluate import Decoding, answer_general, evaluate, general_items
from training.run import run_training
from training.sft import TrainConfig

if TYPE_CHECKING:
    from training.evaluate import Answerer, EvalReport


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _scores(report: EvalReport) -> dict[str, object]:
    return {"scores": report.scores, "base_general_score": report.base_general_score,
            "speech_seconds": report.speech_seconds,
            "first_draw": {a.question: a.answer for a in report.first_draw(report.probes)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="Only the starter and base")
    args = parser.parse_args()

    base_settings = Settings()
    configure_logging("WARNING", base_settings.secret_values())
    tmp = Path(tempfile.mkdtemp(prefix="chatman-bench-persona-"))
    settings = base_settings.model_copy(update={
        "database_url": None, "data_dir": tmp, "starter_persona": True,
        "model_cache_dir": base_settings.resolved_model_cache_dir.resolve(),
    })
    app = ChatmanApp.from_settings(settings)
    app.migrate()
    persona, language = app.persona, app.language
    decoding = Decoding.serving(settings, persona, language, args.samples)
    markers = [persona.display_name, *persona.training.leak_markers]
    base_llm = build_local_llm(settings, max_new_tokens=decoding.max_new_tokens)
    base_answers = answer_general(base_llm, persona.prompt_for(language), general_items(language),
                                  markers, decoding, persona.speech, language)

    def judge(llm: Answerer, prompt_kind: str = "full") -> dict[str, object]:
        started = time.perf_counter()
        report = evaluate(llm, persona, language, base_general=base_answers,
                          base_model=base_llm.version, decoding=decoding,
                          system=persona.prompt_for(language, prompt_kind))
        return {**_scores(report), "eval_s": round(time.perf_counter() - started, 1)}

    results: dict[str, dict[str, object]] = {"base": judge(base_llm)}
    started = time.perf_counter()
    installed = app.install_starter()
    install_s = round(time.perf_counter() - started, 1)
    if installed:
        v = app.registry.get(installed)
        assert v is not None  # installed just now
        results["shipped_starter"] = {"version": installed, "install_s": install_s,
                                      **judge(build_local_llm(settings, v.model_dir, v.version),
                                              v.config.get("system_prompt", "full"))}
    else:
        results["shipped_starter"] = {"error": "no shipped starter for this persona/base"}
    if not args.skip_train:
        config = TrainConfig()
        rss_before = _peak_rss_mb()
        started = time.perf_counter()
        out = run_training(curation=app.curation, persona=persona, language=language,
                           base_model=persona.training.base_model,
                           cache_dir=settings.resolved_model_cache_dir, data_dir=tmp / "fresh",
                           config=config, decoding=decoding)
        r = out.result
        train: dict[str, object] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "steps_run": r.steps, "gate_passed_at_step": r.steps if r.passed else None,
            "gate_reasons": r.reasons,
            "s_per_step": round(sum(s.seconds for s in r.log) / len(r.log), 2),
            "peak_rss_mb_before": rss_before, "peak_rss_mb_after": _peak_rss_mb(),
        }
        if out.model_dir is not None:
            results["fresh_train"] = {**train, **judge(
                build_local_llm(settings, str(out.model_dir), "fresh",
                          max_new_tokens=decoding.max_new_tokens), config.system_prompt)}
        else:
            results["fresh_train"] = train
    app.close()
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "decoding": decoding.to_dict(),
        "models": results,
        "peak_rss_mb": _peak_rss_mb(),
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
