"""Decoding user uploads in worker processes, away from everything else the bot does.

Decoding runs FFmpeg and a Python loop over packets on bytes anyone can send. In a thread of
the bot's own process, a flood of hostile files competes for the GIL with the event loop and
the model (measured: two decoding threads slowed generation 18×; at a lower nice level still
1.6×); a crash inside FFmpeg on a crafted file would take the bot down with it. In worker
processes at a lower CPU priority the same flood costs the model about 1.3× (see
bench/hostile.py), and a crash costs one refused upload: the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bot.audio.codec import PyAvCodec
from bot.errors import UnsupportedAudio
from bot.types import Pcm

log = logging.getLogger(__name__)

#: Worker processes run at this nice level: hostile uploads get the CPU the models leave.
DECODE_NICE = 10

_worker_codec: PyAvCodec | None = None


def _start_worker(max_seconds: float, max_bytes: int, max_cpu_seconds: float) -> None:
    global _worker_codec
    try:
        os.nice(DECODE_NICE)
    except (AttributeError, OSError):  # not on this platform: the CPU budget still holds
        pass
    _worker_codec = PyAvCodec(max_seconds=max_seconds, max_bytes=max_bytes,
                              max_cpu_seconds=max_cpu_seconds)


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

    async def decode(self, data: bytes) -> Pcm:
        pool = self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _decode, data)
        except BrokenProcessPool as err:
            # A worker died (a crash in FFmpeg, the OOM killer): this upload is refused and
            # the next one gets fresh workers.
            log.error("a decoder process died on a %d-byte upload; restarting the decoders",
                      len(data))
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise UnsupportedAudio("the decoder process died") from err

    async def warm_up(self) -> None:
        """Start the workers now, so the first voice note does not wait for them."""
        loop = asyncio.get_running_loop()
        pool = self._executor()
        await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
