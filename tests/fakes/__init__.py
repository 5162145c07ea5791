"""Local fakes of the chat platforms' public APIs, over real HTTP and websockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(predicate: Callable[[], T], timeout: float, describe: Callable[[], str]) -> T:
    """The first truthy value of ``predicate``, polled; fails with ``describe()`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out; {describe()}")
