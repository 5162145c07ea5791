"""Schema upgrades through Alembic, usable from code (app start, `chatman db`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Engine


def _config(engine: Engine) -> Config:
    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # Percent signs in URLs (encoded passwords) would be read as interpolation.
    cfg.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return cfg


#: PostgreSQL advisory lock id held while upgrading ("chatman" in ASCII).
UPGRADE_LOCK = 0x63686174_6D616E


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema. Replicas starting together upgrade one after the other: the
    PostgreSQL upgrade takes a transaction-scoped advisory lock first, so the second one waits
    and then finds the schema current (two concurrent CREATE TABLEs would fail one start)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(UPGRADE_LOCK)))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(_config(engine)).get_current_head()
