"""Event ids are unique per user, not across the store: ``UNIQUE (event_id, user_id)``.

A client's event id is its idempotency key. Store-wide, two client applications that chose
the same id collided: the second one's event was answered as a duplicate and not stored.
Every user belongs to one application, so scoping ids to their user rules that out while a
resend of the same event stays a duplicate. Existing rows satisfy the new constraint (the old
one was stricter). The id leads the index, as it led the old one: ids a client sends in order
then land at the end of the index (leading with the user scattered them over it, and SQLite's
ingest rate in bench/bench_service_ingest.py fell markedly). SQLite cannot drop a table's
UNIQUE constraint, so batch mode copies the events table once (its indexes included).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_event_id", type_="unique")
        batch.create_unique_constraint("uq_events_event_id_user_id", ["event_id", "user_id"])


def downgrade() -> None:
    """Fails while two users' events share an id (the store-wide constraint forbids it)."""
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_event_id_user_id", type_="unique")
        batch.create_unique_constraint("uq_events_event_id", ["event_id"])
