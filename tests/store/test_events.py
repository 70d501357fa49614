"""The event store against real SQLite files and a real PostgreSQL server (never mocks)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recloop.data.types import EventKind
from recloop.store.events import (
    EventRecord,
    EventStore,
    IngestResult,
    ItemRecord,
    KeyRecord,
    StoreError,
)


def event(
    event_id: str,
    user_id: str = "u1",
    item_id: str | None = "i1",
    timestamp: float = 100.0,
    kind: EventKind = EventKind.CLICK,
    value: float | None = None,
) -> EventRecord:
    return EventRecord(event_id, user_id, item_id, kind, timestamp, value=value)


def head_revision() -> str:
    """The newest migration's revision id."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from recloop.store.events import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


HEAD = head_revision()


def schema_revision(url: str) -> str | None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


# ---------------------------------------------------------------------- opening and migrations
def test_migrations_run_once_and_data_survives_reopening(url: str) -> None:
    with EventStore(url) as first:
        assert first.dialect == url.split(":")[0]
        assert first.add_events([event("e1")]) == IngestResult(stored=1, duplicates=[])
        first.upsert_items([ItemRecord("i1", title="One")])
    assert schema_revision(url) == HEAD
    with EventStore(url) as again:  # migrating an up-to-date database is a no-op
        assert again.count_events() == 1
        assert again.history("u1") == [("i1", 100.0, EventKind.CLICK)]
        assert again.get_item("i1") == ItemRecord("i1", title="One")
    assert schema_revision(url) == HEAD


def _open_and_add(url: str, barrier: Any, index: int) -> None:
    barrier.wait()
    with EventStore(url) as opened:
        opened.add_events([event(f"e{index}")])


def test_processes_opening_a_new_database_at_once_all_succeed(url: str) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_open_and_add, args=(url, barrier, i)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    with EventStore(url) as opened:
        assert opened.count_events() == 4


def test_sqlite_accepts_a_plain_path_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    with EventStore(str(path)) as opened:
        assert opened.url == f"sqlite:///{path}"
        with opened._engine.connect() as conn:  # settings of a pooled connection
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("synchronous", "busy_timeout", "foreign_keys")
            }
    assert pragmas == {"synchronous": 2, "busy_timeout": 10000, "foreign_keys": 1}
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_unreachable_server_is_one_line_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        EventStore("postgresql://alice:s3cret-pw@127.0.0.1:1/recloop")
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret-pw" not in message
    assert "postgresql+psycopg://alice:***@127.0.0.1:1/recloop" in message


