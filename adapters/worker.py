"""`chatman worker`: a process that only trains. It runs wherever the database and the shared
data directory are reachable (a GPU host), claims /retrain jobs, trains, evaluates, exports and
publishes each version, and with runtime LoRA loads it into the serving engine. The replicas'
registry followers switch to it; its notices are stored for a replica with the chat's platform
to send (see :mod:`bot.core.notices`). No chat adapter and no serving model is loaded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from adapters.app import ChatmanApp
from bot.core.config import Settings

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run training jobs until ``stop`` (or SIGINT/SIGTERM); a job running then is stopped and
    recorded as interrupted."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    app = ChatmanApp.from_settings(settings)
    async with app.running(load_models=False, background=False, training=True):
        log.info("training worker %s for %s: waiting for jobs; Ctrl-C stops it",
                 settings.resolved_replica_id, app.persona.name)
        await stop.wait()
        log.info("training worker %s stopping", settings.resolved_replica_id)
