"""The service's stores: the event store (SQLite or PostgreSQL), model artifacts, the cache."""
