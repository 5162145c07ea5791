"""The model registry in SQL: versions in ``model_versions``, the rollback stack in
``model_activations`` (:class:`SqlRegistry`, the :class:`bot.core.registry.RegistryRepository`
the application uses)."""

from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.core.messages import Message
from bot.core.registry import (
    ModelStatus,
    RegistryError,
    Served,
    VersionView,
    same_config_form,
    served_by,
)
from bot.infra.storage.models import AuditEntry, ModelActivation, ModelVersion, utcnow
from bot.infra.storage.store import SqlStore

log = logging.getLogger(__name__)


# The rollback history is a stack of activations per persona (ModelActivation; why a stack and
# not a pointer per version: see its docstring). Invariant kept by every write below: the top
# entry is the active version, and the stack is empty when the base model answers. Every walk
# over it is a loop over the rows read once, so none can run forever.
Stack = list[tuple[ModelActivation, ModelVersion]]


def _stack(s: Session, persona: str) -> Stack:
    """The persona's rollback stack, bottom first."""
    rows = s.execute(select(ModelActivation, ModelVersion)
                     .join(ModelVersion, ModelActivation.version_id == ModelVersion.id)
                     .where(ModelActivation.persona == persona)
                     .order_by(ModelActivation.position)).all()
    return [(a, m) for a, m in rows]


