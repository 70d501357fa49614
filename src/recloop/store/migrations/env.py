"""Alembic environment of the event store.

:class:`recloop.store.events.EventStore` runs the migrations from code and hands over its open
connection (``config.attributes["connection"]``) inside a transaction it holds a lock on; the
``sqlalchemy.url`` option is the fallback for running Alembic by hand.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

import recloop.generative.review  # noqa: F401  (registers the review tables on metadata)
from recloop.store.schema import metadata


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite can't ALTER most things: autogenerate must write batch (copy-and-move) operations.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (given := context.config.attributes.get("connection")) is not None:
    run_migrations(given)
else:
    engine = sa.create_engine(
        context.config.get_main_option("sqlalchemy.url", ""), poolclass=sa.NullPool
    )
    with engine.connect() as connection:
        run_migrations(connection)
    engine.dispose()
