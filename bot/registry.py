"""Model versions of a persona: which one answers, what each scored, and how to go back.

The registry only records; the application loads whatever is active (see
:meth:`bot.app.ChatmanApp.sync_model`), so the CLI, a training job and an admin command can
all change the active version and a running bot follows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.errors import UserFacingError
from bot.storage.models import AuditEntry, ModelStatus, ModelVersion, utcnow
from bot.storage.store import SqlStore

log = logging.getLogger(__name__)


class RegistryError(UserFacingError):
    pass


@dataclass(frozen=True)
class VersionView:
    id: int
    persona: str
    version: str
    status: str
    base_model: str
    base_version: str | None
    directory: str | None
    model_dir: str | None
    dataset_sha256: str | None
    dataset_rows: int | None
    steps: int | None
    config: dict
    metrics: dict
    reasons: list[str]
    job_id: int | None
    previous: str | None
    created_by: str | None
    created_at: datetime
    finished_at: datetime | None
    activated_at: datetime | None
    retired_at: datetime | None

    def to_dict(self) -> dict:
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


def _view(s: Session, m: ModelVersion) -> VersionView:
    previous = s.get(ModelVersion, m.previous_id).version if m.previous_id else None
    return VersionView(
        m.id, m.persona, m.version, m.status, m.base_model, m.base_version, m.directory,
        m.model_dir, m.dataset_sha256, m.dataset_rows, m.steps, dict(m.config or {}),
        dict(m.metrics or {}), list(m.reasons or []), m.job_id, previous, m.created_by,
        m.created_at, m.finished_at, m.activated_at, m.retired_at,
    )


class ModelRegistry:
    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona

    # --- reading --------------------------------------------------------------------
    def list(self) -> list[VersionView]:
        with self.store.session() as s:
            rows = s.scalars(select(ModelVersion).where(ModelVersion.persona == self.persona)
                             .order_by(ModelVersion.id.desc())).all()
            return [_view(s, m) for m in rows]

    def get(self, version: str) -> VersionView | None:
        with self.store.session() as s:
            m = s.scalar(select(ModelVersion).where(ModelVersion.version == version))
            return _view(s, m) if m else None

    def active(self) -> VersionView | None:
        with self.store.session() as s:
            m = self._active(s)
            return _view(s, m) if m else None

    def served(self, base_ref: str) -> Served:
        active = self.active()
        if active is None or not active.model_dir:
            return Served(None, base_ref)
        return Served(active.version, active.model_dir,
                      str(active.config.get("system_prompt", "full")))

    def find_trained(self, dataset_sha256: str, base_model: str,
                     config: dict) -> VersionView | None:
        """The newest version trained on exactly this dataset, base and TrainConfig.

        Failed versions (crashed, cancelled, unloadable) don't count: training again is the
        way to get a usable one.
        """
        with self.store.session() as s:
            rows = s.scalars(select(ModelVersion).where(
                ModelVersion.persona == self.persona, ModelVersion.dataset_sha256 == dataset_sha256,
                ModelVersion.base_model == base_model, ModelVersion.status != ModelStatus.FAILED,
            ).order_by(ModelVersion.id.desc())).all()
            wanted = same_config_form(config)
            found = next((m for m in rows if same_config_form(m.config) == wanted), None)
            return _view(s, found) if found else None

    def _active(self, s: Session) -> ModelVersion | None:
        return s.scalar(select(ModelVersion).where(ModelVersion.persona == self.persona,
                                                   ModelVersion.status == ModelStatus.ACTIVE))

    def _require(self, s: Session, version: str) -> ModelVersion:
        m = s.scalar(select(ModelVersion).where(ModelVersion.version == version,
                                                ModelVersion.persona == self.persona))
        if m is None:
            raise RegistryError(f"no version {version!r}", user_message=(
                f"There is no model version {version!r} for {self.persona} "
                "(see `chatman models list`)."))
        return m

    # --- training writes ------------------------------------------------------------
    def create_candidate(self, *, base_model: str, config: dict, job_id: int | None,
                         created_by: str | None) -> VersionView:
        """A new version named ``<persona>-v<N>``, in ``candidate`` until training ends."""
        for _ in range(5):  # two trainers numbering at once: the unique name decides
            try:
                with self.store.session() as s, s.begin():
                    n = s.scalar(select(func.count()).select_from(ModelVersion)
                                 .where(ModelVersion.persona == self.persona)) or 0
                    m = ModelVersion(persona=self.persona, version=f"{self.persona}-v{n + 1}",
                                     status=ModelStatus.CANDIDATE, base_model=base_model,
                                     config=config, metrics={}, reasons=[], job_id=job_id,
                                     created_by=created_by)
                    s.add(m)
                    s.flush()
                    return _view(s, m)
            except IntegrityError:
                continue
        raise RuntimeError("could not allocate a version name")

    def register_shipped(self, version: str, *, base_model: str, base_version: str,
                         directory: Path, model_dir: Path, dataset_sha256: str,
                         dataset_rows: int, steps: int, config: dict, metrics: dict) -> VersionView:
        """A version trained elsewhere (the persona's shipped starter), already evaluated.

        It becomes active only when nothing is: a bot that already serves a version of its
        own keeps it.
        """
        with self.store.session() as s, s.begin():
            active = self._active(s)
            now = utcnow()
            m = ModelVersion(persona=self.persona, version=version,
                             status=ModelStatus.RETIRED if active else ModelStatus.ACTIVE,
                             base_model=base_model, base_version=base_version,
                             directory=str(directory), model_dir=str(model_dir),
                             dataset_sha256=dataset_sha256, dataset_rows=dataset_rows,
                             steps=steps, config=config, metrics=metrics, reasons=[],
                             created_by="shipped", finished_at=now,
                             activated_at=None if active else now,
                             retired_at=now if active else None)
            s.add(m)
            s.flush()
            self._audit(s, "system", "model.install", m, {"shipped": True})
            return _view(s, m)

    def record_result(self, version: str, *, base_version: str, directory: Path,
                      model_dir: Path | None, dataset_sha256: str, dataset_rows: int,
                      steps: int, metrics: dict, reasons: list[str]) -> None:
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            m.base_version, m.directory = base_version, str(directory)
            m.model_dir = str(model_dir) if model_dir else None
            m.dataset_sha256, m.dataset_rows, m.steps = dataset_sha256, dataset_rows, steps
            m.metrics, m.reasons, m.finished_at = metrics, reasons, utcnow()

    def reject(self, version: str, reasons: list[str]) -> None:
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            m.status, m.reasons = ModelStatus.REJECTED, reasons
            m.finished_at = m.finished_at or utcnow()
            self._audit(s, "training", "model.reject", m, {"reasons": reasons})

    def fail(self, version: str, reason: str) -> str | None:
        """Mark ``version`` failed; if it was active, the one before it answers again.

        Returns the version that is active afterwards when this changed it.
        """
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            was_active = m.status == ModelStatus.ACTIVE
            m.status, m.reasons = ModelStatus.FAILED, [*(m.reasons or []), reason]
            m.finished_at = m.finished_at or utcnow()
            self._audit(s, "system", "model.fail", m, {"reason": reason})
            if was_active:
                back = self._reactivate_previous(s, m)
                return back.version if back else None
        return None

    def fail_job_candidates(self, job_id: int, reason: str) -> list[str]:
        with self.store.session() as s, s.begin():
            rows = s.scalars(select(ModelVersion).where(
                ModelVersion.job_id == job_id, ModelVersion.status == ModelStatus.CANDIDATE)).all()
            for m in rows:
                m.status, m.reasons, m.finished_at = ModelStatus.FAILED, [reason], utcnow()
                self._audit(s, "system", "model.fail", m, {"reason": reason})
            return [m.version for m in rows]

    def record_export(self, version: str, model_dir: Path, actor: str) -> VersionView:
        """A merged folder made after training (``models activate --force`` of a rejected run)."""
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            m.model_dir = str(model_dir)
            self._audit(s, actor, "model.export", m, {"model_dir": str(model_dir)})
            s.flush()
            return _view(s, m)

    # --- serving writes -------------------------------------------------------------
    def activate(self, version: str, actor: str, *, force: bool = False) -> VersionView:
        """Make ``version`` answer; the one answering now becomes its rollback target."""
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            if m.status == ModelStatus.ACTIVE:
                raise RegistryError(f"{version} already active",
                                    user_message=f"{version} is already the active model.")
            if not m.model_dir or not Path(m.model_dir).is_dir():
                raise RegistryError(f"{version} has no model folder", user_message=(
                    f"{version} has no merged model to load (status {m.status}); only versions "
                    "that passed the evaluation gate are exported. From a shell, `chatman "
                    f"models activate {version} --force` merges its adapter and activates it."))
            if m.status in (ModelStatus.REJECTED, ModelStatus.FAILED) and not force:
                raise RegistryError(f"{version} is {m.status}", user_message=(
                    f"{version} is {m.status} ({'; '.join(m.reasons) or 'no reason recorded'}); "
                    "activate it anyway with --force."))
            current = self._active(s)
            if current is not None:
                self._retire(current)
            m.previous_id = current.id if current else None
            m.status, m.activated_at, m.retired_at = ModelStatus.ACTIVE, utcnow(), None
            self._audit(s, actor, "model.activate", m,
                        {"previous": current.version if current else None})
            s.flush()
            return _view(s, m)

    def rollback(self, actor: str) -> VersionView | None:
        """Retire the active version and reactivate the one it replaced (None: the base)."""
        with self.store.session() as s, s.begin():
            current = self._active(s)
            if current is None:
                raise RegistryError("nothing active", user_message=(
                    "Nothing to roll back: no trained version is active, the base model answers."))
            self._retire(current)
            self._audit(s, actor, "model.rollback", current, {})
            back = self._reactivate_previous(s, current)
            return _view(s, back) if back else None

    @staticmethod
    def _retire(m: ModelVersion) -> None:
        m.status, m.retired_at = ModelStatus.RETIRED, utcnow()

    def _reactivate_previous(self, s: Session, m: ModelVersion) -> ModelVersion | None:
        # Walk back past versions whose folder has gone or that have failed since.
        back = s.get(ModelVersion, m.previous_id) if m.previous_id else None
        while back is not None and (back.status == ModelStatus.FAILED or not back.model_dir
                                    or not Path(back.model_dir).is_dir()):
            back = s.get(ModelVersion, back.previous_id) if back.previous_id else None
        s.flush()
        if back is not None:
            # Its own previous_id stays: a second rollback keeps going back in time.
            back.status, back.activated_at, back.retired_at = ModelStatus.ACTIVE, utcnow(), None
            self._audit(s, "system", "model.activate", back, {"after_rollback_of": m.version})
        return back

    @staticmethod
    def _audit(s: Session, actor: str, action: str, m: ModelVersion, detail: dict) -> None:
        s.add(AuditEntry(actor=actor, action=action, pair_id=None,
                         before=None, after={"version": m.version, "status": m.status, **detail}))
        log.info("%s %s by %s %s", action, m.version, actor, detail or "")


def same_config_form(config: dict | None) -> dict:
    """A TrainConfig dump as the database hands it back (JSON: tuples become lists, keys sorted)."""
    return json.loads(json.dumps(config or {}, sort_keys=True))