@pytest.mark.parametrize(
    ("bad_url", "expected"),
    [
        ("mysql://bob:hunter2@db/x", "unsupported event store URL"),
        ("sqlite:///:memory:", "needs a file"),
        ("sqlite:////nonexistent-dir/sub/events.db", "unable to open"),
    ],
)
def test_bad_urls_raise_store_error(bad_url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        EventStore(bad_url)
    assert "hunter2" not in str(caught.value)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------- events
def test_add_events_is_idempotent_on_event_id(store: EventStore) -> None:
    first = store.add_events([event("a"), event("b"), event("a", item_id="other")])
    assert first == IngestResult(stored=2, duplicates=["a"])
    again = store.add_events([event("b"), event("c"), event("c"), event("d")])
    assert again == IngestResult(stored=2, duplicates=["b", "c"])
    assert store.add_events([]) == IngestResult(stored=0, duplicates=[])
    assert store.count_events() == 4
    # the first copy of a repeated id is the one kept
    assert [item for item, _, _ in store.history("u1")] == ["i1"] * 4
    assert store.has_events(["a", "d", "zz", "a"]) == {"a": 1, "d": 1, "zz": 0}


def test_event_ids_are_scoped_to_their_user(store: EventStore) -> None:
    both = [event("a", user_id="u1"), event("a", user_id="u2")]
    assert store.add_events(both) == IngestResult(stored=2, duplicates=[])
    assert store.add_events(both) == IngestResult(stored=0, duplicates=["a", "a"])
    assert store.has_events(["a"]) == {"a": 2}
    assert [len(store.history(user)) for user in ("u1", "u2")] == [1, 1]


def test_migrating_to_per_user_event_ids_keeps_events_and_indexes(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from recloop.store.events import MIGRATIONS

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    insert = sa.text(
        "INSERT INTO events (event_id, user_id, item_id, kind, timestamp) "
        "VALUES (:event_id, :user_id, 'i1', 1, :ts)"
    )
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0005")
        conn.execute(insert, [{"event_id": "a", "user_id": "u1", "ts": 1.0}])
        conn.execute(insert, [{"event_id": "b", "user_id": "u1", "ts": 2.0}])
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():  # store-wide before
            conn.execute(insert, [{"event_id": "a", "user_id": "u2", "ts": 3.0}])
    engine.dispose()
    with EventStore(url) as upgraded:
        assert schema_revision(url) == HEAD
        assert [ts for _, ts, _ in upgraded.history("u1")] == [1.0, 2.0]
        assert upgraded.add_events([event("a", user_id="u1")]).duplicates == ["a"]
        assert upgraded.add_events([event("a", user_id="u2", timestamp=3.0)]).stored == 1
        with upgraded._engine.connect() as conn:
            seqs = conn.execute(sa.text("SELECT seq FROM events ORDER BY seq")).scalars().all()
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("events")}
        assert len(seqs) == 3 and seqs[-1] > seqs[1]  # the sequence goes on after the copy
        assert {"ix_events_user_id_timestamp_seq", "ix_events_slate_id"} <= indexes


def test_has_events_queries_in_chunks(store: EventStore) -> None:
    store.add_events([event(f"e{i}") for i in range(2500)])
    ids = [f"e{i}" for i in range(0, 5000, 2)]
    counts = store.has_events(ids)
    assert sum(counts.values()) == 1250
    assert counts["e2498"] == 1
    assert counts["e2500"] == 0


def test_history_orders_by_time_and_keeps_insertion_order_of_ties(store: EventStore) -> None:
    store.add_events(
        [
            event("1", item_id="late", timestamp=300.0),
            event("2", item_id="tie-a", timestamp=200.0),
            event("3", item_id="tie-b", timestamp=200.0),
            event("4", item_id=None, timestamp=150.0),  # names no item: not history
            event("5", user_id="u2", item_id="other-user", timestamp=100.0),
        ]
    )
    store.add_events(
        [
            event("6", item_id="tie-c", timestamp=200.0, kind=EventKind.LIKE),
            event("7", item_id="early", timestamp=50.0),
        ]
    )
    history = store.history("u1")
    assert [item for item, _, _ in history] == ["early", "tie-a", "tie-b", "tie-c", "late"]
    assert history[3] == ("tie-c", 200.0, EventKind.LIKE)
    assert isinstance(history[3][2], EventKind)
    assert [item for item, _, _ in store.history("u1", until=200.0)] == [
        "early",
        "tie-a",
        "tie-b",
        "tie-c",
    ]
    assert store.history("u1", until=49.9) == []
    assert store.history("nobody") == []


def test_histories_streams_all_item_events_in_time_order(store: EventStore) -> None:
    store.add_events(
        [
            event("1", "u1", "a", 20.0, value=4.5, kind=EventKind.RATING),
            event("2", "u2", "b", 10.0),
            event("3", "u2", None, 5.0),
            event("4", "u1", "c", 10.0, kind=EventKind.SKIP),
        ]
    )
    stream = store.histories()
    assert iter(stream) is stream  # a generator, not a loaded list
    assert list(stream) == [
        ("u2", "b", 10.0, EventKind.CLICK, None),
        ("u1", "c", 10.0, EventKind.SKIP, None),
        ("u1", "a", 20.0, EventKind.RATING, 4.5),
    ]
    # an abandoned stream gives its connection back and blocks no writer
    partial = store.histories()
    next(partial)
    partial.close()
    assert store.add_events([event("5")]).stored == 1


def test_two_threads_adding_to_one_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    with EventStore(tmp_path / "events.db") as opened:
        errors: list[BaseException] = []

        def add(prefix: str) -> None:
            try:
                for batch in range(20):
                    opened.add_events([event(f"{prefix}-{batch}-{i}") for i in range(50)])
            except BaseException as exc:  # reported below: a thread's exception is not raised
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(name,)) for name in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert opened.count_events() == 2 * 20 * 50


