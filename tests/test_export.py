"""Merging a LoRA into its base: same logits when reloaded by plain transformers, persona by default."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bot.core.persona import load_persona
from training.export import export_merged, with_default_system
from training.sft import TrainConfig, lora_model

SYSTEM = load_persona("manman").prompt_for("zh")  # non-ASCII on purpose


def test_tiny_qwen2_merge_reloads_with_the_same_logits(tiny_qwen2_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32)
    peft_model = lora_model(base, TrainConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial adapter: LoRA's B starts at zero
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.eval()
    ids = tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            untouched = peft_model(input_ids=ids).logits
    assert not torch.allclose(expected, untouched, atol=1e-4), "the adapter must matter"

    info = {"persona": "manman", "base": "tiny-qwen2", "dataset_sha256": "abc"}
    exported = export_merged(peft_model, tokenizer, tmp_path / "out", system_prompt=SYSTEM,
                             info=info, max_shard_size="100KB")

    shards = sorted(p.name for p in exported.model_dir.glob("*.safetensors"))
    assert len(shards) > 1 and (exported.model_dir / "model.safetensors.index.json").is_file()
    assert (exported.adapter_dir / "adapter_config.json").is_file()
    assert '"dataset_sha256": "abc"' in (exported.model_dir / "README.md").read_text()
    config = json.loads((exported.model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"

    reloaded = AutoModelForCausalLM.from_pretrained(exported.model_dir, dtype=torch.float32)
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # Whoever loads the folder meets the persona, not Qwen's "helpful assistant".
    tok = AutoTokenizer.from_pretrained(exported.model_dir)
    rendered = tok.apply_chat_template([{"role": "user", "content": "你是谁?"}], tokenize=False,
                                       add_generation_prompt=True)
    assert isinstance(rendered, str)  # tokenize=False renders text
    assert rendered.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert "helpful assistant" not in rendered
    explicit = tok.apply_chat_template([{"role": "system", "content": "Custom."},
                                        {"role": "user", "content": "hi"}], tokenize=False)
    assert isinstance(explicit, str)
    assert explicit.startswith("<|im_start|>system\nCustom.<|im_end|>") and SYSTEM not in explicit


def test_smollm2_template_stops_injecting_its_own_identity(llm):
    template = with_default_system(llm.tokenizer.chat_template, "You are Manman.")
    rendered = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], chat_template=template, tokenize=False)
    assert rendered.startswith("<|im_start|>system\nYou are Manman.<|im_end|>")
    assert "SmolLM" not in rendered
