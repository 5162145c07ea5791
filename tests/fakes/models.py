"""Model stand-ins for the fast tier: each implements its port (bot/core/ports.py) in a few
lines, loads nothing, and records what it was asked."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from threading import Event
from typing import Any

import numpy as np

from bot.core.streaming import GeneratorReplyStream, ReplyStream
from bot.core.types import ChatMessage, LlmReply, Pcm, Role, Transcript


class EchoASR:
    name = "echo-asr"

    def __init__(self, text: str = "hello there") -> None:
        self.text = text
        self.loads = 0

    def load(self) -> None:
        self.loads += 1

    def transcribe(self, audio: Pcm) -> Transcript:
        return Transcript(self.text, "en", audio.duration_s)


class ScriptedLLM:
    """Answers every turn with ``answer``; ``fail_load`` makes load() raise (a broken export)."""

    def __init__(self, version: str = "fake-base", answer: str = "I am a fake.",
                 fail_load: bool = False) -> None:
        self.version, self.answer, self.fail_load = version, answer, fail_load
        self.loads = 0
        self.prompts: list[list[ChatMessage]] = []
        self.caps: list[int | None] = []  # each reply's max_new_tokens, as asked

    def load(self) -> None:
        self.loads += 1
        if self.fail_load:
            raise OSError(f"{self.version}: no weights here")

    def fit_history(self, system: str, history: Sequence[ChatMessage],
                    user: ChatMessage) -> list[ChatMessage]:
        return [ChatMessage(Role.SYSTEM, system), *history, user]

    def generate(self, messages: Sequence[ChatMessage]) -> LlmReply:
        self.prompts.append(list(messages))
        return LlmReply(self.answer, 5, 10, self.version)

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        self.caps.append(max_new_tokens)
        return GeneratorReplyStream(lambda stop: self._pieces(messages, stop))

    def _pieces(self, messages: Sequence[ChatMessage],
                stop: Event) -> Generator[str, None, LlmReply]:
        reply = self.generate(messages)
        for n, word in enumerate(reply.text.split(" ")):
            if stop.is_set():
                break
            yield word if n == 0 else " " + word
        return reply

    def count_conversation_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages)


class ToneTTS:
    name = "tone-tts"

    def load(self) -> None:
        pass

    def synthesize(self, text: str, language: str) -> Pcm:
        t = np.arange(16_000 * 0.5) / 16_000
        return Pcm((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)


#: A ChatML-like template: enough for prompt fitting and counting to run their real code.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def write_tiny_tokenizer(out: Path) -> Path:
    """A model folder with a word-level tokenizer and a chat template, and no weights: what a
    backend that only counts and fits prompts (the serving-engine one) reads. Built here, so
    nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for word in "system user assistant hello there hi i am a you are who what".split():
        vocab.setdefault(word, len(vocab))
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # unannotated upstream
        tokenizer_object=words, unk_token="<unk>", bos_token="<|im_start|>",
        eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return out


class HeldReplies:
    """A model's ``stream`` held at its start: ``entered`` is set once a reply is asked for,
    and the reply goes on once ``release`` is set (a turn caught inside the model)."""

    def __init__(self, stream: Callable[[Sequence[ChatMessage]], ReplyStream]) -> None:
        self.entered, self.release = Event(), Event()
        self._stream = stream

    def __call__(self, messages: Sequence[ChatMessage],
                 max_new_tokens: int | None = None) -> ReplyStream:
        self.entered.set()
        self.release.wait(60)
        return self._stream(messages)


def hold_replies(monkeypatch: Any, model: Any) -> HeldReplies:
    """Hold ``model``'s replies (see :class:`HeldReplies`) for the test's duration."""
    held = HeldReplies(model.stream)
    monkeypatch.setattr(model, "stream", held)
    return held
