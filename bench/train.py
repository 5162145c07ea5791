"""Training benchmark: ChatMan's recipe (full or short system prompt in the examples) against
the identity-overfitting one, as JSON.

    python bench/train.py [--max-steps 40] [--eval-every 10] [--base starter]
                          [--recipes chatman,chatman_short_prompt,naive_high_lr_no_replay]

For each recipe, in its own process so each peak RSS is its own: seconds per step, the step
at which the gate passed (if it did), wall time, peak RSS, and the evaluation at every
checkpoint with the serving decoding (persona score and its kinds on unseen probes, general
score, retention of what the base knew, leakage, replies within the speech budget). The naive
recipe (lr 1e-3, no replay, no KL, no paraphrases) runs all steps so its forgetting shows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.app import ChatmanApp
from bot.core.config import Settings
from bot.infra.logs import configure_logging
from training.evaluate import Decoding
from training.run import run_training
from training.sft import TrainConfig


def recipes(max_steps: int, eval_every: int) -> dict[str, TrainConfig]:
    return {
        "chatman": TrainConfig(max_steps=max_steps, eval_every=eval_every),
        "chatman_short_prompt": TrainConfig(max_steps=max_steps, eval_every=eval_every,
                                            system_prompt="short"),
        # Never stops early (an unreachable gate, set past validation on purpose), so what
        # happens after the persona is learned stays visible.
        "naive_high_lr_no_replay": TrainConfig(
            max_steps=max_steps, eval_every=eval_every, learning_rate=1e-3,
            replay_ratio=0.0, kl_weight=0.0, paraphrase=False, context_rows=False,
        ).model_copy(update={"min_persona": 1.01}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--base", default=None)
    parser.add_argument("--recipes", default="chatman,chatman_short_prompt,naive_high_lr_no_replay")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one recipe
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    results = {}
    for name in args.recipes.split(","):
        # A process per recipe: peak RSS only ever grows within one.
        cmd = [sys.executable, __file__, "--one", name, "--max-steps", str(args.max_steps),
               "--eval-every", str(args.eval_every)] + (["--base", args.base] if args.base else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "base": args.base or "the persona's training.base_model",
        "recipes": results,
    }, indent=2))


def run_one(args: argparse.Namespace, name: str) -> dict[str, object]:
    base_settings = Settings()
    configure_logging("WARNING", base_settings.secret_values())
    tmp = Path(tempfile.mkdtemp(prefix="chatman-bench-train-"))
    settings = base_settings.model_copy(update={
        "database_url": None, "data_dir": tmp,
        "model_cache_dir": base_settings.resolved_model_cache_dir.resolve(),
    })
    app = ChatmanApp.from_settings(settings)
    app.migrate()
    config = recipes(args.max_steps, args.eval_every)[name]
    decoding = Decoding.serving(settings, app.persona, app.language, config.eval_samples)
    started = time.perf_counter()
    out = run_training(
        curation=app.curation, persona=app.persona, language=app.language,
        base_model=args.base or app.persona.training.base_model,
        cache_dir=settings.resolved_model_cache_dir, data_dir=tmp, config=config,
        decoding=decoding,
    )
    app.close()
    r = out.result
    return {
        "config": config.model_dump(),
        "decoding": decoding.to_dict(),
        "steps_run": r.steps,
        "gate_passed_at_step": r.steps if r.passed else None,
        "gate_reasons": r.reasons,
        "wall_s": round(time.perf_counter() - started, 1),
        "s_per_step": round(sum(s.seconds for s in r.log) / len(r.log), 2),
        "final_loss": r.log[-1].loss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "evals": [
            {"step": step, "persona_score": e.persona_score, "general_score": e.general_score,
             "base_general_score": e.base_general_score, "retention": e.retention,
             "leakage": e.leakage, "within_budget": e.within_budget, "scores": e.scores,
             "speech_seconds": e.speech_seconds}
            for step, e in r.evals
        ],
    }


if __name__ == "__main__":
    main()
