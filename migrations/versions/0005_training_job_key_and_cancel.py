"""training jobs: what they train on (duplicate /retrain) and cancellation requests

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dataset_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('base_model', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('config', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('cancel_requested_by', sa.String(length=160), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_column('cancel_requested_by')
        batch_op.drop_column('config')
        batch_op.drop_column('base_model')
        batch_op.drop_column('dataset_sha256')
