"""Sends the training notices other processes stored (see :mod:`bot.core.notices`) through
this replica's chat adapters."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping

from bot.core.jobs import Notify
from bot.core.notices import NoticeOutbox, PendingNotice

log = logging.getLogger(__name__)

#: How long a claimed notice is this replica's to send before another may.
LEASE_SECONDS = 60.0


class NoticeRelay:
    def __init__(self, outbox: NoticeOutbox, notifiers: Mapping[str, Notify], owner: str,
                 poll_seconds: float = 1.0) -> None:
        """``notifiers``: platform → send, the live mapping adapters register in (a platform
        whose adapter has not started yet is not claimed)."""
        self.outbox, self.notifiers, self.owner = outbox, notifiers, owner
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A notice was stored in this process: look now rather than at the next poll."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            try:
                sent = await self.relay_once()
            except Exception:  # the database away for a moment: try again at the next poll
                log.exception("could not relay training notices")
                sent = 0
            if sent:
                continue  # a chat's next notice is claimable once this one is sent
            with contextlib.suppress(TimeoutError):
                # Not wait_for: on 3.11 it can swallow a cancellation (see inbox_worker).
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    async def relay_once(self) -> int:
        """Claim what this replica can send, send it; how many were claimed."""
        platforms = list(self.notifiers)
        if not platforms:
            return 0
        batch = await asyncio.to_thread(self.outbox.claim, platforms, self.owner, LEASE_SECONDS)
        for pending in batch:
            await self._send(pending)
        return len(batch)

    async def _send(self, pending: PendingNotice) -> None:
        notice = pending.notice
        if notice.image is not None and not notice.image.is_file():
            # Written by a worker whose data dir this replica does not share: the words still go.
            log.warning("training job #%d: the plot %s is not here; sending the notice without it",
                        notice.job_id, notice.image)
            notice = dataclasses.replace(notice, image=None)
        send = self.notifiers.get(pending.chat.platform)
        try:
            if send is None:  # its adapter stopped since the claim
                raise RuntimeError(f"no {pending.chat.platform} adapter here any more")
            await send(pending.chat, notice)
        except Exception as exc:  # a chat that can't be reached now: later, then given up
            log.warning("training job #%d: could not send a notice to %s (attempt %d)",
                        notice.job_id, pending.chat.platform, pending.attempts + 1, exc_info=True)
            await asyncio.to_thread(self.outbox.failed, pending.id, self.owner,
                                    f"{type(exc).__name__}: {exc}",
                                    min(60.0, 2.0 ** (pending.attempts + 1)))
            return
        await asyncio.to_thread(self.outbox.sent, pending.id, self.owner)
