"""Initial schema: events, items, users and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT.
SEQUENCE_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("seq", SEQUENCE_NUMBER, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("item_id", sa.String(), nullable=True),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("slate_id", sa.String(), nullable=True),
        sa.Column("context", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_events_event_id")),
    )
    op.create_index(
        op.f("ix_events_user_id_timestamp_seq"), "events", ["user_id", "timestamp", "seq"]
    )
    op.create_table(
        "items",
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("title", sa.Text(), server_default="", nullable=False),
        sa.Column("text", sa.Text(), server_default="", nullable=False),
        sa.Column("attributes", sa.Text(), server_default="{}", nullable=False),
        sa.Column("hidden", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("available_from", sa.Double(), nullable=True),
        sa.Column("available_until", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_items")),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("attributes", sa.Text(), server_default="{}", nullable=False),
        sa.Column("preferences", sa.Text(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("key_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
        sa.CheckConstraint("role IN ('client', 'admin')", name=op.f("ck_api_keys_role")),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("items")
    op.drop_index(op.f("ix_events_user_id_timestamp_seq"), table_name="events")
    op.drop_table("events")
