"""Training benchmark: ChatMan's recipe against the identity-overfitting one, as JSON.

    python bench/train.py [--max-steps 40] [--eval-every 10] [--base starter]

For each recipe: seconds per step, the step at which the gate passed (if it did), wall time,
and the evaluation at every checkpoint (persona score on unseen probes, general score,
retention of what the base knew, leakage of the persona into general answers). The naive
recipe (lr 1e-3, no replay, no KL, no paraphrases) runs all steps so its forgetting shows.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import ChatmanApp  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.logs import configure_logging  # noqa: E402
from training.run import run_training  # noqa: E402
from training.sft import TrainConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--base", default=None)
    args = parser.parse_args()

    base_settings = Settings()
    configure_logging("WARNING", base_settings.secret_values())
    tmp = Path(tempfile.mkdtemp(prefix="chatman-bench-train-"))
    settings = base_settings.model_copy(update={
        "database_url": None, "data_dir": tmp,
        "model_cache_dir": base_settings.resolved_model_cache_dir.resolve(),
    })
    app = ChatmanApp.from_settings(settings)
    app.migrate()
    recipes = {
        "chatman": TrainConfig(max_steps=args.max_steps, eval_every=args.eval_every),
        # Never stops early (an unreachable gate), so what happens after the persona is
        # learned stays visible.
        "naive_high_lr_no_replay": TrainConfig(
            max_steps=args.max_steps, eval_every=args.eval_every, learning_rate=1e-3,
            replay_ratio=0.0, kl_weight=0.0, paraphrase=False, min_persona=1.01,
        ),
    }
    results = {}
    for name, config in recipes.items():
        started = time.perf_counter()
        out = run_training(
            curation=app.curation, persona=app.persona, language=app.language,
            base_model=args.base or app.persona.training.base_model,
            cache_dir=settings.resolved_model_cache_dir, data_dir=tmp, config=config,
        )
        r = out.result
        results[name] = {
            "config": config.model_dump(),
            "steps_run": r.steps,
            "gate_passed_at_step": r.steps if r.passed else None,
            "wall_s": round(time.perf_counter() - started, 1),
            "s_per_step": round(sum(s.seconds for s in r.log) / len(r.log), 2),
            "final_loss": r.log[-1].loss,
            "evals": [
                {"step": step, "persona_score": e.persona_score, "general_score": e.general_score,
                 "base_general_score": e.base_general_score, "retention": e.retention,
                 "leakage": e.leakage}
                for step, e in r.evals
            ],
        }
    app.close()
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "base": args.base or app.persona.training.base_model,
        "recipes": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
