"""The turn id: one name for one message, carried through every stage and every log line.

A :class:`~contextvars.ContextVar`, so it follows the turn into the tasks it starts and the
worker threads it hands models to (``asyncio.to_thread`` copies the context), and no function
has to pass it along. The inbox worker sets ``f"{platform}-{inbox_id}"`` before handing a
message to its adapter, so every replica that touches the message logs it under the same id;
the pipeline makes one up for a turn that arrives without one (web console, CLI).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: The id of the turn this task (or thread) works on; None outside any turn.
turn_id: ContextVar[str | None] = ContextVar("chatman_turn_id", default=None)


def new_turn_id() -> str:
    """A fresh id: short enough to read in a log line, random enough not to repeat."""
    return uuid.uuid4().hex[:12]


@contextmanager
def turn_scope(id: str | None = None) -> Iterator[str]:
    """Everything inside runs under turn ``id`` (a fresh one if None); the previous id is back
    afterwards."""
    token = turn_id.set(id or new_turn_id())
    try:
        yield turn_id.get() or ""
    finally:
        turn_id.reset(token)


@contextmanager
def ensure_turn() -> Iterator[str]:
    """Inside the current turn if there is one, else inside a fresh one."""
    current = turn_id.get()
    if current is not None:
        yield current
        return
    with turn_scope() as fresh:
        yield fresh
