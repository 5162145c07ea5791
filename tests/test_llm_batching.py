"""Concurrent replies share a generate: the scheduler and rows alone (fakes), then the starter
model answering several chats in one batch exactly as it answers each alone."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from bot.core.types import ChatMessage, LlmReply, Role
from bot.infra.llm.batching import BatchScheduler, Request, RequestStream, Rows
from bot.infra.llm.chat_model import GenerationSettings, TransformersChatModel
from tests.conftest import MODEL_CACHE

WAIT = 60  # seconds; a safety net for a broken scheduler, never the signal a test waits for


def _reply(request: Request, text: str = "") -> LlmReply:
    return LlmReply(text, 0, len(request.prompt), "fake")


def _read(stream: RequestStream) -> tuple[list[str], LlmReply]:
    pieces = list(stream)
    return pieces, stream.reply


class HeldRuns:
    """A scheduler's ``run`` that records each batch and, when asked, holds it until let go."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_on: set[int] = set()

    def __call__(self, requests: list[Request]) -> None:
        self.batches.append([r.prompt for r in requests])
        self.started.set()
        assert self.release.wait(WAIT)
        if any(r.prompt[0] in self.fail_on for r in requests):
            raise RuntimeError("boom")
        for r in requests:
            r.finish(_reply(r, str(r.prompt[0])))


def _submit(scheduler: BatchScheduler, first_token: int) -> RequestStream:
    request = Request([first_token])
    scheduler.submit(request)
    return RequestStream(request)


def test_requests_that_arrive_while_a_batch_runs_share_the_next_one_up_to_the_largest():
    runs = HeldRuns()
    scheduler = BatchScheduler(runs, window_ms=0, max_batch=2)
    runs.release.clear()
    first = _submit(scheduler, 1)
    assert runs.started.wait(WAIT)
    queued = [_submit(scheduler, n) for n in (2, 3, 4)]
    runs.release.set()
    assert [_read(s)[1].text for s in (first, *queued)] == ["1", "2", "3", "4"]
    # Window 0 waits for nobody, yet takes whatever is already queued.
    assert runs.batches == [[[1]], [[2], [3]], [[4]]]
    assert scheduler.stats.batches == 3 and scheduler.stats.largest == 2
    scheduler.close()


def test_a_failed_batch_raises_in_each_of_its_callers_and_the_worker_goes_on():
    runs = HeldRuns()
    runs.fail_on = {7}
    scheduler = BatchScheduler(runs, window_ms=0, max_batch=8)
    runs.release.clear()
    holder = _submit(scheduler, 1)
    assert runs.started.wait(WAIT)
    failing = [_submit(scheduler, 7), _submit(scheduler, 8)]
    runs.release.set()
    assert _read(holder)[1].text == "1"
    for stream in failing:
        with pytest.raises(RuntimeError, match="boom"):
            _read(stream)
    assert _read(_submit(scheduler, 9))[1].text == "9"
    scheduler.close()


def test_the_window_gathers_a_batch_until_it_is_full():
    runs = HeldRuns()
    # A window no test outlasts: the batch starts because it is full, not because time passed.
    scheduler = BatchScheduler(runs, window_ms=WAIT * 1000, max_batch=3)
    streams = [_submit(scheduler, n) for n in (1, 2, 3)]
    assert [_read(s)[1].text for s in streams] == ["1", "2", "3"]
    assert runs.batches == [[[1], [2], [3]]]
    scheduler.close()


def test_close_fails_what_waits_stops_what_runs_and_refuses_more():
    runs = HeldRuns()
    runs.release.clear()
    scheduler = BatchScheduler(runs, window_ms=0, max_batch=1)
    running = Request([1])
    scheduler.submit(running)
    assert runs.started.wait(WAIT)
    waiting = _submit(scheduler, 2)
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    with pytest.raises(RuntimeError, match="closed before this reply began"):
        _read(waiting)
    assert running.stop.wait(WAIT), "the running batch is asked to stop"
    runs.release.set()  # the fake run ends (a real one would, at its next token)
    closer.join(WAIT)
    assert not closer.is_alive()
    scheduler.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(Request([3]))


# --- rows: one batch's tokens to each reply ------------------------------------------------

EOS = 0


def _utf8(ids: list[int]) -> str:
    """A byte-level "tokenizer": each token is one byte, as byte-level BPE can split a char."""
    return bytes(i for i in ids if i != EOS).decode("utf-8", errors="replace")


