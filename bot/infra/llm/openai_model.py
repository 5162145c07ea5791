"""The chat model on an OpenAI-compatible serving engine: vLLM in production, or SGLang,
llama.cpp's server, Ollama, ``transformers serve``.

The engine generates; this process still owns the prompt. History is fitted to the context
budget with the model's own tokenizer (an unloaded :class:`TransformersChatModel`: tokenizer
only, no weights), so a turn sends exactly what the in-process backend would have generated
from, and is decoded the same way (reply cap, temperature, top-p, seed, repetition penalty).

Failures of the engine (down, timing out, answering with an error) are
:class:`~bot.core.errors.EngineUnavailable`: the user is told to try again, nothing is stored.
The client retries connection errors and 408/429/5xx answers itself, with backoff
(``CHATMAN_LLM_RETRIES``); a stream that breaks half-way is not retried (its words are out).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from bot.core.errors import EngineUnavailable
from bot.core.streaming import GeneratorReplyStream, ReplyStream, drain
from bot.core.types import ChatMessage, LlmReply
from bot.infra.llm.chat_model import (
    Generated,
    GenerationSettings,
    TransformersChatModel,
    to_template_messages,
)
from bot.infra.llm.served import ServedNames, adapter_dir, served_model_name

if TYPE_CHECKING:
    import openai
    from openai import Stream
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

log = logging.getLogger(__name__)

#: What the client sends as the key when none is set: the library insists on one, and engines
#: started without ``--api-key`` ignore it (vLLM's own examples use this word).
NO_KEY = "EMPTY"


class ModelNotServed(LookupError):
    """The engine answers, but not for this model: a version it cannot serve (the switcher
    marks it failed and the previous one keeps answering)."""


class ServingEngine:
    """One engine and the client that talks to it, shared by every model version on it."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        # The engine's own routes (vLLM's /v1/load_lora_adapter) hang off its root.
        self.root = self.base_url.removesuffix("/v1")
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_KEY,
                                    timeout=timeout, max_retries=retries)
        # vLLM, SGLang and llama.cpp take repetition_penalty; `transformers serve` refuses any
        # field outside OpenAI's schema (422). Learned on the first refusal, then left out.
        self.takes_repetition_penalty = True

    def describe(self, exc: Exception) -> str:
        """One line on what went wrong, for logs and the doctor (never the API key)."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return f"the engine at {self.base_url} did not answer in time"
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            why = f" ({type(cause).__name__}: {cause})" if cause else ""
            return f"the engine at {self.base_url} is not reachable{why}"
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return (f"the engine at {self.base_url} refused the API key ({exc.status_code}): "
                    "check CHATMAN_LLM_API_KEY")
        if isinstance(exc, openai.APIStatusError):
            return f"the engine at {self.base_url} answered {exc.status_code}: {_body_text(exc)}"
        return f"the engine at {self.base_url} failed: {type(exc).__name__}: {exc}"

    def models(self) -> list[str]:
        """The ids the engine lists (GET /v1/models); raises EngineUnavailable."""
        import openai

        try:
            return [m.id for m in self.client.models.list()]
        except openai.APIError as exc:
            raise EngineUnavailable(self.describe(exc)) from exc

    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter under ``name`` (vLLM: POST /v1/load_lora_adapter, which needs
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); loaded already is fine."""
        import openai

        try:
            self.client.post(f"{self.root}/v1/load_lora_adapter", cast_to=str,
                             body={"lora_name": name, "lora_path": path})
        except openai.BadRequestError as exc:
            if "already been loaded" in _body_text(exc):
                return
            raise ModelNotServed(f"the engine would not load adapter {name} from {path}: "
                                 f"{_body_text(exc)}") from exc
        except openai.NotFoundError as exc:
            raise EngineUnavailable(
                f"the engine at {self.root} has no /v1/load_lora_adapter: start vLLM with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set "
                "CHATMAN_LLM_LORA_ADAPTERS=false") from exc
        except openai.APIError as exc:
            raise EngineUnavailable(self.describe(exc)) from exc
        log.info("LoRA adapter %s loaded into the engine from %s", name, path)


