"""Merging a persona LoRA into its base and writing a folder any transformers user can load.

The folder holds sharded safetensors, the tokenizer, the generation config and a chat template
whose *default* system message is the persona's prompt: base templates (SmolLM2's, Qwen2.5's)
otherwise inject their own identity whenever no system message is given, and whoever loads the
folder elsewhere must meet the persona. The adapter is saved on its own beside it, with a model
card describing how it was made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase


def with_default_system(template: str, system_prompt: str) -> str:
    """Prefix a Jinja chat template so a conversation without a system turn gets the persona's."""
    # ensure_ascii keeps the literal pure ASCII; Jinja decodes the \\uXXXX escapes back.
    literal = json.dumps(system_prompt, ensure_ascii=True)
    prefix = (
        "{%- if messages and messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': {literal}}}] + messages -%}}"
        "{%- endif -%}"
    )
    return prefix + template


@dataclass(frozen=True)
class ExportedModel:
    model_dir: Path
    adapter_dir: Path


def model_card(info: Mapping[str, object]) -> str:
    lines = [f"# {info.get('persona', 'persona')} — ChatMan persona model", "",
             "A LoRA fine-tune merged into its base; the chat template's default system message "
             "is the persona's prompt.", "", "```json", json.dumps(info, ensure_ascii=False,
                                                                     indent=2), "```", ""]
    return "\n".join(lines)


def export_merged(peft_model: PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, *,
                  system_prompt: str, info: Mapping[str, object],
                  max_shard_size: str = "500MB") -> ExportedModel:
    """Save the adapter, then merge it into the base and save the merged model.

    ``peft_model`` is consumed: merging folds the adapter into the base weights in place.
    """
    adapter_dir, model_dir = out_dir / "adapter", out_dir / "model"
    peft_model.save_pretrained(adapter_dir)  # type: ignore[arg-type]  # typed str, takes a path
    (adapter_dir / "README.md").write_text(model_card(info), encoding="utf-8")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(model_dir, max_shard_size=max_shard_size, safe_serialization=True)
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = with_default_system(original, system_prompt)
        tokenizer.save_pretrained(model_dir)
    finally:
        tokenizer.chat_template = original
    (model_dir / "README.md").write_text(model_card(info), encoding="utf-8")
    return ExportedModel(model_dir, adapter_dir)
