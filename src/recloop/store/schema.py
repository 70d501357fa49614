"""Tables of the event store, as SQLAlchemy Core metadata.

The migrations under ``migrations/versions`` create exactly these tables; the store's queries
are written against them. JSON values are TEXT (``json.dumps``) and times are float epoch
seconds, so the same schema works on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGINT identity.
SequenceNumber = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "events",
    metadata,
    # Insertion order: breaks ties between events with the same timestamp.
    sa.Column("seq", SequenceNumber, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String, nullable=False),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("item_id", sa.String, nullable=True),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("timestamp", sa.Double, nullable=False),
    sa.Column("value", sa.Double, nullable=True),
    sa.Column("slate_id", sa.String, nullable=True),
    sa.Column("context", sa.Text, nullable=True),
    sa.UniqueConstraint("event_id"),
    sa.Index(None, "user_id", "timestamp", "seq"),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("item_id", sa.String, primary_key=True),
    sa.Column("title", sa.Text, nullable=False, server_default=""),
    sa.Column("text", sa.Text, nullable=False, server_default=""),
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("hidden", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("available_from", sa.Double, nullable=True),
    sa.Column("available_until", sa.Double, nullable=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String, primary_key=True),
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("preferences", sa.Text, nullable=False, server_default="{}"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("key_hash", sa.String, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double, nullable=True),
    sa.UniqueConstraint("key_hash"),
    sa.CheckConstraint("role IN ('client', 'admin')", name="role"),
)
