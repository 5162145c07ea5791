"""training jobs: who runs them (owner, heartbeat_at); training notices as an outbox

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 12:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'training_notices',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('persona', sa.String(length=64), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('platform', sa.String(length=32), nullable=False),
        sa.Column('chat_id', sa.String(length=128), nullable=False),
        sa.Column('message', sa.JSON(), nullable=False),
        sa.Column('image', sa.Text(), nullable=True),
        sa.Column('final', sa.Boolean(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('claimed_by', sa.String(length=64), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_training_notices')),
    )
    op.create_index('ix_training_notices_chat', 'training_notices',
                    ['persona', 'platform', 'chat_id', 'id'])
    op.create_index(op.f('ix_training_notices_sent_at'), 'training_notices', ['sent_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_training_notices_sent_at'), table_name='training_notices')
    op.drop_index('ix_training_notices_chat', table_name='training_notices')
    op.drop_table('training_notices')
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owner')