def _previous(stack: Stack, m: ModelVersion) -> str | None:
    """The entry below ``m``'s topmost one: what was active when ``m`` last was activated and,
    for the active version, what /rollback returns to. None when ``m`` is not on the stack."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][1].id == m.id:
            return stack[i - 1][1].version if i > 0 else None
    return None


def _usable(m: ModelVersion) -> bool:
    """Whether a rollback may hand back to ``m``."""
    return (m.status not in (ModelStatus.FAILED, ModelStatus.REJECTED) and m.model_dir is not None
            and m.model_dir != "" and Path(m.model_dir).is_dir())


def _view(s: Session, m: ModelVersion, stack: Stack | None = None) -> VersionView:
    previous = _previous(stack if stack is not None else _stack(s, m.persona), m)
    return VersionView(
        m.id, m.persona, m.version, ModelStatus(m.status), m.base_model, m.base_version, m.directory,
        m.model_dir, m.dataset_sha256, m.dataset_rows, m.steps, dict(m.config or {}),
        dict(m.metrics or {}), list(m.reasons or []), m.job_id, previous, m.created_by,
        m.created_at, m.finished_at, m.activated_at, m.retired_at,
    )


class SqlRegistry:
    """:class:`bot.core.registry.RegistryRepository` on the SQL store, for one persona."""

    def __init__(self, store: SqlStore, persona: str) -> None:
        self.store = store
        self.persona = persona

    # --- reading --------------------------------------------------------------------
    def list(self) -> list[VersionView]:
        with self.store.session() as s:
            rows = s.scalars(select(ModelVersion).where(ModelVersion.persona == self.persona)
                             .order_by(ModelVersion.id.desc())).all()
            stack = _stack(s, self.persona)
            return [_view(s, m, stack) for m in rows]

    def get(self, version: str) -> VersionView | None:
        with self.store.session() as s:
            m = s.scalar(select(ModelVersion).where(ModelVersion.version == version))
            return _view(s, m) if m else None

    def active(self) -> VersionView | None:
        with self.store.session() as s:
            m = self._active(s)
            return _view(s, m) if m else None

    def served(self, base_ref: str) -> Served:
        return served_by(self.active(), base_ref)

    def find_trained(self, dataset_sha256: str, base_model: str,
                     config: dict[str, Any]) -> VersionView | None:
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
            raise RegistryError(f"no version {version!r}", code="version.missing",
                                params={"version": version, "persona": self.persona})
        return m

    # --- training writes ------------------------------------------------------------
    def create_candidate(self, *, base_model: str, config: dict[str, Any], job_id: int | None,
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
                         dataset_rows: int, steps: int, config: dict[str, Any],
                         metrics: dict[str, Any]) -> VersionView:
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
            if not active:
                self._push(s, m, "system")
            self._audit(s, "system", "model.install", m, {"shipped": True})
            return _view(s, m)

    def record_result(self, version: str, *, base_version: str, directory: Path,
                      model_dir: Path | None, dataset_sha256: str, dataset_rows: int,
                      steps: int, metrics: dict[str, Any],
                      reasons: builtins.list[str]) -> None:
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            m.base_version, m.directory = base_version, str(directory)
            m.model_dir = str(model_dir) if model_dir else None
            m.dataset_sha256, m.dataset_rows, m.steps = dataset_sha256, dataset_rows, steps
            m.metrics, m.reasons, m.finished_at = metrics, reasons, utcnow()

    def reject(self, version: str, reasons: builtins.list[str]) -> None:
        """Mark ``version`` rejected (failed the gate). A rejected version is no rollback
        target, so it leaves the stack; were it active, the one before it answers again."""
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            was_active = m.status == ModelStatus.ACTIVE
            m.status, m.reasons = ModelStatus.REJECTED, reasons
            m.finished_at = m.finished_at or utcnow()
            self._audit(s, "training", "model.reject", m, {"reasons": reasons})
            self._unstack(s, m)
            if was_active:
                self._resume_top(s, m)

    def fail(self, version: str, reason: str) -> str | None:
        """Mark ``version`` failed and take it off the rollback stack; if it was active, the
        newest usable entry below it answers again (none: the base model).

        Returns the version that is active afterwards when this changed it.
        """
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            was_active = m.status == ModelStatus.ACTIVE
            m.status, m.reasons = ModelStatus.FAILED, [*(m.reasons or []), reason]
            m.finished_at = m.finished_at or utcnow()
            self._audit(s, "system", "model.fail", m, {"reason": reason})
            self._unstack(s, m)
            if was_active:
                back = self._resume_top(s, m)
                return back.version if back else None
        return None

    def fail_job_candidates(self, job_id: int, reason: str) -> builtins.list[str]:
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
        """Make ``version`` answer: pushed on the rollback stack, above the one answering now."""
        for attempt in range(5):
            try:
                return self._activate(version, actor, force=force)
            except IntegrityError:
                # Another process pushed onto this persona's stack at the same moment: its
                # activation wins, this one goes on top of it.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _activate(self, version: str, actor: str, *, force: bool) -> VersionView:
        with self.store.session() as s, s.begin():
            m = self._require(s, version)
            if m.status == ModelStatus.ACTIVE:
                raise RegistryError(f"{version} already active", code="version.already_active",
                                    params={"version": version})
            if not m.model_dir or not Path(m.model_dir).is_dir():
                raise RegistryError(f"{version} has no model folder", code="version.no_model",
                                    params={"version": version,
                                            "status": Message(f"model_status.{m.status}")})
            if m.status in (ModelStatus.REJECTED, ModelStatus.FAILED) and not force:
                raise RegistryError(f"{version} is {m.status}", code="version.not_usable", params={
                    "version": version, "status": Message(f"model_status.{m.status}"),
                    "reasons": ("; ".join(m.reasons) if m.reasons
                                else Message("version.no_reason"))})
            current = self._active(s)
            if current is not None:
                self._retire(current)
            self._push(s, m, actor)
            m.status, m.activated_at, m.retired_at = ModelStatus.ACTIVE, utcnow(), None
            self._audit(s, actor, "model.activate", m,
                        {"previous": current.version if current else None})
            s.flush()
            return _view(s, m)

    def rollback(self, actor: str) -> VersionView | None:
        """Retire the active version, pop it off the stack and reactivate the newest usable
        entry below it (None: the base model)."""
        with self.store.session() as s, s.begin():
            current = self._active(s)
            if current is None:
                raise RegistryError("nothing active", code="rollback.nothing")
            self._retire(current)
            self._audit(s, actor, "model.rollback", current, {})
            stack = _stack(s, self.persona)
            if any(m.id == current.id for _, m in stack):
                # Pop down to and including the active version's topmost entry (the top itself,
                # as long as the stack agrees with the statuses, which every write here keeps).
                while stack:
                    entry, m = stack.pop()
                    s.delete(entry)
                    if m.id == current.id:
                        break
            s.flush()
            back = self._resume_top(s, current)
            return _view(s, back) if back else None

    @staticmethod
    def _retire(m: ModelVersion) -> None:
        m.status, m.retired_at = ModelStatus.RETIRED, utcnow()

    def _push(self, s: Session, m: ModelVersion, actor: str) -> None:
        top = s.scalar(select(func.max(ModelActivation.position))
                       .where(ModelActivation.persona == self.persona))
        s.add(ModelActivation(persona=self.persona, position=(top or 0) + 1, version_id=m.id,
                              actor=actor, activated_at=utcnow()))
        s.flush()  # a concurrent push to the same position fails here (activate retries)

    def _unstack(self, s: Session, m: ModelVersion) -> None:
        """Take every entry of ``m`` off the stack (it can never be handed back to)."""
        s.execute(delete(ModelActivation).where(ModelActivation.persona == self.persona,
                                                ModelActivation.version_id == m.id))

    def _resume_top(self, s: Session, after: ModelVersion) -> ModelVersion | None:
        """Reactivate the stack's newest usable entry, dropping the unusable ones above it
        (folder gone, failed, rejected): none of them could answer. None: the stack is empty
        and the base model answers."""
        back = None
        for entry, m in reversed(_stack(s, self.persona)):  # bounded: one pass over the rows
            if _usable(m):
                back = m
                break
            s.delete(entry)
        s.flush()
        if back is not None:
            back.status, back.activated_at, back.retired_at = ModelStatus.ACTIVE, utcnow(), None
            self._audit(s, "system", "model.activate", back, {"after_rollback_of": after.version})
        return back

    @staticmethod
    def _audit(s: Session, actor: str, action: str, m: ModelVersion,
               detail: dict[str, Any]) -> None:
        s.add(AuditEntry(actor=actor, action=action, pair_id=None,
                         before=None, after={"version": m.version, "status": m.status, **detail}))
        log.info("%s %s by %s %s", action, m.version, actor, detail or "")

