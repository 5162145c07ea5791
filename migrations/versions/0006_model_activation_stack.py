"""model versions: the rollback history as a stack of activations (model_activations)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00

``model_versions.previous_id`` (who was active when a version was activated) formed a cycle
once a version was activated twice (v1, v2, v1), and walking it back never ended. The history
becomes an explicit stack per persona, in activation order; see
``bot.infra.storage.models.ModelActivation``.

Upgrade: each persona's stack is built from its active version's ``previous_id`` chain,
stopping where the chain comes back to a version already seen; failed and rejected versions
are left out (no rollback can return to them). Downgrade: ``previous_id`` is rebuilt from the
stack, each version keeping only its newest place in it, so the chain older code follows has
no cycle; versions off the stack get no ``previous_id``.

Plain SQLAlchemy (no dialect-specific SQL), so it runs the same on SQLite and PostgreSQL.
The data is read before and written after the ALTERs: on SQLite a batch ALTER copies
model_versions into a new table, which must not happen while rows of model_activations
point into it (the store turns foreign keys on).
"""
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables as this migration knows them (the models will change later; this must not).
versions = sa.table(
    'model_versions',
    sa.column('id', sa.Integer), sa.column('persona', sa.String), sa.column('status', sa.String),
    sa.column('previous_id', sa.Integer), sa.column('activated_at', sa.DateTime(timezone=True)),
)
activations = sa.table(
    'model_activations',
    sa.column('id', sa.Integer), sa.column('persona', sa.String), sa.column('position', sa.Integer),
    sa.column('version_id', sa.Integer), sa.column('activated_at', sa.DateTime(timezone=True)),
    sa.column('actor', sa.String),
)

#: One model_versions row as read by the upgrade: id, persona, status, previous_id, activated_at.
_VersionRow = sa.Row[Any, Any, Any, Any, Any]


def _stacks_from_chains(bind: sa.Connection) -> list[dict[str, object]]:
    rows: dict[int, _VersionRow] = {r.id: r for r in bind.execute(sa.select(
        versions.c.id, versions.c.persona, versions.c.status, versions.c.previous_id,
        versions.c.activated_at)).all()}
    active: dict[str, _VersionRow] = {}
    for r in sorted(rows.values(), key=lambda r: r.id):
        if r.status == 'active':
            active[r.persona] = r  # one per persona; were there more, the newest
    now = datetime.now(UTC)
    entries: list[dict[str, object]] = []
    for persona, top in sorted(active.items()):
        chain: list[_VersionRow] = []
        seen: set[int] = set()
        cur: _VersionRow | None = top
        while cur is not None and cur.id not in seen and cur.persona == persona:
            seen.add(cur.id)
            if cur is top or cur.status not in ('failed', 'rejected'):
                chain.append(cur)
            cur = rows.get(cur.previous_id) if cur.previous_id is not None else None
        for position, r in enumerate(reversed(chain), start=1):
            entries.append({'persona': persona, 'position': position, 'version_id': r.id,
                            'activated_at': r.activated_at or now, 'actor': 'migration 0006'})
    return entries


def upgrade() -> None:
    bind = op.get_bind()
    entries = _stacks_from_chains(bind)

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_constraint('fk_model_versions_previous_id_model_versions',
                                 type_='foreignkey')
        batch_op.drop_column('previous_id')

    op.create_table('model_activations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('persona', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('activated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=160), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['model_versions.id'], name=op.f('fk_model_activations_version_id_model_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_activations')),
    sa.UniqueConstraint('persona', 'position', name=op.f('uq_model_activations_persona'))
    )
    with op.batch_alter_table('model_activations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_activations_version_id'), ['version_id'], unique=False)

    if entries:
        bind.execute(activations.insert(), entries)


def downgrade() -> None:
    bind = op.get_bind()
    stack: dict[str, list[int]] = {}
    for r in bind.execute(sa.select(activations.c.persona, activations.c.version_id)
                          .order_by(activations.c.persona, activations.c.position)).all():
        stack.setdefault(r.persona, []).append(r.version_id)

    with op.batch_alter_table('model_activations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_activations_version_id'))
    op.drop_table('model_activations')

    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_model_versions_previous_id_model_versions',
                                    'model_versions', ['previous_id'], ['id'])

    for ids in stack.values():
        newest_first = list(dict.fromkeys(reversed(ids)))  # each version at its newest place
        for i, version_id in enumerate(newest_first):
            previous = newest_first[i + 1] if i + 1 < len(newest_first) else None
            bind.execute(versions.update().where(versions.c.id == version_id)
                         .values(previous_id=previous))
