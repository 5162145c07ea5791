"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29 21:58:36.069911
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('chats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=False),
    sa.Column('platform_chat_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chats')),
    sa.UniqueConstraint('platform', 'platform_chat_id', name=op.f('uq_chats_platform'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('platform', sa.String(length=32), nullable=False),
    sa.Column('platform_user_id', sa.String(length=128), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('platform', 'platform_user_id', name=op.f('uq_users_platform'))
    )
    op.create_table('exchanges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chat_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('input_kind', sa.String(length=16), nullable=False),
    sa.Column('incoming_message_id', sa.String(length=128), nullable=True),
    sa.Column('transcript', sa.Text(), nullable=False),
    sa.Column('reply_text', sa.Text(), nullable=False),
    sa.Column('language', sa.String(length=16), nullable=False),
    sa.Column('audio_duration_s', sa.Float(), nullable=True),
    sa.Column('reply_duration_s', sa.Float(), nullable=True),
    sa.Column('timings_ms', sa.JSON(), nullable=False),
    sa.Column('model_version', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['chats.id'], name=op.f('fk_exchanges_chat_id_chats')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_exchanges_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exchanges'))
    )
    with op.batch_alter_table('exchanges', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exchanges_chat_id'), ['chat_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_exchanges_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_exchanges_user_id'), ['user_id'], unique=False)

    op.create_table('history_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chat_id', sa.Integer(), nullable=False),
    sa.Column('exchange_id', sa.Integer(), nullable=True),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('speaker', sa.String(length=256), nullable=True),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['chat_id'], ['chats.id'], name=op.f('fk_history_messages_chat_id_chats')),
    sa.ForeignKeyConstraint(['exchange_id'], ['exchanges.id'], name=op.f('fk_history_messages_exchange_id_exchanges')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_history_messages'))
    )
    with op.batch_alter_table('history_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_history_messages_chat_id'), ['chat_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('history_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_history_messages_chat_id'))

    op.drop_table('history_messages')
    with op.batch_alter_table('exchanges', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exchanges_user_id'))
        batch_op.drop_index(batch_op.f('ix_exchanges_created_at'))
        batch_op.drop_index(batch_op.f('ix_exchanges_chat_id'))

    op.drop_table('exchanges')
    op.drop_table('users')
    op.drop_table('chats')
