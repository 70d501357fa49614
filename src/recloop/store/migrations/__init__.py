"""Alembic environment of the event store (run from code by recloop.store.events)."""
