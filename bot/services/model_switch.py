"""Hot swap: serve what the registry says is active, switching models between turns.

The switcher knows the registry and the pipeline through their ports and builds models with a
:class:`~bot.core.ports.ModelFactory`, so it never touches a concrete backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bot.core.errors import EngineUnavailable
from bot.core.persona import PersonaProfile
from bot.core.ports import ModelFactory
from bot.core.registry import RegistryRepository, Served
from bot.services.pipeline import VoicePipeline

log = logging.getLogger(__name__)

#: A version that fails to load is marked failed and the registry asked again; this bounds
#: how many in a row one sync tries before giving up until the next one.
MAX_FALLBACKS = 5


class ModelSwitcher:
    def __init__(self, *, registry: RegistryRepository, pipeline: VoicePipeline,
                 persona: PersonaProfile, languages: list[str], base_ref: str,
                 factory: ModelFactory) -> None:
        """``base_ref``: what answers when no version is active (CHATMAN_LLM_MODEL);
        ``languages``: those turns are answered in (their prompts change with the version)."""
        self.registry, self.pipeline, self.factory = registry, pipeline, factory
        self.persona, self.languages, self.base_ref = persona, languages, base_ref
        # Nothing decided yet: the first sync always picks (the pipeline's model is the base).
        self.served = Served(None, base_ref)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop :meth:`request` wakes (set when the application starts)."""
        self._loop = loop

    def request(self) -> None:
        """Thread-safe: the active version may have changed (admin command, CLI, trainer)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def follow(self, poll_seconds: float) -> None:
        """Sync on every :meth:`request`, and every ``poll_seconds`` for changes made by other
        processes (``chatman models activate`` from a shell)."""
        while True:
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on 3.11 it can swallow a cancellation (see inbox_worker).
                async with asyncio.timeout(poll_seconds):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.sync()
            except Exception:
                log.exception("could not follow the model registry")

    async def release(self, version: str) -> str | None:
        """Serve ``version`` if the registry made it active; None when it answers now, else why
        it does not."""
        await self.sync()
        if self.served.version == version:
            return None
        got = await asyncio.to_thread(self.registry.get, version)
        return "; ".join(got.reasons) if got else "unknown version"

    async def sync(self, load: bool = True) -> None:
        """Serve what the registry says is active, swapping between requests.

        The new model is loaded completely before the pipeline sees it; turns already running
        finish on the model they started with (they hold their own reference). A version that
        fails to load is marked failed, and the one before it is served instead.
        """
        async with self._lock:
            for _ in range(MAX_FALLBACKS):
                served = await asyncio.to_thread(self.registry.served, self.base_ref)
                if served == self.served:
                    return
                llm = self.factory(served.model_ref, served.version)
                try:
                    if load:
                        await asyncio.to_thread(llm.load)
                except EngineUnavailable as exc:
                    # The engine is down, not the version: keep answering with what answers
                    # now (or saying the engine is down) and switch at a later sync.
                    log.warning("could not switch to %s yet: %s",
                                served.version or served.model_ref, exc)
                    return
                except Exception as exc:
                    log.exception("could not load model %s", served.version or served.model_ref)
                    if served.version is None:
                        raise
                    await asyncio.to_thread(self.registry.fail, served.version,
                                            f"could not be loaded: {type(exc).__name__}: {exc}")
                    continue
                # Model and prompt change together, between turns (no await in between).
                previous, self.pipeline.llm, self.served = self.pipeline.llm, llm, served
                self.pipeline.system_prompts = self.persona.prompts(self.languages,
                                                                    served.system_prompt)
                log.info("now answering with %s (was %s)", llm.version, previous.version)
                return
