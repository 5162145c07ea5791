"""Model versions: activation, rollback, failure, on SQLite and PostgreSQL; the CLI on top."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bot.core.errors import UserFacingError
from bot.core.registry import ModelStatus
from bot.infra.storage import migrate
from bot.infra.storage.models import AuditEntry
from bot.infra.storage.registry import SqlRegistry
from bot.infra.storage.store import SqlStore, make_engine
from tests.test_cli import chatman


def trained(registry: SqlRegistry, folder, passed: bool = True, retention: float = 1.0) -> str:
    """A version as a finished training run leaves it (merged folder only when it passed)."""
    v = registry.create_candidate(base_model="starter", config={"max_steps": 30}, job_id=None,
                                  created_by="test").version
    model_dir = folder / v
    if passed:
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_text("{}")
    registry.record_result(v, base_version="base", directory=folder, dataset_sha256="ab" * 32,
                           model_dir=model_dir if passed else None, dataset_rows=4, steps=20,
                           metrics={"persona_score": 1.0, "retention": retention, "leakage": 0.0},
                           reasons=[] if passed else ["retention 0.50 < 0.95"])
    if not passed:
        registry.reject(v, ["retention 0.50 < 0.95"])
    return v


def statuses(registry: SqlRegistry) -> dict[str, str]:
    return {v.version: v.status for v in registry.list()}


def test_activate_and_roll_back_through_the_history(registry, tmp_path):
    v1, v2, v3 = (trained(registry, tmp_path) for _ in range(3))
    assert (v1, v2, v3) == ("manman-v1", "manman-v2", "manman-v3")
    assert registry.active() is None
    assert registry.served("starter").model_ref == "starter"

    registry.activate(v1, "test:ada")
    registry.activate(v2, "test:ada")
    view = registry.activate(v3, "test:ada")
    assert view.previous == v2 and view.activated_at is not None
    assert statuses(registry) == {v1: "retired", v2: "retired", v3: "active"}
    assert registry.served("starter").version == v3
    assert registry.served("starter").model_ref == str(tmp_path / v3)

    # Each rollback goes one step further back, ending at the base model.
    assert registry.rollback("test:ada").version == v2
    assert statuses(registry) == {v1: "retired", v2: "active", v3: "retired"}
    assert registry.rollback("test:ada").version == v1
    assert registry.rollback("test:ada") is None
    assert registry.active() is None and set(statuses(registry).values()) == {"retired"}
    with pytest.raises(UserFacingError) as nothing:
        registry.rollback("test:ada")
    assert "base model answers" in nothing.value.user_message

    actions = [e.action for e in registry_audit(registry)]
    assert actions.count("model.rollback") == 3 and actions.count("model.activate") >= 5


def registry_audit(registry: SqlRegistry) -> list[AuditEntry]:
    with registry.store.session() as s:
        return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_rejected_and_failed_versions_need_force_or_cannot_load(registry, tmp_path):
    good = trained(registry, tmp_path)
    bad = trained(registry, tmp_path, passed=False, retention=0.5)
    with pytest.raises(UserFacingError) as refused:
        registry.activate(bad, "test:ada")
    assert "no merged model" in refused.value.user_message
    assert statuses(registry)[bad] == ModelStatus.REJECTED

    registry.activate(good, "test:ada")
    with pytest.raises(UserFacingError, match="already"):
        registry.activate(good, "test:ada")
    with pytest.raises(UserFacingError) as unknown:
        registry.activate("manman-v9", "test:ada")
    assert "no model version 'manman-v9'" in unknown.value.user_message

    # A version whose gate failed but that was exported anyway (forced) needs --force.
    forced = trained(registry, tmp_path)
    registry.reject(forced, ["persona_score 0.50 < 0.90"])
    with pytest.raises(UserFacingError, match="rejected"):
        registry.activate(forced, "test:ada")
    assert registry.activate(forced, "test:ada", force=True).previous == good

    # An active version that turns out unloadable hands back to the one before it.
    assert registry.fail(forced, "could not be loaded: OSError") == good
    assert statuses(registry)[forced] == ModelStatus.FAILED
    assert registry.active().version == good


def test_rollback_skips_versions_whose_folder_is_gone(registry, tmp_path):
    v1, v2, v3 = (trained(registry, tmp_path) for _ in range(3))
    for v in (v1, v2, v3):
        registry.activate(v, "test:ada")
    (tmp_path / v2 / "config.json").unlink()
    (tmp_path / v2).rmdir()
    assert registry.rollback("test:ada").version == v1


def test_models_cli_lists_activates_and_rolls_back(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'chatman.db'}")
    migrate.upgrade(engine)
    registry = SqlRegistry(SqlStore(engine), "manman")
    v1 = trained(registry, tmp_path / "runs")
    bad = trained(registry, tmp_path / "runs", passed=False, retention=0.5)
    engine.dispose()

    listed = chatman(tmp_path, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["serving"] == "starter"
    assert [(v["version"], v["status"]) for v in data["versions"]] == [
        (bad, "rejected"), (v1, "candidate")]

    assert chatman(tmp_path, "models", "activate", v1).stdout.strip() == f"{v1} is active"
    refused = chatman(tmp_path, "models", "activate", bad)
    assert refused.returncode == 2 and "no merged model" in refused.stderr
    table = chatman(tmp_path, "models", "list", COLUMNS="200")
    assert f"serving: {v1}" in table.stdout and "retention 0.50 < 0.95" in table.stdout

    back = chatman(tmp_path, "models", "rollback", "--as", "ops")
    assert back.returncode == 0 and back.stdout.strip() == (
        f"rolled back from {v1} to the base model (starter)")
    again = chatman(tmp_path, "models", "rollback")
    assert again.returncode == 2 and "Nothing to roll back" in again.stderr
