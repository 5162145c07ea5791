"""curation pairs audit log dataset snapshots

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 22:37:08.231841
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=160), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('pair_id', sa.Integer(), nullable=True),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_pair_id'), ['pair_id'], unique=False)

    op.create_table('dataset_snapshots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('persona', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_snapshots'))
    )
    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_snapshots_persona'), ['persona'], unique=False)

    op.create_table('pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('persona', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('question_key', sa.String(length=512), nullable=False),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('exchange_id', sa.Integer(), nullable=True),
    sa.Column('platform', sa.String(length=32), nullable=True),
    sa.Column('platform_chat_id', sa.String(length=128), nullable=True),
    sa.Column('incoming_message_id', sa.String(length=128), nullable=True),
    sa.Column('reply_message_id', sa.String(length=128), nullable=True),
    sa.Column('asked_by_id', sa.Integer(), nullable=True),
    sa.Column('model_version', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=160), nullable=True),
    sa.Column('superseded_by_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['asked_by_id'], ['users.id'], name=op.f('fk_pairs_asked_by_id_users')),
    sa.ForeignKeyConstraint(['exchange_id'], ['exchanges.id'], name=op.f('fk_pairs_exchange_id_exchanges')),
    sa.ForeignKeyConstraint(['superseded_by_id'], ['pairs.id'], name=op.f('fk_pairs_superseded_by_id_pairs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pairs')),
    sa.UniqueConstraint('exchange_id', name=op.f('uq_pairs_exchange_id'))
    )
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pairs_asked_by_id'), ['asked_by_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_pairs_persona'), ['persona'], unique=False)
        batch_op.create_index(batch_op.f('ix_pairs_question_key'), ['question_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_pairs_status'), ['status'], unique=False)

    with op.batch_alter_table('exchanges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_message_id', sa.String(length=128), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('exchanges', schema=None) as batch_op:
        batch_op.drop_column('reply_message_id')

    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pairs_status'))
        batch_op.drop_index(batch_op.f('ix_pairs_question_key'))
        batch_op.drop_index(batch_op.f('ix_pairs_persona'))
        batch_op.drop_index(batch_op.f('ix_pairs_asked_by_id'))

    op.drop_table('pairs')
    with op.batch_alter_table('dataset_snapshots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_snapshots_persona'))

    op.drop_table('dataset_snapshots')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_pair_id'))
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))

    op.drop_table('audit_log')
