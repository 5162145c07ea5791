"""A transformers causal LM answering with its own chat template."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bot.core.streaming import ReplyStream, drain
from bot.core.types import ChatMessage, LlmReply, Role
from bot.infra.devices import resolve_device
from bot.infra.llm.batching import BatchScheduler, BatchStats, Request, RequestStream, Rows
from bot.infra.llm.source import resolve_llm

if TYPE_CHECKING:
    # Imported for annotations only: importing torch and transformers takes seconds.
    import torch
    from transformers import BatchEncoding, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


class CausalLM(Protocol):
    """What generation needs of a causal LM, plain or peft-wrapped.

    transformers' types can't say it: ``PreTrainedModel`` lacks ``generate`` (each model class
    mixes ``GenerationMixin`` in) and peft's wrapper leaves ``generate`` unannotated.
    """

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None


def to_template_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """Chat-template dicts; in groups each user turn carries its speaker's name."""
    rendered = []
    for m in messages:
        content = m.content
        if m.role is Role.USER and m.speaker:
            content = f"{m.speaker}: {content}"
        rendered.append({"role": m.role.value, "content": content})
    return rendered


class TransformersChatModel:
    def __init__(
        self,
        model: str,
        *,
        cache_dir: Path,
        device: str = "auto",
        dtype: str = "auto",
        generation: GenerationSettings = GenerationSettings(),
        context_tokens: int = 1536,
        version: str | None = None,
        batch_window_ms: float = 15.0,
        max_batch: int = 8,
    ) -> None:
        """``version`` names the model in replies and logs (a registry version's name).

        Replies wanted together share a ``generate``: a reply waits up to ``batch_window_ms``
        for others to join its batch of at most ``max_batch`` (CHATMAN_LLM_BATCH_WINDOW_MS,
        CHATMAN_LLM_MAX_BATCH).
        """
        self.model_ref = model
        self.version_name = version
        self.cache_dir = cache_dir
        self.device_setting = device  # resolved at load: importing torch takes seconds
        self.device = "cpu"
        self.dtype_setting = dtype
        self.generation = generation
        self.context_tokens = context_tokens
        self.version = version or model
        self._model: CausalLM | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._load_lock = threading.Lock()
        # One generate at a time per model: the batch worker's and answer_many's (evaluation)
        # would share sampling seeds and memory.
        self._generate_lock = threading.Lock()
        self.batch_window_ms = batch_window_ms
        self.max_batch = max_batch
        self._scheduler = BatchScheduler(self._run_batch, window_ms=batch_window_ms,
                                         max_batch=max_batch)

    def __copy__(self) -> TransformersChatModel:
        """A copy shares the weights, the tokenizer and the generate lock, but batches on its
        own: its generation settings (what a copy is usually made to change) are its own."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._scheduler = BatchScheduler(twin._run_batch, window_ms=self.batch_window_ms,
                                         max_batch=self.max_batch)
        return twin

    def _torch_dtype(self) -> torch.dtype:
        import torch

        if self.dtype_setting != "auto":
            named: torch.dtype = getattr(torch, self.dtype_setting)
            return named
        if self.device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def _load_tokenizer(self) -> str:
        """Resolve the model and load its tokenizer; returns where the weights are."""
        from transformers import AutoTokenizer

        resolved = resolve_llm(self.model_ref, self.cache_dir)
        if self._tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(resolved.load_from)
            if tokenizer.chat_template is None:
                raise ValueError(f"{resolved.load_from} has no chat template")
            self._tokenizer = tokenizer
        self.version = self.version_name or resolved.version
        return resolved.load_from

    def weights_path(self) -> str:
        """Where ``from_pretrained`` finds the weights (a GGUF is de-quantised first)."""
        return self._load_tokenizer()

    def load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from transformers import AutoModelForCausalLM

            self.device = resolve_device(self.device_setting)
            load_from = self._load_tokenizer()
            log.info("loading LLM %s on %s", load_from, self.device)
            model = AutoModelForCausalLM.from_pretrained(
                load_from, dtype=self._torch_dtype()
            ).to(self.device)  # type: ignore[arg-type]  # @wraps(Module.to) hides the bound self
            model.eval()
            self._model = model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer alone, without loading the weights (counting needs no model)."""
        if self._tokenizer is None:
            with self._load_lock:
                if self._tokenizer is None:
                    self._load_tokenizer()
        assert self._tokenizer is not None  # _load_tokenizer sets it or raises
        return self._tokenizer

    def count_conversation_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of a whole training example as the chat template renders it."""
        ids = as_encoding(self.tokenizer.apply_chat_template(
            to_template_messages(messages), tokenize=True, return_dict=True
        ))["input_ids"]
        return len(ids)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._encode(messages)["input_ids"][0])

    def _encode(self, messages: Sequence[ChatMessage]) -> BatchEncoding:
        return as_encoding(self.tokenizer.apply_chat_template(
            to_template_messages(messages),
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        ))

    def fit_history(
        self, system: str, history: Sequence[ChatMessage], user: ChatMessage
    ) -> list[ChatMessage]:
        head = [ChatMessage(Role.SYSTEM, system)]
        history = list(history)
        while history:
            # A window must open on a user turn, or the model sees an answer to nothing.
            if history[0].role is not Role.USER:
                history.pop(0)
                continue
            candidate = head + history + [user]
            if self.count_prompt_tokens(candidate) <= self.context_tokens:
                return candidate
            history.pop(0)
        if self.count_prompt_tokens(head + [user]) > self.context_tokens:
            user = self._cut_to_fit(head, user)
        return head + [user]

    def _cut_to_fit(self, head: list[ChatMessage], user: ChatMessage) -> ChatMessage:
        """The end of a user turn too long for the budget: its last words are usually the
        question. Callers bound user text long before this; it is the last line of defence."""
        ids = self.tokenizer.encode(user.content, add_special_tokens=False)
        overhead = self.count_prompt_tokens(head + [ChatMessage(user.role, "", user.speaker)])
        if overhead >= self.context_tokens:
            # The system prompt alone is over budget: a settings mistake that cutting the
            # user's words can't fix, so they go whole.
            log.warning("the system prompt alone (%d tokens) exceeds CHATMAN_LLM_CONTEXT_TOKENS "
                        "(%d)", overhead, self.context_tokens)
            return user
        keep = max(1, self.context_tokens - overhead - 2)  # 2: a token may merge at the cut
        while True:  # tokens re-merge at the cut, so check and shorten until it fits
            content = decode_text(self.tokenizer, ids[-keep:])
            if keep == 1 or self.count_prompt_tokens(
                    head + [ChatMessage(user.role, content, user.speaker)]) <= self.context_tokens:
                break
            keep = max(1, keep - 8)
        log.warning("user turn of %d tokens cut to its last %d to fit the %d-token context "
                    "budget", len(ids), keep, self.context_tokens)
        return ChatMessage(user.role, content, user.speaker)

    def generate(self, messages: Sequence[ChatMessage]) -> LlmReply:
        return drain(self.stream(messages))

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        """Pieces of the reply as they are generated, in a batch with whatever other replies
        are wanted at the same time (see :mod:`bot.infra.llm.batching`); ``stop()`` ends this
        reply at its next token without ending the others."""
        self.load()
        request = Request(self._encode(messages)["input_ids"][0].tolist(), max_new_tokens)
        self._scheduler.submit(request)
        return RequestStream(request)

    @property
    def batch_stats(self) -> BatchStats:
        """How many batches the worker has run, for how many replies."""
        return self._scheduler.stats

    def close(self) -> None:
        """Stop the generation worker: replies still waiting fail, running ones are stopped.
        Idempotent; the model answers no more."""
        self._scheduler.close()

    def _run_batch(self, requests: list[Request]) -> None:
        """One ``generate`` for the batch, left-padded (as :func:`generate_batch`); each row
        streams to its own request and ends on its own.

        Sampling is seeded with ``generation.seed`` once per batch, so a sampled reply
        repeats exactly only when its batch does (alone, it always does).
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        assert self._model is not None and self._tokenizer is not None
        model, tokenizer = self._model, self._tokenizer
        rows = Rows(requests, decode=lambda ids: decode_text(tokenizer, ids),
                    stops=_stop_ids(model, tokenizer),
                    max_new_tokens=self.generation.max_new_tokens, version=self.version)
        prompts = rows.prompts
        if not prompts:
            return
        kwargs = generation_kwargs(self.generation, pad_token_id(tokenizer))
        kwargs["max_new_tokens"] = rows.max_new_tokens
        input_ids, mask = left_padded(prompts, kwargs["pad_token_id"])
        width = input_ids.shape[1]

        class RowStreamer(BaseStreamer):
            def put(self, value: torch.Tensor) -> None:
                if value.dim() == 1:  # the prompt comes first, as a 2-D batch: not news
                    rows.put(value.tolist())

            def end(self) -> None:
                pass  # rows end one by one; the worker ends the rest when generate returns

        class RowStops(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor,
                         **_: Any) -> torch.BoolTensor:
                done = torch.tensor(rows.done(int(input_ids.shape[1]) - width),
                                    dtype=torch.bool, device=input_ids.device)
                return done  # type: ignore[return-value]  # BoolTensor is a Tensor at run time

        with self._generate_lock:
            if self.generation.seed is not None and kwargs.get("do_sample"):
                torch.manual_seed(self.generation.seed)
            with torch.inference_mode():
                model.generate(input_ids=input_ids.to(self.device),
                               attention_mask=mask.to(self.device), **kwargs,
                               streamer=RowStreamer(),
                               stopping_criteria=StoppingCriteriaList([RowStops()]))
        rows.finish()

    def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                    settings: GenerationSettings, batch_size: int = 8) -> list[Generated]:
        """Answers to many prompts, batched, decoded as ``settings`` say (evaluation)."""
        self.load()
        assert self._model is not None and self._tokenizer is not None
        with self._generate_lock:
            return generate_batch(self._model, self._tokenizer, conversations, settings,
                                  batch_size)


