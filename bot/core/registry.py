"""Model versions of a persona, as the rest of the bot sees them: records, statuses, and the
:class:`RegistryRepository` port that records which version answers and how to go back.

The registry only records; the application loads whatever is active (see
:meth:`adapters.app.ChatmanApp.sync_model`), so the CLI, a training job and an admin command can
all change the active version and a running bot follows. The SQL implementation is
:class:`bot.infra.storage.registry.SqlRegistry`.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from bot.core.errors import UserFacingError


class ModelStatus(StrEnum):
    """A version's state. Stored as its value (a plain string column)."""

    CANDIDATE = "candidate"  # being trained or waiting for its evaluation
    ACTIVE = "active"  # answering (one per persona)
    REJECTED = "rejected"  # failed the gate
    RETIRED = "retired"  # was active, replaced
    FAILED = "failed"  # crashed, killed or unloadable


class RegistryError(UserFacingError):
    pass


@dataclass(frozen=True)
class VersionView:
    id: int
    persona: str
    version: str
    status: ModelStatus
    base_model: str
    base_version: str | None
    directory: str | None
    model_dir: str | None
    dataset_sha256: str | None
    dataset_rows: int | None
    steps: int | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    reasons: list[str]
    job_id: int | None
    previous: str | None  # what /rollback returns to, were this version active
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    activated_at: datetime | None
    retired_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("created_at", "finished_at", "activated_at", "retired_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


@dataclass(frozen=True)
class Served:
    """What should answer: a registry version's merged folder, or the configured base."""

    version: str | None  # None: no trained version is active
    model_ref: str
    # Which of the persona's system prompts the version was trained with (full or short).
    system_prompt: str = "full"


def served_by(active: VersionView | None, base_ref: str) -> Served:
    """What answers when ``active`` is the active version (None: the base ``base_ref``)."""
    if active is None or not active.model_dir:
        return Served(None, base_ref)
    return Served(active.version, active.model_dir,
                  str(active.config.get("system_prompt", "full")))


def same_config_form(config: dict[str, Any] | None) -> dict[str, Any]:
    """A TrainConfig dump as the database hands it back (JSON: tuples become lists, keys sorted)."""
    form: dict[str, Any] = json.loads(json.dumps(config or {}, sort_keys=True))
    return form


class RegistryRepository(Protocol):
    """A persona's model versions and its rollback stack (the top entry answers)."""

    # --- reading --------------------------------------------------------------------
    def list(self) -> list[VersionView]:
        """Every version of the persona, newest first."""

    # From here on ``list`` in this class names the method above: the type is builtins.list.

    def get(self, version: str) -> VersionView | None: ...

    def active(self) -> VersionView | None: ...

    def served(self, base_ref: str) -> Served: ...

    def find_trained(self, dataset_sha256: str, base_model: str,
                     config: dict[str, Any]) -> VersionView | None:
        """The newest version, failed ones aside, trained on exactly this dataset, base and
        TrainConfig."""

    # --- training writes ------------------------------------------------------------
    def create_candidate(self, *, base_model: str, config: dict[str, Any], job_id: int | None,
                         created_by: str | None) -> VersionView:
        """A new version named ``<persona>-v<N>``, in ``candidate`` until training ends."""

    def register_shipped(self, version: str, *, base_model: str, base_version: str,
                         directory: Path, model_dir: Path, dataset_sha256: str,
                         dataset_rows: int, steps: int, config: dict[str, Any],
                         metrics: dict[str, Any]) -> VersionView:
        """A version trained elsewhere, already evaluated; active only when nothing is."""

    def record_result(self, version: str, *, base_version: str, directory: Path,
                      model_dir: Path | None, dataset_sha256: str, dataset_rows: int,
                      steps: int, metrics: dict[str, Any], reasons: builtins.list[str]) -> None: ...

    def reject(self, version: str, reasons: builtins.list[str]) -> None:
        """Failed the gate: off the rollback stack; were it active, the one before answers."""

    def fail(self, version: str, reason: str) -> str | None:
        """Failed (crashed, unloadable): off the stack; returns the version active afterwards
        when this changed it."""

    def fail_job_candidates(self, job_id: int, reason: str) -> builtins.list[str]:
        """Fail the job's versions still in ``candidate``; returns their names."""

    def record_export(self, version: str, model_dir: Path, actor: str) -> VersionView: ...

    # --- serving writes -------------------------------------------------------------
    def activate(self, version: str, actor: str, *, force: bool = False) -> VersionView:
        """Make ``version`` answer: pushed on the rollback stack, above the one answering now."""

    def rollback(self, actor: str) -> VersionView | None:
        """Retire the active version and reactivate the newest usable one below it (None: the
        base model)."""
