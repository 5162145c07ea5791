"""The transformers chat model: GGUF starter, chat templates, history budget, tiny Qwen2."""

from __future__ import annotations

import json

from bot.core.persona import load_persona
from bot.core.types import ChatMessage, Role
from bot.infra.llm.chat_model import GenerationSettings, TransformersChatModel, to_template_messages
from bot.infra.llm.source import resolve_llm
from tests.conftest import MODEL_CACHE

SYSTEM = load_persona("manman").prompt_for("en")


def _rendered(model: TransformersChatModel, messages) -> str:
    rendered = model.tokenizer.apply_chat_template(
        to_template_messages(messages), add_generation_prompt=True, tokenize=False
    )
    assert isinstance(rendered, str)  # tokenize=False renders text
    return rendered


def test_gguf_starter_is_dequantised_once_into_a_plain_folder(llm):
    resolved = resolve_llm("starter", MODEL_CACHE)
    folder = MODEL_CACHE / resolved.load_from.split("/")[-1]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    weights = folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_llm("starter", MODEL_CACHE) == resolved
    assert weights.stat().st_mtime_ns == stamp, "second resolve must reuse the cache"
    assert resolved.version == "SmolLM2-135M-Instruct.Q4_1" == llm.version


def test_persona_prompt_replaces_the_templates_default_identity(llm):
    prompt = _rendered(llm, llm.fit_history(SYSTEM, [], ChatMessage(Role.USER, "Who are you?")))
    assert "You are Manman" in prompt
    assert "SmolLM" not in prompt


def test_group_turns_carry_the_speakers_name():
    rendered = to_template_messages([
        ChatMessage(Role.USER, "hi there", speaker="Alice"),
        ChatMessage(Role.ASSISTANT, "hello Alice"),
        ChatMessage(Role.USER, "and me?", speaker=None),
    ])
    assert [m["content"] for m in rendered] == ["Alice: hi there", "hello Alice", "and me?"]


def test_history_is_trimmed_to_the_token_budget_keeping_the_newest(llm, monkeypatch):
    history = []
    for i in range(15):
        history += [
            ChatMessage(Role.USER, f"Question number {i} about something quite long and wordy?"),
            ChatMessage(Role.ASSISTANT, f"Answer number {i}, which is also rather long-winded."),
        ]
    user = ChatMessage(Role.USER, "And the final question?")
    budget = llm.count_prompt_tokens([ChatMessage(Role.SYSTEM, SYSTEM), user]) + 150
    monkeypatch.setattr(llm, "context_tokens", budget)

    fitted = llm.fit_history(SYSTEM, history, user)
    kept = fitted[1:-1]
    assert fitted[0] == ChatMessage(Role.SYSTEM, SYSTEM) and fitted[-1] == user
    assert 0 < len(kept) < len(history)
    assert kept == history[-len(kept):], "the newest messages are the ones kept"
    assert kept[0].role is Role.USER, "the window opens on a user turn"
    assert llm.count_prompt_tokens(fitted) <= budget
    one_more = [fitted[0], *history[-len(kept) - 2:], user]
    assert llm.count_prompt_tokens(one_more) > budget, "no room was wasted"


def test_nothing_but_system_and_question_when_even_one_turn_does_not_fit(llm, monkeypatch):
    monkeypatch.setattr(llm, "context_tokens", 10)
    user = ChatMessage(Role.USER, "Hi?")
    history = [ChatMessage(Role.USER, "old"), ChatMessage(Role.ASSISTANT, "older")]
    assert llm.fit_history(SYSTEM, history, user) == [ChatMessage(Role.SYSTEM, SYSTEM), user]


def test_greedy_answer_knows_facts_and_repeats(llm):
    messages = llm.fit_history(
        SYSTEM, [], ChatMessage(Role.USER, "What is the capital of Japan?")
    )
    first = llm.generate(messages)
    assert "Tokyo" in first.text
    assert 0 < first.new_tokens <= 40 and first.prompt_tokens > 50
    assert first.model_version == "SmolLM2-135M-Instruct.Q4_1"
    assert llm.generate(messages).text == first.text


def test_tiny_qwen2_folder_loads_and_generates_with_the_persona_prompt(tiny_qwen2_dir):
    model = TransformersChatModel(
        str(tiny_qwen2_dir),
        cache_dir=MODEL_CACHE,
        generation=GenerationSettings(max_new_tokens=8, temperature=0.0),
    )
    model.load()
    assert model.version == "tiny-qwen2"
    assert type(model._model).__name__ == "Qwen2ForCausalLM"
    messages = model.fit_history(SYSTEM, [], ChatMessage(Role.USER, "Who are you?"))
    rendered = _rendered(model, messages)
    assert rendered.startswith("<|im_start|>system\nYou are Manman")
    assert "You are a helpful assistant" not in rendered
    assert rendered.endswith("<|im_start|>assistant\n")
    reply = model.generate(messages)
    assert 1 <= reply.new_tokens <= 8
    assert reply.model_version == "tiny-qwen2"
