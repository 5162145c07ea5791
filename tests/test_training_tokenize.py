"""Training examples: only the assistant's words (and its end-of-turn marker) carry labels."""

from __future__ import annotations

from transformers import AutoTokenizer

from bot.core.types import ChatMessage, Role
from training.tokenize import IGNORE, encode_conversation

CONVERSATION = [
    ChatMessage(Role.SYSTEM, "You are Manman."),
    ChatMessage(Role.USER, "Hi there"),
    ChatMessage(Role.ASSISTANT, "Hello, friend"),
    ChatMessage(Role.USER, "Who are you?"),
    ChatMessage(Role.ASSISTANT, "I am Manman."),
]


def labelled_text(tokenizer, example) -> list[str]:
    return [tokenizer.decode([t]) for t, label in zip(example.input_ids, example.labels)
            if label != IGNORE]


def test_only_assistant_turns_are_trained_starter(llm):
    ex = encode_conversation(llm.tokenizer, CONVERSATION, cutoff=1024)
    assert "".join(labelled_text(llm.tokenizer, ex)) == "Hello, friend<|im_end|>I am Manman.<|im_end|>"
    rendered = llm.tokenizer.decode(ex.input_ids)
    assert rendered.startswith("<|im_start|>system\nYou are Manman.")
    assert all(label in (IGNORE, tok) for tok, label in zip(ex.input_ids, ex.labels))


def test_only_assistant_turns_are_trained_qwen2(tiny_qwen2_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    ex = encode_conversation(tokenizer, CONVERSATION[:1] + CONVERSATION[3:], cutoff=1024)
    assert "".join(labelled_text(tokenizer, ex)) == "I am Manman.<|im_end|>"


def test_long_conversations_keep_their_last_answer(llm):
    ex = encode_conversation(llm.tokenizer, CONVERSATION, cutoff=12)
    assert len(ex.input_ids) == len(ex.labels) == 12
    assert "".join(labelled_text(llm.tokenizer, ex)).endswith("I am Manman.<|im_end|>")
