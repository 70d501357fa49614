"""Generated content under human review: the pieces, their audiences, the audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

SEQUENCE_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "generated_content",
        sa.Column("content_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("segment", sa.String(), nullable=False),
        sa.Column("priority", sa.Double(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("checks_passed", sa.Boolean(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("provenance", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("reviewer", sa.String(), nullable=True),
        sa.Column("decided_at", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("content_id", name=op.f("pk_generated_content")),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')",
            name=op.f("ck_generated_content_status"),
        ),
        sa.CheckConstraint(
            "kind IN ('collection', 'concept')", name=op.f("ck_generated_content_kind")
        ),
    )
    op.create_index(
        op.f("ix_generated_content_status_segment"), "generated_content", ["status", "segment"]
    )
    op.create_table(
        "generated_content_audience",
        sa.Column("content_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint(
            "content_id", "user_id", name=op.f("pk_generated_content_audience")
        ),
        sa.ForeignKeyConstraint(
            ["content_id"],
            ["generated_content.content_id"],
            name=op.f("fk_generated_content_audience_content_id"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        op.f("ix_generated_content_audience_user_id"), "generated_content_audience", ["user_id"]
    )
    op.create_table(
        "generated_content_audit",
        sa.Column("seq", SEQUENCE_NUMBER, autoincrement=True, nullable=False),
        sa.Column("content_id", sa.String(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("from_status", sa.String(), nullable=True),
        sa.Column("to_status", sa.String(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_generated_content_audit")),
    )
    op.create_index(
        op.f("ix_generated_content_audit_content_id_seq"),
        "generated_content_audit",
        ["content_id", "seq"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_generated_content_audit_content_id_seq"), table_name="generated_content_audit"
    )
    op.drop_table("generated_content_audit")
    op.drop_index(
        op.f("ix_generated_content_audience_user_id"), table_name="generated_content_audience"
    )
    op.drop_table("generated_content_audience")
    op.drop_index(op.f("ix_generated_content_status_segment"), table_name="generated_content")
    op.drop_table("generated_content")
