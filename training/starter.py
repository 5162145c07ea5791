"""The starter persona version: a LoRA adapter trained by ChatMan's own recipe, shipped in the
persona's folder, so a fresh bot answers as the persona from the first word.

``persona/<name>/starter/`` (the persona's English version, on the English starter LLM) and
``persona/<name>/starter-zh/`` (its Chinese one, on the Chinese-speaking starter) each hold:

* ``adapter/``: the peft LoRA adapter (fp16 safetensors, a few MB);
* ``release.json``: how it was made (the command, the TrainConfig with its seed, the hash of
  the seed dataset it saw, the base model's fingerprint) and what the gate measured;
* ``cache/``: the base model's replay and evaluation answers, so a retrain on the starter base
  skips computing them.

On the first start with that starter base and language, :func:`install_starter` merges the
adapter into the base (seconds: no training) and registers it as ``<name>-starter`` (or
``<name>-starter-zh``), active unless a version already is. It is a normal registry version from
then on: listed, rolled back from (to the base), never installed twice. Rebuild one with::

    python -m training.starter build [--persona manman] [--language zh]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from bot.core.config import STARTER, Settings, starter_for
from bot.core.persona import PersonaProfile, load_persona
from bot.core.registry import RegistryRepository

log = logging.getLogger(__name__)

COMMAND = "python -m training.starter build --persona {persona}{language}"


class ReleaseDataset(TypedDict):
    sha256: str
    rows: int
    source: str


class ReleaseInfo(TypedDict):
    """``release.json``: how the starter was made and what the gate measured."""

    version: str
    persona: str
    language: str
    command: str
    base_model: str
    base_version: str
    dataset: ReleaseDataset
    config: dict[str, Any]  # TrainConfig.model_dump()
    steps: int
    metrics: dict[str, object]  # training.release.metrics_of


@dataclass(frozen=True)
class StarterRelease:
    folder: Path
    info: ReleaseInfo

    @property
    def adapter_dir(self) -> Path:
        return self.folder / "adapter"

    @property
    def version(self) -> str:
        return str(self.info["version"])


def release_folder_name(persona: PersonaProfile, language: str) -> str:
    """``starter`` for the persona's English version, ``starter-<language>`` for another."""
    return "starter" if language == "en" else f"starter-{language}"


def starter_release(persona: PersonaProfile, language: str = "en") -> StarterRelease | None:
    if persona.directory is None:
        return None
    folder = persona.directory / release_folder_name(persona, language)
    info_path = folder / "release.json"
    if not info_path.is_file() or not (folder / "adapter" / "adapter_config.json").is_file():
        return None
    return StarterRelease(folder, json.loads(info_path.read_text(encoding="utf-8")))


def seed_dataset_sha256(persona: PersonaProfile, language: str) -> str:
    """The hash training records for the persona's seed pairs alone (a fresh database)."""
    from bot.core.dataset import render

    system = persona.prompt_for(language)
    rows = [r.model_copy(update={"system": system}) for r in persona.seed_pairs(language)]
    return hashlib.sha256(render(rows, "alpaca")).hexdigest()


def install_starter(settings: Settings, persona: PersonaProfile, registry: RegistryRepository,
                    language: str) -> str | None:
    """Register the shipped starter version once; returns its name when installed now."""
    release = starter_release(persona, language)
    if (release is None or not settings.starter_persona
            or settings.llm_model != release.info["base_model"]
            or release.info.get("language") != language):
        return None
    base_model = release.info["base_model"]
    if registry.get(release.version) is not None:
        return None  # installed before: rolled back, retired or active, it stays as it is
    out = settings.data_dir / "training" / persona.name / release.version
    model_dir = merge_adapter(release.adapter_dir, base_model, settings.resolved_model_cache_dir,
                              out, system_prompt=persona.prompt_for(
                                  language, release.info["config"].get("system_prompt", "full")),
                              info=release.info)
    try:
        registry.register_shipped(
            release.version, base_model=base_model, base_version=release.info["base_version"],
            directory=out, model_dir=model_dir, dataset_sha256=release.info["dataset"]["sha256"],
            dataset_rows=release.info["dataset"]["rows"], steps=release.info["steps"],
            config=release.info["config"], metrics=release.info["metrics"],
        )
    except Exception:
        if registry.get(release.version) is not None:
            return None  # a replica starting at the same moment registered it first
        raise
    log.info("installed the shipped starter persona %s (%s)", release.version, model_dir)
    return release.version


