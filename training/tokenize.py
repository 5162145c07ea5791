"""Turning a conversation into input ids and labels that train only the assistant's words.

Each assistant turn's tokens are found by rendering the conversation up to that turn twice with
the model's own chat template — once ending in the generation prompt, once including the turn —
so the labels follow whatever markup the template uses (ChatML for SmolLM2 and Qwen2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.core.types import ChatMessage, Role
from bot.infra.llm.chat_model import as_encoding, decode_text, to_template_messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage],
         generation_prompt: bool) -> list[int]:
    return list(as_encoding(tokenizer.apply_chat_template(
        to_template_messages(messages), add_generation_prompt=generation_prompt,
        tokenize=True, return_dict=True,
    ))["input_ids"])


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage],
                        cutoff: int) -> Example:
    """Labels are the assistant turns (with their end-of-turn marker); all else is ignored.

    Conversations longer than ``cutoff`` tokens keep their end: the last answer is what the
    example exists to teach.
    """
    full = _ids(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m.role is not Role.ASSISTANT:
            continue
        prefix = _ids(tokenizer, messages[:i], generation_prompt=True)
        start, end = len(prefix), len(_ids(tokenizer, messages[: i + 1], generation_prompt=False))
        if full[:start] != prefix:
            raise ValueError("chat template is not prefix-stable; cannot mask non-assistant tokens")
        # Keep the end-of-turn token: the model must learn to stop. Drop the trailing newline
        # some templates add after it.
        labels[start:end] = full[start:end]
        while end > start and decode_text(tokenizer, full[end - 1 : end],
                                          skip_special_tokens=False).strip() == "":
            labels[end - 1] = IGNORE
            end -= 1
    if len(full) > cutoff:
        full, labels = full[-cutoff:], labels[-cutoff:]
    return Example(full, labels)
