"""Concurrent replies share one ``generate`` call.

One worker thread owns generation. A reply is a :class:`Request` in a queue; the worker takes
the first one waiting, gathers what else arrives within the batch window (up to the largest
batch), and runs them together (see ``TransformersChatModel._run_batch``). Requests that come
while a batch runs wait for the next one: a batch's rows are fixed once ``generate`` starts.
:class:`Rows` turns each decoding step's tokens into each reply's pieces and ends each row on
its own (a stop id, the token cap, or its consumer's ``stop()``), so one reply never waits for
its batch's longest.

The worker lives only while there is work: it starts with the first request and ends when the
queue is empty. So a model dropped by a hot swap is not kept alive (nor its weights in memory)
by a thread waiting on an empty queue.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from bot.core.types import LlmReply

log = logging.getLogger(__name__)

INCOMPLETE = "\ufffd"  # what decoding shows for a multi-byte character cut between tokens


@dataclass(frozen=True)
class BatchStats:
    """What the worker has run so far: ``batches`` generate calls for ``replies`` replies."""

    batches: int = 0
    replies: int = 0
    largest: int = 0


class Request:
    """One reply wanted: its prompt (token ids, unpadded), its consumer's stop flag, and the
    channel the worker answers on (pieces, then the reply or an error)."""

    def __init__(self, prompt: list[int], max_new_tokens: int | None = None) -> None:
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens  # None: the batch's default
        self.stop = threading.Event()
        self.arrived = time.monotonic()
        self.answered = False  # touched by the worker only (and close(), before the worker has it)
        self._out: queue.SimpleQueue[str | LlmReply | BaseException] = queue.SimpleQueue()

    def send(self, piece: str) -> None:
        self._out.put(piece)

    def finish(self, reply: LlmReply) -> None:
        self.answered = True
        self._out.put(reply)

    def fail(self, error: BaseException) -> None:
        if not self.answered:
            self.answered = True
            self._out.put(error)

    def next_item(self) -> str | LlmReply | BaseException:
        return self._out.get()


class RequestStream:
    """The :class:`~bot.core.streaming.ReplyStream` a :class:`Request`'s consumer reads."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._reply: LlmReply | None = None
        self._over = False

    def __iter__(self) -> Iterator[str]:
        while not self._over:
            item = self._request.next_item()
            if isinstance(item, LlmReply):
                self._reply, self._over = item, True
            elif isinstance(item, BaseException):
                self._over = True
                raise item
            else:
                yield item

    def stop(self) -> None:
        self._request.stop.set()

    def close(self) -> None:
        # Nobody reads on: the worker ends the row at its next step, like a stop.
        self._request.stop.set()

    @property
    def reply(self) -> LlmReply:
        if self._reply is None:
            raise RuntimeError("the reply is known once the stream has been read to its end")
        return self._reply