@dataclass(frozen=True)
class Generated:
    """One generated answer; ``truncated``: it ran into the token cap before ending."""

    text: str
    new_tokens: int
    truncated: bool


def as_encoding(encoded: object) -> BatchEncoding:
    """``apply_chat_template``'s result when asked for a dict (``return_dict=True``): its
    declared return type also covers the text and bare-id forms."""
    from transformers import BatchEncoding

    assert isinstance(encoded, BatchEncoding)
    return encoded


def decode_text(tokenizer: PreTrainedTokenizerBase, ids: list[int] | torch.Tensor,
                skip_special_tokens: bool = True) -> str:
    """One sequence's text, special tokens left out unless asked for."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    assert isinstance(text, str)  # one sequence decodes to one string (a batch to a list)
    return text


def _stop_ids(model: CausalLM, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    return {i for i in ids if i is not None}


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """What batches are left-padded with: the pad token, else the end of sequence."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    assert isinstance(pad, int)
    return pad


def generation_kwargs(settings: GenerationSettings, pad_id: int) -> dict[str, Any]:
    """``generate``'s arguments for ``settings``: greedy at temperature 0, else sampled."""
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": pad_id,
                              "repetition_penalty": settings.repetition_penalty}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def left_padded(prompts: Sequence[Sequence[int]],
                pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of several prompts as one left-padded batch, and its attention mask."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return input_ids, mask


def generate_batch(model: CausalLM, tokenizer: PreTrainedTokenizerBase,
                   conversations: Sequence[Sequence[ChatMessage]],
                   settings: GenerationSettings, batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> list[Generated]:
    """Answers with left padding, greedy or sampled as ``settings`` say (evaluation, replay).

    Sampling is seeded once per call with ``settings.seed``, so a call repeats exactly; works
    for plain and peft-wrapped models alike.
    """
    import torch

    device = next(model.parameters()).device
    texts = [
        tokenizer.apply_chat_template(to_template_messages(c), add_generation_prompt=True,
                                      tokenize=False)
        for c in conversations
    ]
    stops = _stop_ids(model, tokenizer)
    kwargs = generation_kwargs(settings, pad_token_id(tokenizer))
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    answers: list[Generated] = []
    for i in range(0, len(texts), batch_size):
        chunk = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i : i + batch_size]]
        input_ids, mask = left_padded(chunk, kwargs["pad_token_id"])
        width = input_ids.shape[1]
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 **kwargs)
        for row in out:
            new = row[width:].tolist()
            ended = next((n for n, t in enumerate(new) if t in stops), None)
            used = new if ended is None else new[:ended]
            answers.append(Generated(decode_text(tokenizer, used).strip(),
                                     len(used), ended is None and len(new) >= settings.max_new_tokens))
        if progress:
            progress(len(answers), len(texts))
    return answers


def generate_greedy(model: CausalLM, tokenizer: PreTrainedTokenizerBase,
                    conversations: Sequence[Sequence[ChatMessage]],
                    max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers' texts (see :func:`generate_batch`)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0,
                                  repetition_penalty=1.0)
    return [g.text for g in generate_batch(model, tokenizer, conversations, settings, batch_size)]
