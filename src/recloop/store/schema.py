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
    # Event ids are the client's idempotency keys, scoped to their user (migration 0006): each
    # user belongs to one client application, so applications cannot collide on an id.
    sa.UniqueConstraint("event_id", "user_id"),
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

# The feedback loop (migration 0002). Outcomes are events carrying a ``slate_id``.
events.append_constraint(sa.Index("ix_events_slate_id", events.c.slate_id))

slates = sa.Table(
    "slates",
    metadata,
    sa.Column("slate_id", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, nullable=False, index=True),
    sa.Column("created_at", sa.Double, nullable=False, index=True),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("segment", sa.String, nullable=False),
    sa.Column("arm", sa.Integer, nullable=True),
    # The probability with which the logging policy chose ``arm`` (for off-policy estimates).
    sa.Column("arm_probability", sa.Double, nullable=True),
    sa.Column("policy", sa.Text, nullable=True),
)

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("slate_id", sa.String, primary_key=True),
    sa.Column("position", sa.SmallInteger, primary_key=True),
    sa.Column("item_id", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("generated", sa.Boolean, nullable=False, server_default=sa.false()),
)

bandit_arms = sa.Table(
    "bandit_arms",
    metadata,
    sa.Column("segment", sa.String, primary_key=True),
    sa.Column("arm", sa.Integer, primary_key=True),
    sa.Column("alpha", sa.Double, nullable=False),
    sa.Column("beta", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

retrain_log = sa.Table(
    "retrain_log",
    metadata,
    sa.Column("seq", SequenceNumber, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Column("trigger", sa.String, nullable=False),
    sa.Column("events", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String, nullable=True),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
)

# Privacy (migration 0004): consent, erased users' tombstones, the audit log.
consent = sa.Table(
    "consent",
    metadata,
    sa.Column("user_id", sa.String, primary_key=True),
    sa.Column("personalisation", sa.Boolean, nullable=False),
    sa.Column("training", sa.Boolean, nullable=False),
    sa.Column("generative", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("user_id", sa.String, primary_key=True),
    sa.Column("erased_at", sa.Double, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", SequenceNumber, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("actor", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False, index=True),
    sa.Column("detail", sa.Text, nullable=True),
)

# The bandit's policy over time (migration 0004): one row per segment and update.
bandit_history = sa.Table(
    "bandit_history",
    metadata,
    sa.Column("seq", SequenceNumber, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("segment", sa.String, nullable=False),
    sa.Column("probabilities", sa.Text, nullable=False),  # JSON {arm name: probability}
)

# Ownership (migration 0005): every key acts for a client application (its ``owner``), and a
# client key reads and writes only the users its application claimed (or nobody has yet).
api_keys.append_column(sa.Column("owner", sa.Text, nullable=False))

user_owners = sa.Table(
    "user_owners",
    metadata,
    sa.Column("user_id", sa.String, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("claimed_at", sa.Double, nullable=False),
    sa.Index("ix_user_owners_claimed_at", "claimed_at"),  # each worker reads new claims
)
