"""Decoding user uploads in worker processes, away from everything else the bot does.

Decoding runs FFmpeg and a Python loop over packets on bytes anyone can send. In a thread of
the bot's own process, a flood of hostile files competes for the GIL with the event loop and
the model (measured: two decoding threads slowed generation 18×; at a lower nice level still
1.6×); a crash inside FFmpeg on a crafted file would take the bot down with it. In worker
processes at a lower CPU priority the same flood costs the model about 1.3× (see
bench/hostile.py). A worker that dies, or a decode that never returns (the CPU budget is only
checked between packets, so a hang inside FFmpeg would escape it), costs the decodes running at
that moment: they are refused, the workers are killed and the next upload gets fresh ones.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bot.core.errors import UnsupportedAudio
from bot.core.types import Pcm
from bot.infra.audio.codec import DecodeBudgetExceeded, PyAvCodec

log = logging.getLogger(__name__)

#: Worker processes run at this nice level: hostile uploads get the CPU the models leave.
DECODE_NICE = 10

_worker_codec: PyAvCodec | None = None


def _start_worker(max_seconds: float, max_bytes: int, max_cpu_seconds: float) -> None:
    global _worker_codec
    from bot.infra.logs import configure_logging

    configure_logging("WARNING")  # the codec's warnings, in our format (no secrets here)
    try:
        os.nice(DECODE_NICE)
    except (AttributeError, OSError):  # not on this platform: the CPU budget still holds
        pass
    _worker_codec = PyAvCodec(max_seconds=max_seconds, max_bytes=max_bytes,
                              max_cpu_seconds=max_cpu_seconds)
    _exit_with(os.getppid())


def _exit_with(parent: int) -> None:
    """A decoder whose bot was killed (SIGKILL: no clean-up) exits too, rather than live on
    holding the bot's stdout and memory."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _decode(data: bytes) -> Pcm:
    assert _worker_codec is not None
    return _worker_codec.decode(data)


def _ready() -> bool:
    return _worker_codec is not None


class IsolatedDecoder:
    """``await decode(data)``: :meth:`PyAvCodec.decode` in one of ``workers`` processes."""

    def __init__(self, codec: PyAvCodec, workers: int = 2) -> None:
        self.codec = codec
        self.workers = workers
        # Wall-clock limit of one decode: generous (workers are niced, so a busy machine
        # stretches them), but finite.
        self.wall_seconds = max(10.0, 10 * codec.max_cpu_seconds)
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the bot process has model threads that a fork would copy
            # mid-flight; workers import only the codec.
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.codec.max_seconds, self.codec.max_bytes,
                          self.codec.max_cpu_seconds))
        return self._pool

    async def warm_up(self) -> None:
        """Start the workers now, so the first voice note does not wait for them."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.workers)))

    async def decode(self, data: bytes) -> Pcm:
        pool = self._executor()
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(pool, _decode, data),
                self.wall_seconds)
        except BrokenProcessPool as err:
            # A worker died (a crash in FFmpeg, the OOM killer).
            log.error("a decoder process died on a %d-byte upload; restarting the decoders",
                      len(data))
            self._discard(pool)
            raise UnsupportedAudio("the decoder process died") from err
        except TimeoutError as err:
            log.error("decoding a %d-byte upload took over %.0f s; restarting the decoders",
                      len(data), self.wall_seconds)
            self._discard(pool)
            raise DecodeBudgetExceeded(f"no result in {self.wall_seconds:.0f} s") from err

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        _kill(pool)

    def close(self) -> None:
        if self._pool is not None:
            _kill(self._pool)
            self._pool = None


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool at once, whatever its workers are doing (shutdown alone would wait)."""
    # ProcessPoolExecutor has no public way to stop a busy worker; its (private) process table
    # is the only handle on them, the one the stdlib uses itself when a pool breaks.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join(timeout=5)
