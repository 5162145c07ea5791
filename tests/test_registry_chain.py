"""The rollback history is a stack: activating a version twice can neither make /rollback
ping-pong nor make ``fail`` loop (issue 14). On SQLite and PostgreSQL, no models loaded."""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

import pytest
import sqlalchemy as sa

from bot.core.errors import UserFacingError
from bot.core.registry import ModelStatus
from bot.infra.storage import migrate
from bot.infra.storage.models import ModelActivation, ModelVersion
from bot.infra.storage.registry import SqlRegistry
from bot.infra.storage.store import SqlStore, make_engine
from tests.test_registry import statuses, trained

GUARD_SECONDS = 20.0

P = ParamSpec("P")
R = TypeVar("R")




def bounded(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args)``, which must return (or raise) within GUARD_SECONDS: a registry call that
    walks a cycle fails the test instead of hanging it (the stuck thread is a daemon)."""
    values: list[R] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            values.append(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(GUARD_SECONDS)
    assert not worker.is_alive(), f"{fn.__name__}{args} did not return: it loops"
    if errors:
        raise errors[0]
    return values[0]


def active(registry: SqlRegistry) -> str | None:
    view = bounded(registry.active)
    return view.version if view else None


def stack(registry: SqlRegistry) -> list[str]:
    """The persona's rollback stack, bottom first, as stored."""
    with registry.store.session() as s:
        return list(s.scalars(
            sa.select(ModelVersion.version)
            .join(ModelActivation, ModelActivation.version_id == ModelVersion.id)
            .where(ModelActivation.persona == registry.persona)
            .order_by(ModelActivation.position)))


def test_activating_a_version_again_rolls_back_in_activation_order(registry, tmp_path):
    v1, v2 = trained(registry, tmp_path), trained(registry, tmp_path)
    assert bounded(registry.activate, v1, "test:ada").previous is None
    assert bounded(registry.activate, v2, "test:ada").previous == v1
    # v1 again: its rollback target is v2, and v2's is the first activation of v1.
    assert bounded(registry.activate, v1, "test:ada").previous == v2
    assert active(registry) == v1 and stack(registry) == [v1, v2, v1]

    # Each rollback undoes one activation: v2, then v1, then the base model (no ping-pong).
    assert bounded(registry.rollback, "test:ada").version == v2
    assert active(registry) == v2 and bounded(registry.active).previous == v1
    assert bounded(registry.rollback, "test:ada").version == v1
    assert active(registry) == v1 and bounded(registry.active).previous is None
    assert bounded(registry.rollback, "test:ada") is None
    assert active(registry) is None and stack(registry) == []
    with pytest.raises(UserFacingError) as nothing:
        bounded(registry.rollback, "test:ada")
    assert "base model answers" in nothing.value.user_message
    assert statuses(registry) == {v1: "retired", v2: "retired"}


def test_failing_versions_activated_twice_never_loops(registry, tmp_path):
    v1, v2, v3 = (trained(registry, tmp_path) for _ in range(3))
    for v in (v1, v2, v1):
        bounded(registry.activate, v, "test:ada")

    # The active v1 fails (its model would not load): v2, the entry below it, answers; v1 is
    # off the stack entirely, so no rollback can return to it.
    assert bounded(registry.fail, v1, "could not be loaded: OSError") == v2
    assert active(registry) == v2 and stack(registry) == [v2]
    assert statuses(registry) == {v1: "failed", v2: "active", v3: "candidate"}

    # The case that hung the bot: v1, v2, v1 with v2 failed since, then v1 failing too. The
    # previous_id pointers went v1 → v2 → v1 → … past failed versions forever.
    bounded(registry.activate, v3, "test:ada")
    bounded(registry.activate, v1, "test:ada", force=True)
    bounded(registry.activate, v3, "test:ada")
    assert stack(registry) == [v2, v3, v1, v3]
    assert bounded(registry.fail, v1, "could not be loaded: OSError") is None  # not active
    assert active(registry) == v3 and stack(registry) == [v2, v3, v3]
    assert bounded(registry.fail, v3, "could not be loaded: OSError") == v2
    assert active(registry) == v2 and stack(registry) == [v2]
    assert bounded(registry.fail, v2, "could not be loaded: OSError") is None
    assert active(registry) is None and stack(registry) == []
    assert set(statuses(registry).values()) == {"failed"}

    # A forced activation of a failed version puts it back on the stack like any other.
    assert bounded(registry.activate, v2, "test:ada", force=True).previous is None
    assert active(registry) == v2 and stack(registry) == [v2]


