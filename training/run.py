"""One training run, end to end: freeze the data, train, evaluate, save the adapter and report.

Merging, the model registry, background jobs and hot swap build on the folder this writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.core.curation import CurationRepository
from bot.core.persona import PersonaProfile
from bot.infra.llm.chat_model import TransformersChatModel
from training.dataset import snapshot_dataset
from training.evaluate import (
    Answered,
    Answerer,
    Decoding,
    EvalReport,
    ModelAnswerer,
    answer_general,
    general_items,
)
from training.export import export_merged
from training.sft import StepLog, TrainConfig, TrainResult, replay_pairs, train_persona

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutput:
    directory: Path
    result: TrainResult
    dataset_sha256: str
    dataset_rows: int
    base_version: str
    model_dir: Path | None


def base_general_answers(answerer: Answerer, system: str, markers: list[str], cache_dir: Path,
                         decoding: Decoding, persona: PersonaProfile, language: str,
                         shipped: Path | None = None) -> list[Answered]:
    """The base model's answers to the general set under ``decoding``; cached, since the
    base never changes (``shipped``: a folder of caches made elsewhere, read only)."""
    items = general_items(language)
    key = hashlib.sha256(json.dumps(
        [answerer.version, system, [i.model_dump() for i in items], markers, decoding.to_dict(),
         persona.speech.model_dump()]
    ).encode()).hexdigest()[:16]
    name = Path("base-eval") / f"{key}.json"
    for folder in (cache_dir, shipped):
        if folder is not None and (folder / name).is_file():
            return [Answered(**a) for a in json.loads((folder / name).read_text(encoding="utf-8"))]
    answers = answer_general(answerer, system, items, markers, decoding, persona.speech, language)
    path = cache_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(a) for a in answers], ensure_ascii=False), encoding="utf-8")
    return answers


def shipped_cache(persona: PersonaProfile) -> Path | None:
    """Caches the persona ships (its starter version's base answers), if any."""
    if persona.directory is None:
        return None
    folder = persona.directory / "starter" / "cache"
    return folder if folder.is_dir() else None


def run_training(
    *,
    curation: CurationRepository,
    persona: PersonaProfile,
    language: str,
    base_model: str,
    cache_dir: Path,
    data_dir: Path,
    config: TrainConfig,
    progress: Callable[[StepLog], None] | None = None,
    on_eval: Callable[[int, EvalReport], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    run_name: str | None = None,
    decoding: Decoding | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunOutput:
    import torch
    from transformers import AutoModelForCausalLM

    stage = on_stage or (lambda name: None)
    stage("freezing the dataset")
    # One read of the dataset: the rows trained on are the rows whose bytes were written and
    # hashed, whatever is approved while this run goes on.
    snapshot = snapshot_dataset(curation, persona, language, data_dir / "datasets")
    rows = list(snapshot.records)
    stage("loading the base model")
    base = TransformersChatModel(base_model, cache_dir=cache_dir)
    load_from = base.weights_path()  # resolves (and fingerprints) the base once
    tokenizer = base.tokenizer
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() \
        else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # PreTrainedModel.to is typed through @wraps(Module.to), which hides the bound self.
    model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype).to(device).eval()  # type: ignore[arg-type]

    system = persona.prompt_for(language, config.system_prompt)
    decoding = decoding or Decoding(max_new_tokens=persona.speech.max_new_tokens(language),
                                    samples=config.eval_samples)
    markers = [persona.display_name, *persona.training.leak_markers]
    shipped = shipped_cache(persona)

    def counting(what: str, draws: int = 1) -> Callable[[int, int], None]:
        # Computed once per base model, then cached: say so, and how far along it is. One
        # generation call per seeded draw: count them as one run, not restarts.
        state = {"offset": 0, "last": 0}

        def report(done: int, total: int) -> None:
            if done <= state["last"]:
                state["offset"] += state["last"]
            state["last"] = done
            stage(f"{what} {state['offset'] + done}/{total * draws} (once per base model)")
        return report

    stage("base model answers")
    replay = replay_pairs(model, tokenizer, base.version, system, cache_dir, persona, language,
                          progress=counting("base model replay answers"), shipped=shipped)
    base_general = base_general_answers(
        ModelAnswerer(model, tokenizer, base.version,
                      progress=counting("base model evaluation answers", decoding.draws)),
        system, markers, cache_dir, decoding, persona, language, shipped=shipped)
    stage("training")
    peft_model, result = train_persona(
        model, tokenizer, persona=persona, language=language, rows=rows, replay=replay,
        base_general=base_general, base_version=base.version, config=config, decoding=decoding,
        progress=progress, on_eval=on_eval, should_stop=should_stop,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = data_dir / "training" / persona.name / (run_name or f"{stamp}-{snapshot.sha256[:8]}")
    report = {
        "version": run_name,
        "persona": persona.name,
        "language": language,
        "base_model": base_model,
        "base_version": base.version,
        "dataset": {"path": str(snapshot.data_file), "sha256": snapshot.sha256,
                    "rows": snapshot.rows},
        "config": config.model_dump(),
        "decoding": decoding.to_dict(),
        "steps": result.steps,
        "gate_passed": result.passed,
        "gate_reasons": result.reasons,
        "log": [asdict(s) for s in result.log],
        "evals": [{"step": step, **r.to_dict()} for step, r in result.evals],
        "model_dir": None,
    }
    card = {k: report[k] for k in ("version", "persona", "language", "base_model", "base_version",
                                   "dataset", "config", "decoding", "steps", "gate_passed")}
    if result.final is not None:
        card["metrics"] = {**{k: getattr(result.final, k) for k in (
            "persona_score", "general_score", "base_general_score", "retention", "leakage",
            "within_budget")}, "scores": result.final.scores}
    if result.passed:
        # Only a model that passed the gate is worth a merged copy of the base's weights.
        stage("merging and exporting")
        exported = export_merged(peft_model, tokenizer, out, system_prompt=system, info=card)
        report["model_dir"] = str(exported.model_dir)
        model_dir = exported.model_dir
    else:
        model_dir = None
        peft_model.save_pretrained(out / "adapter")  # type: ignore[arg-type]  # typed str, takes a path
    (out / "train_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1),
                                           encoding="utf-8")
    return RunOutput(out, result, snapshot.sha256, snapshot.rows, base.version, model_dir)