def _rows(*requests: Request, cap: int = 10) -> Rows:
    return Rows(requests, decode=_utf8, stops={EOS}, max_new_tokens=cap, version="fake")


def _drain(request: Request) -> tuple[list[str], LlmReply]:
    return _read(RequestStream(request))


def _steps(rows: Rows, columns: Sequence[Sequence[int]],
           each: Callable[[int], None] = lambda _: None) -> None:
    """Feed step n's tokens (one per row), then the stopping criteria, as generate does."""
    for n, column in enumerate(columns, start=1):
        each(n)
        rows.put(column)
        rows.done(n)


def _columns(*rows: bytes) -> Iterator[list[int]]:
    return (list(step) for step in zip(*rows, strict=True))


def test_each_row_streams_its_own_text_and_ends_at_its_own_stop_id():
    short, long = Request([1, 2]), Request([1, 2, 3, 4])
    rows = _rows(short, long)
    pad = EOS  # rows that have ended get padding; here the pad id is the stop id, as in SmolLM2
    _steps(rows, list(_columns(b"hi\0" + bytes([pad]) * 4, b"caf\xc3\xa9!\0")))
    rows.finish()
    pieces, reply = _drain(short)
    assert "".join(pieces) == "hi" and reply == LlmReply("hi", 3, 2, "fake")
    pieces, reply = _drain(long)
    # The two bytes of "é" come as one piece: half a character is held back.
    assert pieces == ["c", "a", "f", "é", "!"]
    assert reply.text == "café!" and reply.new_tokens == 7 and reply.prompt_tokens == 4
    assert not reply.truncated and not reply.stopped


def test_a_row_at_the_cap_is_truncated_and_a_stopped_row_keeps_what_was_generated():
    capped, stopped, other = Request([1]), Request([1]), Request([1])
    rows = _rows(capped, stopped, other, cap=4)

    def stop_at(n: int) -> None:
        if n == 2:
            stopped.stop.set()  # its consumer stops while step 2 is being generated

    _steps(rows, list(_columns(b"abcd", b"wxyz", b"ok\0\0")), each=stop_at)
    assert rows.done(4) == [True, True, True]
    rows.finish()
    assert _drain(capped)[1] == LlmReply("abcd", 4, 1, "fake", truncated=True)
    assert _drain(stopped)[1] == LlmReply("wx", 2, 1, "fake", stopped=True)
    assert _drain(other)[1] == LlmReply("ok", 3, 1, "fake")


def test_each_row_ends_at_its_own_cap_and_the_batch_runs_to_the_largest():
    # An English reply (a short cap) batched with a Chinese one (its budget takes more tokens).
    english, chinese, default = Request([1], max_new_tokens=2), Request([1], 5), Request([1])
    rows = _rows(english, chinese, default, cap=3)
    assert rows.max_new_tokens == 5
    _steps(rows, list(_columns(b"abcde", b"vwxyz", b"klmno")))
    rows.finish()
    assert _drain(english)[1] == LlmReply("ab", 2, 1, "fake", truncated=True)
    assert _drain(chinese)[1] == LlmReply("vwxyz", 5, 1, "fake", truncated=True)
    assert _drain(default)[1] == LlmReply("klm", 3, 1, "fake", truncated=True)


def test_a_request_stopped_before_its_batch_began_gets_an_empty_stopped_reply():
    gone, live = Request([1, 2, 3]), Request([4])
    gone.stop.set()
    rows = _rows(gone, live)
    assert rows.prompts == [[4]]
    assert _drain(gone) == ([], LlmReply("", 0, 3, "fake", stopped=True))


# --- the starter model ---------------------------------------------------------------------

QUESTIONS = (
    "Hi",
    "What is the capital of Japan?",
    "Tell me a long story about a dragon who lived in the mountains and loved to eat apples.",
)
GREEDY = GenerationSettings(max_new_tokens=40, temperature=0.0)


def _prompt(question: str) -> list[ChatMessage]:
    return [ChatMessage(Role.SYSTEM, "You are a helpful assistant."),
            ChatMessage(Role.USER, question)]


@pytest.fixture(scope="module")
def batched(llm: TransformersChatModel) -> Iterator[TransformersChatModel]:
    """The starter's weights, batching exactly len(QUESTIONS) replies: the window outlasts
    any test, so a batch starts because it is full, whatever the threads' timing."""
    model = TransformersChatModel(llm.model_ref, cache_dir=MODEL_CACHE, generation=GREEDY,
                                  batch_window_ms=WAIT * 1000, max_batch=len(QUESTIONS))
    model.load()
    yield model
    model.close()