def merge_adapter(adapter_dir: Path, base_ref: str, cache_dir: Path, out: Path, *,
                  system_prompt: str, info: Mapping[str, object]) -> Path:
    """The base with ``adapter_dir`` merged in, written as ``out/model`` (atomically)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bot.infra.llm.source import resolve_llm
    from training.export import export_merged

    load_from = resolve_llm(base_ref, cache_dir).load_from
    base = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(load_from)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir), torch_dtype=torch.float32)
    # Per process: replicas starting together on one shared folder each build their own.
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    export_merged(peft_model, tokenizer, staging, system_prompt=system_prompt, info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(out)
    except OSError:
        # Already there (renames are atomic, so it is whole): another replica was quicker, or
        # an earlier start stopped before registering it. It may be serving: keep it.
        shutil.rmtree(staging, ignore_errors=True)
    return out / "model"


# --- building it (the reproduction recipe) ------------------------------------------------
def build(persona_name: str, language: str | None = None, out: Path | None = None,
          learning_rate: float | None = None) -> ReleaseInfo:
    """Train the starter version from the seed data alone, with TrainConfig's defaults (and
    ``learning_rate``, when given: a larger base wants a gentler step; the command records it)."""
    from bot.infra.storage import migrate
    from bot.infra.storage.curation import SqlCuration
    from bot.infra.storage.store import SqlStore, make_engine
    from training.evaluate import Decoding
    from training.release import metrics_of
    from training.run import run_training
    from training.sft import TrainConfig

    settings = Settings()
    persona = load_persona(persona_name, settings.persona_dir)
    language = language or persona.language
    base_model = starter_for(STARTER, language)
    out = out or (persona.directory / release_folder_name(persona, language))  # type: ignore[operator]
    overrides = {"learning_rate": learning_rate} if learning_rate is not None else {}
    config = TrainConfig(**overrides)
    # Gate with the decoding a fresh install serves (the defaults, whatever .env says here).
    decoding = Decoding.serving(Settings(_env_file=None), persona, language, config.eval_samples)
    with tempfile.TemporaryDirectory(prefix="chatman-starter-") as tmp:
        # A fresh database: the starter learns the seed pairs, never anyone's approvals.
        engine = make_engine(f"sqlite:///{tmp}/starter.db")
        migrate.upgrade(engine)
        # A fresh cache too, so exactly the base answers this run used get shipped.
        cache = Path(tmp) / "cache"
        run = run_training(
            curation=SqlCuration(SqlStore(engine), persona.name), persona=persona,
            language=language, base_model=base_model, cache_dir=cache,
            data_dir=Path(tmp), config=config,
            run_name=f"{persona.name}-{release_folder_name(persona, language)}",
            decoding=decoding,
            on_stage=lambda s: print(f"[starter] {s}", file=sys.stderr, flush=True),
            progress=lambda s: print(f"[starter] step {s.step} loss {s.loss}", file=sys.stderr,
                                     flush=True),
        )
        engine.dispose()
        if not run.result.passed:
            raise SystemExit(f"the starter did not pass the gate: {run.result.reasons}")
        info: ReleaseInfo = {
            "version": f"{persona.name}-{release_folder_name(persona, language)}",
            "persona": persona.name,
            "language": language,
            "command": COMMAND.format(persona=persona.name, language=(
                ("" if language == "en" else f" --language {language}")
                + (f" --lr {learning_rate:g}" if learning_rate is not None else ""))),
            "base_model": base_model,
            "base_version": run.base_version,
            "dataset": {"sha256": run.dataset_sha256, "rows": run.dataset_rows,
                        "source": "seed pairs only"},
            "config": config.model_dump(),
            "steps": run.result.steps,
            "metrics": metrics_of(run.result),
        }
        shutil.rmtree(out / "adapter", ignore_errors=True)
        (out / "adapter").mkdir(parents=True)
        _save_fp16_adapter(run.directory / "adapter", out / "adapter")
        shutil.rmtree(out / "cache", ignore_errors=True)
        for kind in ("replay", "base-eval"):
            shutil.copytree(cache / kind, out / "cache" / kind)
        (out / "release.json").write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n",
                                          encoding="utf-8")
    return info


def _save_fp16_adapter(src: Path, dst: Path) -> None:
    """The adapter in half precision: half the size, and merging casts it back to fp32."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) for k, v in load_file(src / "adapter_model.safetensors").items()}
    save_file(tensors, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    shutil.copy2(src / "adapter_config.json", dst / "adapter_config.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.starter")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="Train the starter version and write persona/<name>/starter "
                                     "(starter-<language> for another language)")
    b.add_argument("--persona", default="manman")
    b.add_argument("--language", default=None)
    b.add_argument("--out", type=Path, default=None)
    b.add_argument("--lr", type=float, default=None, help="learning rate (default TrainConfig's)")
    args = parser.parse_args(argv)
    info = build(args.persona, args.language, args.out, args.lr)
    print(json.dumps({k: info[k] for k in ("version", "steps", "dataset", "metrics")},
                     ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
