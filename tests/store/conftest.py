"""Fixtures of the store tests: every test that takes ``url`` or ``store`` runs on SQLite and
on the local PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recloop.store.events import EventStore


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def store(url: str) -> Iterator[EventStore]:
    with EventStore(url) as opened:
        yield opened