@pytest.fixture(scope="module")
def alone(llm: TransformersChatModel) -> list[LlmReply]:
    """Each question's greedy reply when nothing shares its generate."""
    assert llm.generation == GREEDY
    return [llm.generate(_prompt(q)) for q in QUESTIONS]


def _together(model: TransformersChatModel, stop_first_piece_of: int | None = None,
              ) -> list[tuple[list[str], LlmReply] | BaseException]:
    """Each question streamed in its own thread, all started at once."""
    start = threading.Barrier(len(QUESTIONS))
    results: list[tuple[list[str], LlmReply] | BaseException] = [
        RuntimeError("no result")] * len(QUESTIONS)

    def chat(i: int) -> None:
        start.wait(WAIT)
        try:
            stream = model.stream(_prompt(QUESTIONS[i]))
            pieces = []
            for piece in stream:
                pieces.append(piece)
                if i == stop_first_piece_of:
                    stream.stop()
            results[i] = (pieces, stream.reply)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    return results


@pytest.fixture(scope="module")
def together(batched: TransformersChatModel,
             ) -> tuple[list[tuple[list[str], LlmReply] | BaseException], int]:
    """The questions asked at once, and how many generate calls answered them."""
    before = batched.batch_stats.batches
    results = _together(batched)
    return results, batched.batch_stats.batches - before


def test_concurrent_chats_share_one_generate_and_each_gets_its_reply_alone(batched, alone,
                                                                           together):
    results, batches = together
    assert batches == 1, "one generate for all of them"
    prompt_lengths = {batched.count_prompt_tokens(_prompt(q)) for q in QUESTIONS}
    assert len(prompt_lengths) == len(QUESTIONS), "prompts of different lengths: padding"
    assert [r[1] if isinstance(r, tuple) else r for r in results] == alone
    assert any(a.truncated for a in alone) and any(not a.truncated for a in alone)


def test_the_pieces_streamed_make_up_each_reply(together):
    for result in together[0]:
        assert isinstance(result, tuple)
        pieces, reply = result
        assert len(pieces) > 1
        assert "".join(pieces).strip() == reply.text


def test_stopping_one_chat_ends_it_early_and_the_others_finish(batched, alone, monkeypatch):
    stopper = 2
    assert alone[stopper].new_tokens == GREEDY.max_new_tokens, "a reply long enough to cut"
    stopper_prompt = batched.count_prompt_tokens(_prompt(QUESTIONS[stopper]))
    # The worker waits after the stopper's first piece until its consumer has stopped, so the
    # stop lands at a known step however the threads are scheduled.
    stopped = threading.Event()
    send = Request.send

    def send_then_wait(self: Request, piece: str) -> None:
        send(self, piece)
        if len(self.prompt) == stopper_prompt and not stopped.is_set():
            assert self.stop.wait(WAIT)
            stopped.set()

    monkeypatch.setattr(Request, "send", send_then_wait)
    results = _together(batched, stop_first_piece_of=stopper)
    cut = results[stopper]
    assert isinstance(cut, tuple)
    pieces, reply = cut
    assert reply.stopped and not reply.truncated
    assert reply.new_tokens < alone[stopper].new_tokens
    assert alone[stopper].text.startswith(reply.text) and reply.text
    assert "".join(pieces).strip() == reply.text
    assert [r[1] if isinstance(r, tuple) else r
            for n, r in enumerate(results) if n != stopper] == [
        a for n, a in enumerate(alone) if n != stopper]


def test_a_failing_generate_reaches_every_caller_and_the_next_batch_is_served(batched, alone,
                                                                              monkeypatch):
    assert batched._model is not None

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(batched._model, "generate", boom)
    failed = _together(batched)
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in failed)
    monkeypatch.undo()
    assert [r[1] if isinstance(r, tuple) else r for r in _together(batched)] == alone


def test_a_copy_with_other_settings_batches_on_its_own(llm):
    """Copies share the weights but not the worker: the worker generates with its model's
    settings, so a copy's must reach its own replies."""
    short = copy.copy(llm)
    short.generation = GenerationSettings(max_new_tokens=5, temperature=0.0)
    prompt = _prompt(QUESTIONS[2])
    assert short.generate(prompt).new_tokens == 5
    assert llm.generate(prompt).new_tokens == llm.generation.max_new_tokens
    short.close()
