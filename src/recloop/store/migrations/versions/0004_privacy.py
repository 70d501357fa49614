"""Privacy: users' consent, tombstones of erased users, the audit log of privacy requests;
and the history of the bandit's policy (for plotting it over time).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

SEQUENCE_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "consent",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("personalisation", sa.Boolean(), nullable=False),
        sa.Column("training", sa.Boolean(), nullable=False),
        sa.Column("generative", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_consent")),
    )
    op.create_table(
        "tombstones",
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("erased_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_tombstones")),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", SEQUENCE_NUMBER, autoincrement=True, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_index(op.f("ix_audit_log_subject"), "audit_log", ["subject"])
    op.create_table(
        "bandit_history",
        sa.Column("seq", SEQUENCE_NUMBER, autoincrement=True, nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("segment", sa.String(), nullable=False),
        sa.Column("probabilities", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_bandit_history")),
    )


def downgrade() -> None:
    op.drop_table("bandit_history")
    op.drop_index(op.f("ix_audit_log_subject"), table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("tombstones")
    op.drop_table("consent")
