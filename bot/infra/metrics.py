"""Prometheus metrics (``/metrics``): the :class:`~bot.core.observe.TurnObserver` the pipeline
reports to, plus what is read at scrape time.

Counted as turns happen: ``chatman_stage_seconds{stage}`` (a histogram per pipeline stage),
``chatman_replies_total{platform}``, ``chatman_errors_total{kind}``.

Read at scrape time, from :class:`Sources` (so nothing runs between scrapes):
``chatman_turns_in_flight``, ``chatman_inbox_depth``, ``chatman_inbox_oldest_age_seconds``,
``chatman_training_jobs{state}``, ``chatman_training_step_rate`` and
``chatman_model_version_info{version} 1``. A source that fails (the database is down) is left
out of that scrape and logged; a scrape never fails because of it.

Each application has a registry of its own (not prometheus_client's global one): tests build
many applications in one process, and two registries never see each other's series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from bot.core.inbox import InboxStats
from bot.core.jobs import JobRepository, JobStatus
from bot.core.types import Turn

log = logging.getLogger(__name__)

#: ``Turn.timings_ms`` key → the ``stage`` label it is observed under.
STAGES = {
    "decode": "decode",
    "asr": "asr",
    "prompt": "prompt",
    "first_token": "llm_first_token",
    "llm": "llm",
    "first_audio": "first_audio",
    "tts": "tts",
    "encode": "encode",
    "total": "total",
}
#: Seconds: from a decode of a short note (tens of ms) to a long reply on a slow CPU (minutes).
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0,
           120.0)


@dataclass
class Sources:
    """What the scrape-time gauges read; any left None is not exported. Each is called once
    per scrape, on the scraping thread, and must be cheap (one small query at most)."""

    turns_in_flight: Callable[[], int] | None = None
    #: the model version answering now
    model_version: Callable[[], str] | None = None
    jobs: JobRepository | None = None
    inbox_stats: Callable[[], InboxStats] | None = None


class PrometheusMetrics:
    """The application's metrics: a TurnObserver, and the text ``/metrics`` answers."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources or Sources()
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "chatman_stage_seconds", "Time a pipeline stage took in a turn that was answered "
            "(llm_first_token and first_audio: from the turn's start)",
            ["stage"], buckets=BUCKETS, registry=self.registry)
        self.replies = Counter("chatman_replies", "Turns answered, delivered and stored",
                               ["platform"], registry=self.registry)
        self.errors = Counter("chatman_errors", "Turns refused or failed, by the error's code "
                              "(internal: a bug or a failed backend)", ["kind"],
                              registry=self.registry)
        self.registry.register(_Scraped(self))
        # Sources failing now: their failure is logged once, not at every scrape.
        self._failing: set[str] = set()

    # --- TurnObserver -----------------------------------------------------------------
    def turn_done(self, platform: str, turn: Turn) -> None:
        try:
            self.replies.labels(platform).inc()
            for key, ms in turn.timings_ms.items():
                stage = STAGES.get(key)
                if stage is not None:
                    self.stage_seconds.labels(stage).observe(ms / 1000)
        except Exception:  # a delivered, stored turn must not fail for its metrics
            log.exception("metrics: could not record a turn")

    def turn_failed(self, platform: str, kind: str) -> None:
        try:
            self.errors.labels(kind).inc()
        except Exception:
            log.exception("metrics: could not record a failed turn")

    # --- exposition -------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The Prometheus text format (:attr:`content_type`)."""
        return generate_latest(self.registry)

    def read(self, name: str, read: Callable[[], Iterable[Metric]]) -> list[Metric]:
        """``read()``'s metrics, or none (logged) when it fails."""
        try:
            metrics = list(read())
        except Exception as exc:
            if name not in self._failing:
                self._failing.add(name)
                log.warning("metrics: %s left out: %s", name, exc, exc_info=True)
            return []
        if name in self._failing:
            self._failing.discard(name)
            log.info("metrics: %s back", name)
        return metrics


class _Scraped:
    """The gauges read from :class:`Sources` when scraped (a prometheus_client Collector)."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        s, read = self.metrics.sources, self.metrics.read
        if s.turns_in_flight is not None:
            yield from read("turns in flight", partial(_turns, s.turns_in_flight))
        if s.inbox_stats is not None:
            yield from read("inbox", partial(_inbox, s.inbox_stats))
        if s.jobs is not None:
            yield from read("training jobs", partial(_jobs, s.jobs))
        if s.model_version is not None:
            yield from read("model version", partial(_version, s.model_version))


def _turns(count: Callable[[], int]) -> Iterator[Metric]:
    yield GaugeMetricFamily("chatman_turns_in_flight",
                            "Turns being answered now (decoded and accepted)", value=count())


def _inbox(stats: Callable[[], InboxStats]) -> Iterator[Metric]:
    now = stats()
    yield GaugeMetricFamily("chatman_inbox_depth",
                            "Messages received and not yet finished (every replica's)",
                            value=now.depth)
    yield GaugeMetricFamily("chatman_inbox_oldest_age_seconds",
                            "How long the oldest unfinished message has waited (0: none)",
                            value=now.oldest_age_s or 0.0)


def _jobs(jobs: JobRepository) -> Iterator[Metric]:
    counts = jobs.count_by_status()
    by_state = GaugeMetricFamily("chatman_training_jobs", "The persona's training jobs by state",
                                 labels=["state"])
    for status in JobStatus:
        by_state.add_metric([status.value], counts.get(status, 0))
    yield by_state
    # Only the running job has a step rate; its progress says how long its steps take lately.
    running = (next((j for j in jobs.open_jobs() if j.status == JobStatus.RUNNING), None)
               if counts.get(JobStatus.RUNNING) else None)
    step_s = running.progress.get("step_s") if running is not None else None
    rate = 1 / step_s if isinstance(step_s, int | float) and step_s > 0 else 0.0
    yield GaugeMetricFamily("chatman_training_step_rate",
                            "Training steps per second of the running job (0: none running)",
                            value=rate)


def _version(version: Callable[[], str]) -> Iterator[Metric]:
    info = GaugeMetricFamily("chatman_model_version_info", "The model version answering now",
                             labels=["version"])
    info.add_metric([version()], 1)
    yield info
