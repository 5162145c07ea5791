"""Exporting a version after training: its LoRA adapter merged into its base.

Training merges only versions that pass the evaluation gate; a rejected run keeps just its
adapter (``<run folder>/adapter``). ``chatman models activate VERSION --force`` uses
:func:`export_version` to make the merged folder an operator wants anyway, the same folder a
passing run gets (``<run folder>/model``), then records and activates it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from bot.core.errors import UserFacingError
from bot.core.persona import PersonaProfile
from bot.infra.llm.source import resolve_llm
from bot.infra.storage.models import ModelStatus
from bot.services.registry import VersionView
from training.export import export_merged

log = logging.getLogger(__name__)


class ExportError(UserFacingError):
    pass


def needs_export(version: VersionView) -> bool:
    """No loadable merged folder yet (a rejected run, or one whose folder has gone)."""
    return not version.model_dir or not Path(version.model_dir).is_dir()


def adapter_of(version: VersionView) -> Path:
    """The version's saved adapter, or an :class:`ExportError` saying why there is none."""
    name = version.version
    if version.status == ModelStatus.CANDIDATE and version.finished_at is None:
        raise ExportError(f"{name} still training", user_message=(
            f"{name} is still being trained; wait for its result (see /trainstatus)."))
    if not version.directory:
        raise ExportError(f"{name} has no run folder", user_message=(
            f"{name} cannot be exported: no run folder was recorded for it (status "
            f"{version.status}: {'; '.join(version.reasons) or 'no reason recorded'})."))
    adapter = Path(version.directory) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"{name} has no adapter", user_message=(
            f"{name} cannot be exported: its adapter {adapter} is missing (status "
            f"{version.status}; a run that crashed or was cancelled saves none)."))
    return adapter


def _card(version: VersionView, language: str) -> dict[str, object]:
    return {"version": version.version, "persona": version.persona, "language": language,
            "base_model": version.base_model, "base_version": version.base_version,
            "dataset": {"sha256": version.dataset_sha256, "rows": version.dataset_rows},
            "config": version.config, "steps": version.steps, "gate_passed": False,
            "gate_reasons": version.reasons, "metrics": version.metrics,
            "exported_after_training": True}


def _language(version: VersionView, default: str) -> str:
    """The language the run trained in (its report says), else ``default``."""
    report = Path(version.directory or "") / "train_report.json"
    try:
        return str(json.loads(report.read_text(encoding="utf-8"))["language"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def export_version(version: VersionView, *, persona: PersonaProfile, language: str,
                   cache_dir: Path) -> Path:
    """Merge the version's adapter into its base; returns ``<run folder>/model``.

    Refuses (:class:`ExportError`) when the adapter is missing or the base now resolves to a
    different model than the one the adapter was trained on.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = adapter_of(version)
    try:
        base = resolve_llm(version.base_model, cache_dir)
    except (FileNotFoundError, OSError) as exc:
        raise ExportError(str(exc), user_message=(
            f"{version.version} cannot be exported: its base {version.base_model} does not "
            f"load ({exc}).")) from exc
    if version.base_version and base.version != version.base_version:
        raise ExportError("base changed", user_message=(
            f"{version.version} cannot be exported: it was trained on {version.base_version}, "
            f"but {version.base_model} is now {base.version}."))
    language = _language(version, language)
    kind = version.config.get("system_prompt")
    system = persona.prompt_for(language, kind) if kind else persona.prompt_for(language)
    # As training loads the base (training/run.py), so the merge matches what was trained.
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    log.info("exporting %s: merging %s into %s", version.version, adapter, base.load_from)
    tokenizer = AutoTokenizer.from_pretrained(base.load_from)
    model = AutoModelForCausalLM.from_pretrained(base.load_from, dtype=dtype)
    model = model.to("cuda" if cuda else "cpu")  # type: ignore[arg-type]  # @wraps hides self
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    assert version.directory  # adapter_of refuses a version without one
    run_dir = Path(version.directory)
    target = run_dir / "model"
    # Written beside the run, then moved into place: an export that fails half-way leaves
    # neither a half-written model folder nor a rewritten adapter behind.
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=run_dir))
    try:
        exported = export_merged(peft_model, tokenizer, staging, system_prompt=system,
                                 info=_card(version, language))
        if target.exists():
            shutil.rmtree(target)
        exported.model_dir.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
