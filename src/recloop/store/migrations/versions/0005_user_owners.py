"""Ownership: each API key's client application (``api_keys.owner``, existing keys get their
name), and which application acts for each user (``user_owners``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("owner", sa.Text(), nullable=True))
    op.execute(sa.text("UPDATE api_keys SET owner = name"))
    # SQLite cannot add NOT NULL to a column: batch mode copies the table (keys are few)
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("owner", existing_type=sa.Text(), nullable=False)
    op.create_table(
        "user_owners",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("claimed_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_owners")),
    )
    op.create_index("ix_user_owners_claimed_at", "user_owners", ["claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_user_owners_claimed_at", table_name="user_owners")
    op.drop_table("user_owners")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("owner")