def test_rollback_and_fail_skip_entries_that_cannot_answer(registry, tmp_path):
    v1, v2, v3 = (trained(registry, tmp_path) for _ in range(3))
    for v in (v1, v2, v1, v3):
        bounded(registry.activate, v, "test:ada")
    shutil.rmtree(tmp_path / v1)  # both of v1's entries are unusable now
    assert bounded(registry.rollback, "test:ada").version == v2
    assert stack(registry) == [v1, v2]  # the entry rolled past is dropped, the older one stays
    (tmp_path / v1).mkdir()
    assert bounded(registry.rollback, "test:ada").version == v1

    # A version rejected after the fact is no rollback target either.
    bounded(registry.activate, v2, "test:ada")
    bounded(registry.activate, v3, "test:ada")
    bounded(registry.reject, v2, ["persona_score 0.50 < 0.90"])
    assert stack(registry) == [v1, v3]
    assert bounded(registry.rollback, "test:ada").version == v1


class Reference:
    """The intended behaviour, in plain Python: a list as the stack, statuses by hand."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.status: dict[str, str] = {}
        self.has_dir: dict[str, bool] = {}
        self.model_dir: dict[str, bool] = {}  # whether training exported a merged model

    @property
    def active(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def usable(self, v: str) -> bool:
        return self.status[v] not in ("failed", "rejected") and self.has_dir[v]

    def register(self, v: str, passed: bool) -> None:
        self.status[v] = "candidate" if passed else "rejected"
        self.has_dir[v] = self.model_dir[v] = passed

    def activate(self, v: str, force: bool) -> bool:
        """False: the registry must refuse."""
        if self.status[v] == "active" or not self.has_dir[v]:
            return False
        if self.status[v] in ("failed", "rejected") and not force:
            return False
        if self.active:
            self.status[self.active] = "retired"
        self.stack.append(v)
        self.status[v] = "active"
        return True

    def rollback(self) -> bool:
        if self.active is None:
            return False
        self.status[self.stack.pop()] = "retired"
        self._resume()
        return True

    def drop(self, v: str, status: str) -> str | None:
        """fail / reject: off the stack; if it was active, what answers now."""
        was_active = self.status[v] == "active"
        self.status[v] = status
        self.stack = [x for x in self.stack if x != v]
        if was_active:
            self._resume()
            return self.active
        return None

    def _resume(self) -> None:
        while self.stack and not self.usable(self.stack[-1]):
            self.stack.pop()
        if self.stack:
            self.status[self.stack[-1]] = "active"


def check(registry: SqlRegistry, ref: Reference, step: str) -> None:
    view = bounded(registry.active)
    got = view.version if view else None
    assert got == ref.active, step
    if view is not None:  # a real version of this persona, answering
        assert view.version in ref.status and view.status == ModelStatus.ACTIVE, step
        assert view.model_dir, step
        assert view.previous == (ref.stack[-2] if len(ref.stack) > 1 else None), step
    assert bounded(statuses, registry) == ref.status, step
    assert stack(registry) == ref.stack, step


@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_random_lifecycles_match_a_plain_stack(registry, tmp_path, seed):
    rng = random.Random(seed)
    ref = Reference()
    versions: list[str] = []
    counts: dict[str, int] = {}
    for n in range(300):
        op = rng.choices(["register", "activate", "rollback", "fail", "reject", "lose_folder",
                          "restore_folder"], weights=[8, 40, 25, 10, 4, 7, 6])[0]
        if op == "register" and len(versions) >= 5 or op != "register" and not versions:
            op = "register" if not versions else "activate"
        step = f"seed {seed} op {n}: {op}"
        if op == "register":
            passed = rng.random() < 0.85
            v = bounded(trained, registry, tmp_path, passed=passed, retention=0.5)
            versions.append(v)
            ref.register(v, passed)
            step += f" {v}"
        elif op == "activate":
            v, force = rng.choice(versions), rng.random() < 0.5
            step += f" {v} force={force}"
            if ref.activate(v, force):
                assert bounded(registry.activate, v, "test:ada", force=force).version == v, step
            else:
                with pytest.raises(UserFacingError):
                    bounded(registry.activate, v, "test:ada", force=force)
        elif op == "rollback":
            if ref.rollback():
                back = bounded(registry.rollback, "test:ada")
                assert (back.version if back else None) == ref.active, step
            else:
                with pytest.raises(UserFacingError):
                    bounded(registry.rollback, "test:ada")
        elif op in ("fail", "reject"):
            v = rng.choice(versions)
            step += f" {v}"
            if op == "fail":
                expected = ref.drop(v, "failed")
                assert bounded(registry.fail, v, "could not be loaded") == expected, step
            else:
                ref.drop(v, "rejected")
                bounded(registry.reject, v, ["persona_score 0.50 < 0.90"])
        elif op == "lose_folder":
            v = rng.choice(versions)
            if ref.has_dir[v]:
                shutil.rmtree(tmp_path / v)
                ref.has_dir[v] = False
        elif op == "restore_folder":
            v = rng.choice(versions)
            if ref.model_dir[v] and not ref.has_dir[v]:
                (tmp_path / v).mkdir()
                ref.has_dir[v] = True
        counts[op] = counts.get(op, 0) + 1
        check(registry, ref, step)
    # The walk covered what matters: repeated activations, rollbacks to the base, failures.
    assert counts["activate"] > 50 and counts["rollback"] > 30 and counts["fail"] > 10


def test_migration_builds_the_stack_from_a_cyclic_previous_id_chain(database_url, tmp_path):
    """A database written before 0006, where v1, v2, v1 left v1 and v2 pointing at each
    other (v3 failed in between, v4 never activated): upgrade stops at the cycle, downgrade
    writes back a chain without one."""
    engine = make_engine(database_url)
    try:
        migrate.upgrade(engine, "0005")
        old = sa.table("model_versions", *(sa.column(c) for c in (
            "id", "persona", "version", "status", "base_model", "model_dir", "previous_id")),
            *(sa.column(c, sa.JSON) for c in ("config", "metrics", "reasons")),
            *(sa.column(c, sa.DateTime(timezone=True)) for c in ("created_at", "activated_at")))
        now = datetime.now(UTC)
        rows = [  # id, status, previous_id
            (1, "active", 2), (2, "retired", 3), (3, "failed", 1), (4, "candidate", None)]
        with engine.begin() as conn:
            for i, status, _ in rows:
                (tmp_path / f"v{i}").mkdir()
                conn.execute(old.insert().values(
                    id=i, persona="manman", version=f"manman-v{i}", status=status,
                    base_model="starter", model_dir=str(tmp_path / f"v{i}"), config={},
                    metrics={}, reasons=[], previous_id=None, created_at=now, activated_at=now))
            for i, _, previous in rows:  # after all rows exist: the foreign keys hold
                conn.execute(old.update().where(old.c.id == i).values(previous_id=previous))

        migrate.upgrade(engine)
        registry = SqlRegistry(SqlStore(engine), "manman")
        assert stack(registry) == ["manman-v2", "manman-v1"]  # v3 failed, then the cycle ends
        served = bounded(registry.active)
        assert served is not None and served.previous == "manman-v2"

        bounded(registry.activate, "manman-v4", "test:ada")
        bounded(registry.activate, "manman-v2", "test:ada")
        assert stack(registry) == ["manman-v2", "manman-v1", "manman-v4", "manman-v2"]
        migrate.downgrade(engine, "0005")
        with engine.connect() as conn:
            chain = dict(conn.execute(sa.select(old.c.version, old.c.previous_id)).all())
        assert chain == {"manman-v2": 4, "manman-v4": 1, "manman-v1": None, "manman-v3": None}

        migrate.upgrade(engine)
        assert stack(registry) == ["manman-v1", "manman-v4", "manman-v2"]
        assert [bounded(registry.rollback, "test:ada") is not None for _ in range(3)] == [
            True, True, False]
    finally:
        engine.dispose()

