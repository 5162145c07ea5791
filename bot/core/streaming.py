"""A reply as the model writes it (:meth:`bot.core.ports.ChatModel.stream`).

Iterating a :class:`ReplyStream` yields pieces of text; when iteration ends, ``reply`` holds the
whole :class:`~bot.core.types.LlmReply` (its text, token counts, whether it hit the cap).
``stop()`` asks the model to stop early, from any thread: the speech budget is spent, so
nothing more it writes would be said. Iteration then ends at the next token and ``reply`` says
what was written (``stopped=True``). ``close()`` abandons the stream (an error elsewhere) and
releases what it holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from typing import Protocol

from bot.core.types import LlmReply


class ReplyStream(Protocol):
    def __iter__(self) -> Iterator[str]: ...

    def stop(self) -> None:
        """Thread-safe: stop generating; iteration ends soon after."""

    def close(self) -> None:
        """Abandon the stream (iteration may not have ended); idempotent."""

    @property
    def reply(self) -> LlmReply:
        """The whole reply; only once iteration has ended."""


class GeneratorReplyStream:
    """A :class:`ReplyStream` made from a generator function that yields pieces, returns the
    reply, and stops soon after its ``stop`` event is set."""

    def __init__(self, make: Callable[[threading.Event], Generator[str, None, LlmReply]]) -> None:
        self._stop = threading.Event()
        self._gen = make(self._stop)
        self._reply: LlmReply | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                piece = next(self._gen)
            except StopIteration as done:
                self._reply = done.value
                return
            yield piece

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._gen.close()

    @property
    def reply(self) -> LlmReply:
        if self._reply is None:
            raise RuntimeError("the reply is known once the stream has been read to its end")
        return self._reply


def drain(stream: ReplyStream) -> LlmReply:
    """Read a stream to its end; its whole reply (what ``generate`` returns)."""
    try:
        for _ in stream:
            pass
    finally:
        stream.close()
    return stream.reply