# ---------------------------------------------------------------------- items
def test_items_upsert_get_update(store: EventStore) -> None:
    assert store.get_item("i1") is None
    store.upsert_items(
        [
            ItemRecord("i1", title="One", text="first", attributes={"genres": ["a", "b"]}),
            ItemRecord("i2", title="Two"),
        ]
    )
    assert store.get_item("i1") == ItemRecord(
        "i1", title="One", text="first", attributes={"genres": ["a", "b"]}
    )
    store.upsert_items([ItemRecord("i1", title="Uno")])  # replaced whole
    assert store.get_item("i1") == ItemRecord("i1", title="Uno")
    assert store.count_items() == 2

    updated = store.update_item("i2", hidden=True, available_until=500.0)
    assert updated == ItemRecord("i2", title="Two", hidden=True, available_until=500.0)
    assert store.get_item("i2") == updated

    with pytest.raises(StoreError, match="unknown item 'nope'"):
        store.update_item("nope", title="x")
    with pytest.raises(StoreError, match="unknown item field 'colour'"):
        store.update_item("i1", colour="red")
    with pytest.raises(StoreError, match="available_from"):
        store.update_item("i1", available_from="tomorrow")
    assert store.get_item("i1") == ItemRecord("i1", title="Uno")


def test_blocked_items(store: EventStore) -> None:
    store.upsert_items(
        [
            ItemRecord("open"),
            ItemRecord("hidden", hidden=True),
            ItemRecord("future", available_from=200.0),
            ItemRecord("expired", available_until=50.0),
            ItemRecord("window", available_from=50.0, available_until=150.0),
        ]
    )
    assert store.blocked_items(100.0) == {"hidden", "future", "expired"}
    assert store.blocked_items(200.0) == {"hidden", "expired", "window"}
    assert store.blocked_items(150.0) == {"hidden", "future", "expired"}  # bounds inclusive


# ---------------------------------------------------------------------- users
def test_users_and_preferences(store: EventStore) -> None:
    assert store.get_user("u1") is None
    assert store.get_preferences("u1") == {}
    store.upsert_users([("u1", {"age": 30}), ("u2", {})])
    store.set_preferences("u1", {"language": "fr"})
    store.upsert_users([("u1", {"age": 31, "country": "FR"})])  # preferences are kept
    assert store.get_user("u1") == {"age": 31, "country": "FR"}
    assert store.get_preferences("u1") == {"language": "fr"}
    store.set_preferences("u3", {"explore": 0.2})  # creates the user
    assert store.get_user("u3") == {}
    assert store.get_preferences("u3") == {"explore": 0.2}


# ---------------------------------------------------------------------- API keys
def test_keys_add_lookup_list_revoke(store: EventStore) -> None:
    admin = KeyRecord("k1", "ops", "admin", "a" * 64, created_at=10.0)
    client = KeyRecord("k2", "web", "client", "b" * 64, created_at=20.0)
    store.add_key(client)
    store.add_key(admin)
    assert store.key_by_hash("b" * 64) == client
    assert store.key_by_hash("c" * 64) is None
    assert store.list_keys() == [admin, client]

    with pytest.raises(StoreError, match="'k1' already exists"):
        store.add_key(KeyRecord("k1", "again", "client", "d" * 64, created_at=30.0))
    with pytest.raises(StoreError, match="secret of another key"):
        store.add_key(KeyRecord("k3", "copy", "client", "a" * 64, created_at=30.0))
    with pytest.raises(StoreError, match="role"):
        store.add_key(KeyRecord("k4", "root", "root", "e" * 64, created_at=30.0))

    store.revoke_key("k2", 40.0)
    store.revoke_key("k2", 50.0)  # the first revocation time stands
    revoked = store.key_by_hash("b" * 64)
    assert revoked is not None and revoked.revoked_at == 40.0
    with pytest.raises(StoreError, match="unknown API key 'k9'"):
        store.revoke_key("k9", 40.0)
    assert len(store.list_keys()) == 2