class BatchScheduler:
    """The queue and the worker; ``run`` generates one batch (it answers every request)."""

    def __init__(self, run: Callable[[list[Request]], None], *, window_ms: float,
                 max_batch: int, name: str = "llm-batch") -> None:
        if max_batch < 1 or window_ms < 0:
            raise ValueError("max_batch must be at least 1 and window_ms not negative")
        self._run = run
        self._window = window_ms / 1000
        self._max_batch = max_batch
        self._name = name
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._worker: threading.Thread | None = None
        self._closed = threading.Event()  # read again after each wait: close() sets it meanwhile
        self.stats = BatchStats()

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed.is_set():
                raise RuntimeError("the model has been closed")
            self._waiting.append(request)
            self._cond.notify()
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._worker.start()

    def close(self) -> None:
        """Stop: waiting requests fail, the running batch's rows are stopped (their consumers
        get what was written, ``stopped=True``), and the worker is joined. Idempotent."""
        with self._cond:
            self._closed.set()
            waiting, self._waiting = list(self._waiting), deque()
            running, worker = list(self._running), self._worker
            self._cond.notify_all()
        for request in waiting:
            request.fail(RuntimeError("the model was closed before this reply began"))
        for request in running:
            request.stop.set()
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    def _take(self) -> list[Request] | None:
        """The next batch, or None when there is no work (the worker then ends)."""
        with self._cond:
            if self._closed.is_set() or not self._waiting:
                self._worker = None
                return None
            batch = [self._waiting.popleft()]
            # The window counts from the first request's arrival: requests that queued while
            # the previous batch ran have waited long enough already.
            deadline = batch[0].arrived + self._window
            while len(batch) < self._max_batch and not self._closed.is_set():
                if self._waiting:
                    batch.append(self._waiting.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed.is_set():
                self._worker = None
                for request in batch:
                    request.fail(RuntimeError("the model was closed before this reply began"))
                return None
            self._running = batch
            # Counted as it starts, so a caller holding its reply sees its batch counted.
            s = self.stats
            self.stats = BatchStats(s.batches + 1, s.replies + len(batch),
                                    max(s.largest, len(batch)))
            return batch

    def _work(self) -> None:
        batch: list[Request] = []
        try:
            while (taken := self._take()) is not None:
                batch = taken
                try:
                    self._run(batch)
                except Exception as exc:  # every unanswered request of the batch raises it
                    log.exception("generating a batch of %d failed", len(batch))
                    for request in batch:
                        request.fail(exc)
                finally:
                    with self._cond:
                        self._running = []
                batch = []
        finally:
            # Only something other than an Exception gets here with work left (the thread is
            # ending): nobody may wait forever on an answer.
            ended = RuntimeError("the generation worker ended")
            for request in batch:
                request.fail(ended)
            with self._cond:
                if self._worker is threading.current_thread():
                    self._worker = None
                    left, self._waiting = list(self._waiting), deque()
                    for request in left:
                        request.fail(ended)


@dataclass
class _Row:
    request: Request
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # the text its consumer has had
    cut: int | None = None  # how many tokens it keeps, once its consumer has asked to stop
    ended: bool = False


class Rows:
    """Each request's share of one batched ``generate``: its tokens, the text sent so far,
    and how it ended. Called from the worker only (the streamer and stopping criteria)."""

    def __init__(self, requests: Sequence[Request], *, decode: Callable[[list[int]], str],
                 stops: set[int], max_new_tokens: int, version: str) -> None:
        self._decode = decode
        self._stops = stops
        self._max_new_tokens = max_new_tokens
        self._version = version
        self._rows: list[_Row] = []
        for request in requests:
            if request.stop.is_set():  # stopped (or abandoned) while it waited: nothing to say
                request.finish(self._reply(request, [], "", truncated=False, stopped=True))
            else:
                self._rows.append(_Row(request))

    def cap(self, row: _Row) -> int:
        return row.request.max_new_tokens or self._max_new_tokens

    @property
    def max_new_tokens(self) -> int:
        """The batch's ``generate`` cap: the largest of its rows' (each row ends at its own)."""
        return max((self.cap(row) for row in self._rows), default=self._max_new_tokens)

    @property
    def prompts(self) -> list[list[int]]:
        """The rows' prompts, in row order (requests stopped before they began have none)."""
        return [row.request.prompt for row in self._rows]

    def put(self, step: Sequence[int]) -> None:
        """One decoding step's new tokens, one per row. A row that has ended gets padding."""
        for row, token in zip(self._rows, step, strict=True):
            if row.ended:
                continue
            row.tokens.append(token)
            if token in self._stops:
                self._end(row, eos=True)
            elif len(row.tokens) >= self.cap(row):
                self._end(row)
            elif row.cut is not None and len(row.tokens) >= row.cut:
                self._end(row)
            else:
                self._send_new_text(row)

    def done(self, generated: int) -> list[bool]:
        """Stopping criteria, ``generated`` tokens into the batch: which rows are done.

        A consumer's stop keeps the tokens generated so far: depending on the transformers
        version, this step's tokens reach :meth:`put` before or after this call.
        """
        for row in self._rows:
            if not row.ended and row.cut is None and row.request.stop.is_set():
                row.cut = generated
                if len(row.tokens) >= row.cut:
                    self._end(row)
        return [row.ended or row.cut is not None for row in self._rows]

    def finish(self) -> None:
        """``generate`` has returned: rows still open end with what they have."""
        for row in self._rows:
            if not row.ended:
                self._end(row)

    def _send_new_text(self, row: _Row) -> None:
        text = self._decode(row.tokens)
        if text.endswith(INCOMPLETE):
            return  # the character's other bytes come with the next token
        piece = text[len(row.sent):]
        row.sent = text
        if piece:
            row.request.send(piece)

    def _end(self, row: _Row, eos: bool = False) -> None:
        row.ended = True
        stopped = not eos and (row.cut is not None or row.request.stop.is_set())
        text = self._decode(row.tokens[:-1] if eos else row.tokens)
        if len(text) > len(row.sent):
            row.request.send(text[len(row.sent):])
        row.request.finish(self._reply(row.request, row.tokens, text,
                                       truncated=not eos and not stopped, stopped=stopped))

    def _reply(self, request: Request, tokens: list[int], text: str, *, truncated: bool,
               stopped: bool) -> LlmReply:
        return LlmReply(text=text.strip(), new_tokens=len(tokens),
                        prompt_tokens=len(request.prompt), model_version=self._version,
                        truncated=truncated, stopped=stopped)
