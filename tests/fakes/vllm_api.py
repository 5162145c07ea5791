"""A local vLLM OpenAI-compatible server over real HTTP, as vLLM's docs and source describe it.

What it models (``vllm serve BASE --enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``,
see docs/features/lora.md and ``vllm/entrypoints/openai/models/serving.py``):

* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 with the text ``Success:
  LoRA adapter '<name>' added successfully.``; 400 ``InvalidUserInput`` when a field is missing
  or the name is loaded already (``... has already been loaded ...``) unless ``load_inplace``;
  404 when the path holds no adapter (``adapter_config.json``);
* ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: 200, or 404 ``NotFoundError`` for a name
  not loaded;
* ``GET /v1/models``: the base, then each adapter (``parent`` = the base, ``root`` = its path);
* ``POST /v1/chat/completions``: ``model`` must be the base or a loaded adapter (else 404 "The
  model `x` does not exist."); the answer is ``answers[model]`` (or a default), streamed as SSE
  chunks, with ``finish_reason`` "length" when ``max_tokens`` words cut it and, when
  ``stream_options.include_usage``, a last chunk with empty ``choices`` and the usage;
* ``--api-key``: every /v1 route needs ``Authorization: Bearer <key>``, else 401
  ``{"error": "Unauthorized"}``.

Errors are vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``.
``restart()`` forgets the adapters, as a restarted vLLM does. Words stand in for tokens.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tests.fakes import Json, LocalServer


@dataclass(frozen=True)
class ChatRequest:
    model: str
    body: Json


def _error(message: str, err_type: str, status: int, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": err_type, "param": param,
                                        "code": status}}, status=status)


class FakeVllm(LocalServer):
    def __init__(self, base: str = "base-model", *, api_key: str | None = None,
                 answer: str = "Hello from the engine.") -> None:
        self.base, self.api_key, self.answer = base, api_key, answer
        self.answers: dict[str, str] = {}
        self.adapters: dict[str, str] = {}  # name → path
        self.loads: list[Json] = []  # every load_lora_adapter body, accepted or not
        self.chats: list[ChatRequest] = []
        self.authorizations: list[str | None] = []
        self._ids = itertools.count(1)

    def restart(self) -> None:
        self.adapters.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._auth)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(status=200)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path.startswith("/v1"):
            header = request.headers.get("Authorization")
            self.authorizations.append(header)
            if self.api_key is not None and header != f"Bearer {self.api_key}":
                return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _models(self, _: web.Request) -> web.Response:
        data = [{"id": self.base, "object": "model", "owned_by": "vllm", "root": self.base,
                 "parent": None}]
        data += [{"id": name, "object": "model", "owned_by": "vllm", "root": path,
                  "parent": self.base} for name, path in self.adapters.items()]
        return web.json_response({"object": "list", "data": data})

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.loads.append(body)
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return _error("Both 'lora_name' and 'lora_path' must be provided.",
                          "InvalidUserInput", 400)
        if not body.get("load_inplace") and name in self.adapters:
            return _error(f"The lora adapter '{name}' has already been loaded. If you want to "
                          "load the adapter in place, set 'load_inplace' to True.",
                          "InvalidUserInput", 400)
        if not (Path(path) / "adapter_config.json").is_file():
            return _error(f"Loading lora {name} failed: No adapter found for {path}",
                          "NotFoundError", 404)
        self.adapters[name] = path
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("lora_name")
        if not name:
            return _error("'lora_name' needs to be provided to unload a LoRA adapter.",
                          "InvalidUserInput", 400)
        if name not in self.adapters:
            return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.adapters[name]
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model") or self.base
        if model != self.base and model not in self.adapters:
            return _error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")
        self.chats.append(ChatRequest(model, body))
        words = self.answers.get(model, self.answer).split(" ")
        cap = body.get("max_tokens")
        said = words if cap is None else words[:cap]
        finish = "length" if len(said) < len(words) else "stop"
        prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": len(said),
                 "total_tokens": prompt + len(said)}
        rid, created = f"chatcmpl-{next(self._ids)}", int(time.time())

        def chunk(choices: list[Json], **extra: object) -> bytes:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n".encode()

        if not body.get("stream"):
            return web.json_response({
                "id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": " ".join(said)},
                             "finish_reason": finish}],
                "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]))
        for n, word in enumerate(said):
            await response.write(chunk([{"index": 0, "delta": {
                "content": word if n == 0 else " " + word}, "finish_reason": None}]))
        await response.write(chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(chunk([], usage=usage))
        await response.write(b"data: [DONE]\n\n")
        return response
