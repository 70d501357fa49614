"""The feedback loop: slates and their impressions, bandit posteriors, retraining history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

SEQUENCE_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index(op.f("ix_events_slate_id"), "events", ["slate_id"])
    op.create_table(
        "slates",
        sa.Column("slate_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("segment", sa.String(), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=True),
        sa.Column("arm_probability", sa.Double(), nullable=True),
        sa.Column("policy", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("slate_id", name=op.f("pk_slates")),
    )
    op.create_index(op.f("ix_slates_user_id"), "slates", ["user_id"])
    op.create_index(op.f("ix_slates_created_at"), "slates", ["created_at"])
    op.create_table(
        "impressions",
        sa.Column("slate_id", sa.String(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.Column("item_id", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("generated", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("slate_id", "position", name=op.f("pk_impressions")),
    )
    op.create_table(
        "bandit_arms",
        sa.Column("segment", sa.String(), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("alpha", sa.Double(), nullable=False),
        sa.Column("beta", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("segment", "arm", name=op.f("pk_bandit_arms")),
    )
    op.create_table(
        "retrain_log",
        sa.Column("seq", SEQUENCE_NUMBER, autoincrement=True, nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_retrain_log")),
    )


def downgrade() -> None:
    op.drop_table("retrain_log")
    op.drop_table("bandit_arms")
    op.drop_table("impressions")
    op.drop_index(op.f("ix_slates_created_at"), table_name="slates")
    op.drop_index(op.f("ix_slates_user_id"), table_name="slates")
    op.drop_table("slates")
    op.drop_index(op.f("ix_events_slate_id"), table_name="events")
