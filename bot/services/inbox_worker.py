"""Answering the durable inbox (:mod:`bot.core.inbox`): claim a message, hand it to its
platform's adapter, finish it; keep the claims alive while they are answered.

One dispatcher per process claims while it has a free place (``workers`` chats at once) and
the adapters have handlers registered; an idle one waits for a local delivery
(:meth:`InboxWorker.wake`) or ``poll_s`` (deliveries that reached other replicas). A handler
that raises has its message failed (it is logged, and answering it again would fail again); a
replica that dies holding a claim simply stops renewing it, and its lease expiring lets any
replica answer the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bot.core.inbox import ClaimLost, Inbox, InboxItem, InboxState, Receipt, current_item

log = logging.getLogger(__name__)

Handler = Callable[[InboxItem], Awaitable[None]]

#: How long finished messages are kept to recognise a redelivery, and how often they are pruned.
KEEP_FINISHED = timedelta(days=2)
PRUNE_EVERY_S = 3600.0


class InboxWorker:
    def __init__(self, inbox: Inbox, *, owner: str, lease_s: float, workers: int,
                 poll_s: float = 0.25) -> None:
        self.inbox = inbox
        self.owner = owner
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._handlers: dict[str, Handler] = {}
        self._places = asyncio.Semaphore(workers)
        self._wake = asyncio.Event()
        self._working: dict[Receipt, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_progress(self) -> int:
        return len(self._working)

    def register(self, platform: str, handler: Handler) -> None:
        """Answer ``platform``'s messages with ``handler`` (from now on, in this loop)."""
        self._handlers[platform] = handler
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._dispatch(), name="inbox-dispatch"),
                           asyncio.create_task(self._renew(), name="inbox-leases")]
            for task in self._tasks:
                task.add_done_callback(_report_crash)
        self.wake()

    async def unregister(self, platform: str, drain_s: float = 10.0) -> None:
        """Stop claiming ``platform``'s messages; wait up to ``drain_s`` for those being
        answered, then give the rest back (claimable again at once, elsewhere or after a
        restart). The dispatcher stops with the last platform."""
        self._handlers.pop(platform, None)
        mine = [task for receipt, task in self._working.items()
                if task.get_name() == f"inbox-{platform}-{receipt.inbox_id}"]
        if mine:
            _done, late = await asyncio.wait(mine, timeout=drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if not self._handlers:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []

    def wake(self) -> None:
        """A message was just put in the inbox here: claim now rather than at the next poll."""
        self._wake.set()

    async def _dispatch(self) -> None:
        last_prune = -PRUNE_EVERY_S
        loop = asyncio.get_running_loop()
        try:
            taken_back = await asyncio.to_thread(self.inbox.release_owned, self.owner)
        except Exception:
            log.exception("inbox: could not take back %s's old claims", self.owner)
        else:
            if taken_back:
                # This replica restarted under its own name: answer what it was answering at
                # once, rather than after the lease.
                log.warning("inbox: %d messages %s held when it stopped are answered again",
                            taken_back, self.owner)
        while True:
            await self._places.acquire()
            self._wake.clear()
            try:
                item = await self._claim()
            except Exception:
                log.exception("inbox: claiming failed; trying again in %.1f s", self.poll_s * 4)
                item = None
                await asyncio.sleep(self.poll_s * 4)
            if item is None or item.platform not in self._handlers:
                if item is not None:  # unregistered between claim and here
                    await asyncio.to_thread(self.inbox.release, item.receipt)
                self._places.release()
                if loop.time() - last_prune > PRUNE_EVERY_S:
                    last_prune = loop.time()
                    await self._prune()
                # asyncio.timeout, not wait_for: on 3.11 a wait_for whose event fires as the
                # task is cancelled swallows the cancellation (the dispatcher never stopped).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                continue
            task = asyncio.create_task(self._answer(item),
                                       name=f"inbox-{item.platform}-{item.id}")
            self._working[item.receipt] = task

    async def _claim(self) -> InboxItem | None:
        claiming = asyncio.ensure_future(asyncio.to_thread(
            self.inbox.claim, self.owner, self.lease_s, tuple(self._handlers)))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Stopping mid-claim: the thread claims anyway; give it straight back rather than
            # leave it to wait out its lease.
            item = await claiming
            if item is not None:
                await asyncio.to_thread(self.inbox.release, item.receipt)
            raise

    async def _answer(self, item: InboxItem) -> None:
        handler = self._handlers[item.platform]
        token = current_item.set(item)
        # How the message ends here; None: it is not ours to finish (given back, or taken).
        outcome: tuple[InboxState, str | None] | None = (InboxState.DONE, None)
        try:
            if item.attempts > 1:
                log.warning("inbox: %s answering again (attempt %d): a replica stopped while "
                            "answering it", item.turn_id, item.attempts)
            await handler(item)
        except asyncio.CancelledError:
            # Stopping: give it back unanswered, for another replica or our restart.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(self.inbox.release, item.receipt))
            outcome = None
            raise
        except ClaimLost as exc:
            log.warning("inbox: %s: %s; what this replica did is not stored", item.turn_id, exc)
            outcome = None
        except Exception as exc:
            log.exception("inbox: %s failed", item.turn_id)
            outcome = (InboxState.FAILED, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            current_item.reset(token)
            self._working.pop(item.receipt, None)
            self._places.release()
            if outcome is not None:
                try:
                    # A no-op when storing the turn already finished it.
                    await asyncio.to_thread(self.inbox.finish, item.receipt, *outcome)
                except Exception:
                    log.exception("inbox: could not finish %s (its lease will expire)",
                                  item.turn_id)
            self._wake.set()  # the chat's next message may be claimable now

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            held = list(self._working)
            if not held:
                continue
            try:
                lost = await asyncio.to_thread(self.inbox.renew, held, self.lease_s)
            except Exception:
                log.exception("inbox: renewing %d claims failed", len(held))
                continue
            for receipt in lost:
                task = self._working.get(receipt)
                log.warning("inbox: lost the claim on message %d (another replica took it); "
                            "stopping", receipt.inbox_id)
                if task is not None:
                    task.cancel()

    async def _prune(self) -> None:
        try:
            gone = await asyncio.to_thread(self.inbox.prune, KEEP_FINISHED)
        except Exception:
            log.exception("inbox: pruning failed")
            return
        if gone:
            log.info("inbox: forgot %d finished messages older than %s", gone, KEEP_FINISHED)


async def send_once(inbox: Inbox, part: str,
                    send: Callable[[], Awaitable[str | None]]) -> str | None:
    """Send one message of the answer to the inbox message this task answers, unless a replica
    that answered it before (and then died) already did: each send is recorded under the
    message and ``part``, so the user never gets one twice. Returns its platform id (None: not
    sent). Outside the inbox (no current message) it just sends."""
    item = current_item.get()
    if item is None:
        return await send()
    done = await asyncio.to_thread(inbox.sent, item.id)
    if part in done:
        log.info("inbox: %s of %s was sent before; not again", part, item.turn_id)
        return done[part]
    sent = await send()
    if sent is not None:
        await asyncio.to_thread(inbox.record_sent, item.id, part, sent)
    return sent


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("inbox: %s stopped: nothing is answered any more", task.get_name(),
                  exc_info=task.exception())
