"""The training worker process: ``python -m training.worker`` (started by the job runner).

It reads one JSON object on stdin (settings, job id, overrides), trains through
:func:`training.release.train_and_release`, and reports as JSON lines on its stdout, which is
reserved for them: anything else a library prints goes to stderr (the job's log file).
Settings travel on stdin, not in argv or the environment, so secrets stay out of ``ps``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from bot.core.config import Settings


class WorkerRequest(BaseModel):
    job_id: int
    requested_by: str
    # Settings' fields as JSON; Settings(**…) validates them.
    settings: dict[str, Any]
    max_steps: int | None = None


class Events:
    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def emit(self, event: str, **data: object) -> None:
        with self._lock:
            self._out.write(json.dumps({"event": event, **data}, ensure_ascii=False) + "\n")
            self._out.flush()


def _exit_with_parent(parent: int) -> None:
    """A trainer whose bot is gone (even SIGKILLed) stops rather than train for nobody."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main() -> int:
    parent = os.getppid()
    # Keep fd 1 for events only; route stray prints (C libraries included) to stderr.
    events = Events(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _exit_with_parent(parent)

    request = WorkerRequest.model_validate_json(sys.stdin.read())
    from bot.core.config import Settings
    from bot.infra.logs import configure_logging, mask, route_uncaught_exceptions

    settings = Settings(_env_file=None, **request.settings)
    # The secrets came on stdin: masked from here on in the job's log file (stderr), thread
    # crashes included.
    configure_logging(settings.log_level, settings.secret_values())
    route_uncaught_exceptions()
    log = logging.getLogger("chatman.worker")
    try:
        return _train(request, settings, events)
    except Exception as exc:
        log.exception("training job %d failed", request.job_id)
        # This message is stored with the job and sent to the chat that asked for it.
        events.emit("error", message=mask(f"{type(exc).__name__}: {exc}"))
        return 1


def _train(request: WorkerRequest, settings: Settings, events: Events) -> int:
    from bot.core.persona import load_persona
    from bot.infra.storage.curation import SqlCuration
    from bot.infra.storage.registry import SqlRegistry
    from bot.infra.storage.store import SqlStore, make_engine
    from training.evaluate import Decoding
    from training.release import train_and_release
    from training.sft import TrainConfig

    persona = load_persona(settings.persona, settings.persona_dir)
    language = settings.language or persona.language
    config = TrainConfig(**settings.train_overrides(request.max_steps))
    engine = make_engine(settings.resolved_database_url)
    store = SqlStore(engine)
    try:
        release = train_and_release(
            registry=SqlRegistry(store, persona.name), curation=SqlCuration(store, persona.name),
            persona=persona, language=language,
            base_model=settings.train_base_model or persona.training.base_model,
            cache_dir=settings.resolved_model_cache_dir, data_dir=settings.data_dir,
            config=config, created_by=request.requested_by, job_id=request.job_id,
            # The gate judges what users get: the serving decoding, seeded draws.
            decoding=Decoding.serving(settings, persona, language, config.eval_samples),
            on_candidate=lambda v: events.emit("candidate", version=v, max_steps=config.max_steps),
            on_stage=lambda name: events.emit("stage", stage=name),
            progress=lambda s: events.emit("step", **asdict(s), max_steps=config.max_steps),
            on_eval=lambda step, r: events.emit(
                "eval", step=step, persona_score=r.persona_score, retention=r.retention,
                general_score=r.general_score, leakage=r.leakage,
                within_budget=r.within_budget,
                passed=not config.gate.check(r)),
        )
    finally:
        engine.dispose()
    events.emit("done", version=release.version, status=release.status,
                passed=release.run.result.passed, reasons=release.run.result.reasons,
                steps=release.run.result.steps, summary=release.summary,
                plot=str(release.plot) if release.plot else None,
                directory=str(release.run.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
