"""the durable inbox: incoming messages (inbox) and what was sent in answer (inbox_sent)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 09:00:00
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'inbox',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('platform', sa.String(length=32), nullable=False),
        sa.Column('delivery_key', sa.String(length=128), nullable=False),
        sa.Column('chat_key', sa.String(length=200), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=True),
        sa.Column('claim', sa.String(length=36), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('overflow', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox')),
        sa.UniqueConstraint('platform', 'delivery_key', name=op.f('uq_inbox_platform')),
    )
    op.create_index('ix_inbox_chat_key_id', 'inbox', ['chat_key', 'id'])
    op.create_index(op.f('ix_inbox_state'), 'inbox', ['state'])
    op.create_table(
        'inbox_sent',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('inbox_id', sa.Integer(), nullable=False),
        sa.Column('part', sa.String(length=64), nullable=False),
        sa.Column('platform_message_id', sa.String(length=128), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['inbox_id'], ['inbox.id'], ondelete='CASCADE',
                                name=op.f('fk_inbox_sent_inbox_id_inbox')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_sent')),
        sa.UniqueConstraint('inbox_id', 'part', name=op.f('uq_inbox_sent_inbox_id')),
    )


def downgrade() -> None:
    op.drop_table('inbox_sent')
    op.drop_index(op.f('ix_inbox_state'), table_name='inbox')
    op.drop_index('ix_inbox_chat_key_id', table_name='inbox')
    op.drop_table('inbox')
