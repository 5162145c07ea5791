"""Train a registered version: candidate → trained → evaluated → active or rejected.

Both ``chatman train`` (in process) and background jobs (in a worker process) go through
:func:`train_and_release`, so a version is recorded the same way whoever started it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bot.core.persona import PersonaProfile
from bot.infra.storage.models import ModelStatus
from bot.services.curation import Curation
from bot.services.registry import ModelRegistry
from training.evaluate import Decoding, EvalReport
from training.run import RunOutput, run_training
from training.sft import StepLog, TrainConfig, TrainResult

log = logging.getLogger(__name__)

METRICS = ("persona_score", "general_score", "base_general_score", "retention", "leakage",
           "within_budget")


@dataclass(frozen=True)
class Release:
    version: str
    status: str  # active | candidate (not activated on request) | rejected
    run: RunOutput
    plot: Path | None
    summary: str


def metrics_of(result: TrainResult) -> dict[str, object]:
    if result.final is None:
        return {}
    final = result.final
    return {**{k: getattr(final, k) for k in METRICS}, "step": result.evals[-1][0],
            "scores": final.scores, "speech_seconds": final.speech_seconds,
            "decoding": final.decoding}


def summarize(version: str, result: TrainResult, config: TrainConfig) -> str:
    """The evaluation table an admin reads in a chat: plain text, one fact a line."""
    lines = [f"{version}: " + (f"gate passed at step {result.steps}" if result.passed else
                               f"gate not passed after {result.steps} step(s)")
             + f" (max {config.max_steps})."]
    final = result.final
    if final is None:
        return "\n".join(lines + ["Not evaluated."])
    ok = "✓", "✗"
    d = final.decoding

    def row(name: str, needs: float | None = None) -> str:
        score = final.scores.get(name, {"mean": 0.0, "worst": 0.0})
        mark = "" if needs is None else ok[score["mean"] < needs] + " "
        tail = f" (needs ≥ {needs:.2f})" if needs is not None else ""
        return f"{mark}{name} {score['mean']:.2f}, worst draw {score['worst']:.2f}{tail}"

    lines += [
        f"Decoding as served: temperature {d.get('temperature')}, top_p {d.get('top_p')}, "
        f"{d.get('draws', d.get('samples'))} seeded draw(s) per question, at most "
        f"{d.get('max_new_tokens')} tokens.",
        row("persona_score", config.min_persona),
        *[" " + row(kind) for kind in ("identity", "fact", "consistency", "injection")
          if kind in final.scores],
        row("retention", config.min_retention),
        row("within_budget", config.min_within_budget),
        f"general {final.general_score:.2f} (base {final.base_general_score:.2f}), "
        f"leakage {final.leakage:.2f}, speech p50 {final.speech_seconds.get('p50', 0):.1f} s "
        f"/ p95 {final.speech_seconds.get('p95', 0):.1f} s",
        "Probes (first draw):",
    ]
    lines += [f" {ok[not a.correct]} {a.question} → {_short(a.answer)}"
              for a in final.first_draw(final.probes)]
    base_right = {b.question for b in final.first_draw(final.base_general) if b.correct}
    lost = [g for g in final.first_draw(final.general) if g.question in base_right and not g.correct]
    if lost:
        lines.append("Forgotten since the base (first draw):")
        lines += [f" ✗ {g.question} → {_short(g.answer)}" for g in lost]
    return "\n".join(lines)


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def train_and_release(
    *,
    registry: ModelRegistry,
    curation: Curation,
    persona: PersonaProfile,
    language: str,
    base_model: str,
    cache_dir: Path,
    data_dir: Path,
    config: TrainConfig,
    created_by: str,
    job_id: int | None = None,
    activate: bool = True,
    on_candidate: Callable[[str], None] | None = None,
    progress: Callable[[StepLog], None] | None = None,
    on_eval: Callable[[int, EvalReport], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    decoding: Decoding | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Release:
    candidate = registry.create_candidate(base_model=base_model, config=config.model_dump(),
                                          job_id=job_id, created_by=created_by)
    version = candidate.version
    if on_candidate:
        on_candidate(version)
    try:
        run = run_training(
            curation=curation, persona=persona, language=language, base_model=base_model,
            cache_dir=cache_dir, data_dir=data_dir, config=config, progress=progress,
            on_eval=on_eval, on_stage=on_stage, run_name=version, decoding=decoding,
            should_stop=should_stop,
        )
    except BaseException as exc:  # Ctrl-C included: the candidate must not stay "candidate"
        registry.fail(version, f"training failed: {type(exc).__name__}: {exc}")
        raise
    result = run.result
    registry.record_result(
        version, base_version=run.base_version, directory=run.directory, model_dir=run.model_dir,
        dataset_sha256=run.dataset_sha256, dataset_rows=run.dataset_rows, steps=result.steps,
        metrics=metrics_of(result), reasons=result.reasons,
    )
    plot = None
    try:
        from training.plots import loss_plot

        plot = loss_plot(result.log, result.evals, run.directory / "loss.png",
                         title=f"{version} on {run.base_version}")
    except Exception:  # a missing plot must not lose a trained model
        log.warning("could not draw the loss plot for %s", version, exc_info=True)
    if not result.passed:
        registry.reject(version, result.reasons)
        status = ModelStatus.REJECTED
    elif activate:
        registry.activate(version, created_by)
        status = ModelStatus.ACTIVE
    else:
        status = ModelStatus.CANDIDATE
    return Release(version, status, run, plot, summarize(version, result, config))