def _body_text(exc: openai.APIStatusError) -> str:
    """The engine's own words for an error: OpenAI's {"error": {"message"}}, vLLM's older
    {"message"}, FastAPI's {"detail"}, or the body as it came."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])
    return str(body if body is not None else exc.message)


class OpenAIChatModel:
    """:class:`~bot.core.ports.ChatModel` on an engine's /v1/chat/completions (SSE streams)."""

    def __init__(self, model: str, *, engine: ServingEngine, names: ServedNames,
                 generation: GenerationSettings,
                 context_tokens: int = 1536, version: str | None = None) -> None:
        """``model``: the base's reference or a version's exported folder (the tokenizer comes
        from there); ``version`` names the model in replies and on the engine."""
        self.model_ref, self.version_name = model, version
        self.engine, self.names, self.generation = engine, names, generation
        # Prompt fitting and counting exactly as in process: the same tokenizer and template.
        self.local = TransformersChatModel(model, cache_dir=names.cache_dir,
                                           context_tokens=context_tokens, version=version)
        self.version = version or model
        self.served_name: str | None = None
        self._ready = False
        self._ready_lock = threading.Lock()

    # --- loading ---------------------------------------------------------------------
    def _prepare(self) -> str:
        """Tokenizer, served name and (LoRA mode) the adapter on the engine; returns the name."""
        with self._ready_lock:
            if self._ready and self.served_name is not None:
                return self.served_name
            self.local.tokenizer  # noqa: B018  # loads it, or raises on a folder without one
            self.version = self.local.version
            name = served_model_name(self.model_ref, self.version_name, self.names)
            self.served_name = name
            if self._lora:
                self.engine.load_adapter(name, str(adapter_dir(self.model_ref)))
            self._ready = True
            return name

    def load(self) -> None:
        """Check the engine answers as this model: one token, which also makes engines that
        load models on demand load it now rather than under the first user's turn."""
        import openai

        name = self._prepare()
        g = self.generation
        try:
            # Decoded as the turns will be: `transformers serve --continuous-batching` keeps the
            # sampling settings of the first request it sees for every later one.
            self.engine.client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                temperature=g.temperature, top_p=g.top_p if g.temperature > 0 else openai.omit,
                seed=g.seed if g.seed is not None else openai.omit)
        except openai.NotFoundError as exc:
            raise ModelNotServed(f"the engine at {self.engine.base_url} does not serve {name}: "
                                 f"{_body_text(exc)}") from exc
        except openai.APIError as exc:
            raise EngineUnavailable(self.engine.describe(exc)) from exc
        log.info("LLM %s answers on the engine at %s as %s", self.version,
                 self.engine.base_url, name)

    # --- prompts -----------------------------------------------------------------------
    def fit_history(self, system: str, history: Sequence[ChatMessage],
                    user: ChatMessage) -> list[ChatMessage]:
        return self.local.fit_history(system, history, user)

    def count_conversation_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self.local.count_conversation_tokens(messages)

    # --- generating --------------------------------------------------------------------
    def generate(self, messages: Sequence[ChatMessage]) -> LlmReply:
        return drain(self.stream(messages))

    def stream(self, messages: Sequence[ChatMessage],
               max_new_tokens: int | None = None) -> ReplyStream:
        """The reply as the engine streams it (SSE). ``stop()`` closes the response at the
        next piece; the engine aborts a generation whose client went away."""
        settings = (replace(self.generation, max_new_tokens=max_new_tokens) if max_new_tokens
                    else None)
        return GeneratorReplyStream(lambda stop: self._stream(messages, stop, settings))

    def answer_many(self, conversations: Sequence[Sequence[ChatMessage]],
                    settings: GenerationSettings, batch_size: int = 8) -> list[Generated]:
        """Answers to many prompts decoded as ``settings`` say (``chatman eval --engine``):
        ``batch_size`` requests in flight at once, and the engine batches them. Each request
        carries ``settings.seed``, so a draw repeats on engines that honour seeds (vLLM)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(conversation: Sequence[ChatMessage]) -> Generated:
            reply = drain(GeneratorReplyStream(
                lambda stop: self._stream(conversation, stop, settings)))
            return Generated(reply.text, reply.new_tokens, reply.truncated)

        with ThreadPoolExecutor(max_workers=batch_size, thread_name_prefix="engine-eval") as pool:
            return list(pool.map(one, conversations))

    def _open(self, name: str, messages: Sequence[ChatMessage],
              g: GenerationSettings) -> Stream[ChatCompletionChunk]:
        """The SSE response, decoded as ``g`` says; raises EngineUnavailable."""
        import openai

        sent = cast("list[ChatCompletionMessageParam]", to_template_messages(messages))
        reloaded = False
        for _ in range(3):
            penalty = g.repetition_penalty != 1.0 and self.engine.takes_repetition_penalty
            try:
                return self.engine.client.chat.completions.create(
                    model=name, messages=sent, stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=g.max_new_tokens, temperature=g.temperature,
                    top_p=g.top_p if g.temperature > 0 else openai.omit,
                    seed=g.seed if g.seed is not None else openai.omit,
                    # Not OpenAI's field: vLLM & co. read it from the body's extras.
                    extra_body={"repetition_penalty": g.repetition_penalty} if penalty else None)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if penalty and "repetition_penalty" in _body_text(exc):
                    log.warning("the engine at %s refuses repetition_penalty; replies are "
                                "decoded without it", self.engine.base_url)
                    self.engine.takes_repetition_penalty = False
                    continue
                raise EngineUnavailable(self.engine.describe(exc)) from exc
            except openai.NotFoundError as exc:
                if self._lora and not reloaded:
                    # A restarted engine forgets adapters loaded at run time: load it again.
                    reloaded = True
                    self._load_adapter(name)
                    continue
                raise EngineUnavailable(self.engine.describe(exc)) from exc
            except openai.APIError as exc:
                raise EngineUnavailable(self.engine.describe(exc)) from exc
        raise EngineUnavailable(f"the engine at {self.engine.base_url} kept refusing {name}")

    @property
    def _lora(self) -> bool:
        return self.version_name is not None and self.names.lora_adapters

    def _load_adapter(self, name: str) -> None:
        try:
            self.engine.load_adapter(name, str(adapter_dir(self.model_ref)))
        except ModelNotServed as exc:
            raise EngineUnavailable(str(exc)) from exc

    def _stream(self, messages: Sequence[ChatMessage], stop: threading.Event,
                settings: GenerationSettings | None = None) -> Generator[str, None, LlmReply]:
        import httpx2
        import openai

        try:
            name = self._prepare()
        except ModelNotServed as exc:
            raise EngineUnavailable(str(exc)) from exc
        response = self._open(name, messages, settings or self.generation)
        pieces: list[str] = []
        finish: str | None = None
        usage = None
        try:
            for chunk in response:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish = choice.finish_reason
                    if choice.delta.content:
                        pieces.append(choice.delta.content)
                        yield choice.delta.content
                if stop.is_set():
                    break
        except (openai.APIError, httpx2.HTTPError) as exc:
            # The connection broke half-way: what was said is out, the rest never comes.
            raise EngineUnavailable(f"{self.engine.describe(exc)} (mid-reply)") from exc
        finally:
            response.close()
        text = "".join(pieces).strip()
        if usage is not None and finish is not None:
            prompt_tokens, new_tokens = usage.prompt_tokens, usage.completion_tokens
        else:  # stopped early, or an engine that does not count: count what was sent and said
            prompt_tokens = self.local.count_prompt_tokens(messages)
            new_tokens = len(self.local.tokenizer.encode(text, add_special_tokens=False))
        return LlmReply(text=text, new_tokens=new_tokens, prompt_tokens=prompt_tokens,
                        model_version=self.version, truncated=finish == "length",
                        stopped=stop.is_set() and finish is None)
