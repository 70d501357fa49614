"""Users' owners in the store: claims (insert-if-absent), ownership-checked ingest and profile
writes, reassignment, erasure, and keys' owners; on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import sqlalchemy as sa

from recloop.data.types import EventKind
from recloop.store.events import (
    EventRecord,
    EventStore,
    ForeignUserError,
    IngestResult,
    KeyRecord,
)
from recloop.store.privacy import PrivacyLog, UserOwner


def event(event_id: str, user_id: str) -> EventRecord:
    return EventRecord(event_id, user_id, "i1", EventKind.CLICK, 100.0)


def test_claims_are_insert_if_absent(store: EventStore) -> None:
    assert store.user_owners(["u1"]) == {}
    assert store.claim_users(["u1"], "app-a") == {"u1": "app-a"}
    assert store.claim_users(["u1", "u2", "u2"], "app-b") == {"u1": "app-a", "u2": "app-b"}
    assert store.user_owners(["u1", "u2", "u3"]) == {"u1": "app-a", "u2": "app-b"}


def test_ingest_with_an_owner_claims_and_leaves_out_other_owners_users(
    store: EventStore,
) -> None:
    assert store.add_events([event("a1", "u1")], owner="app-a") == IngestResult(1, [])
    assert store.user_owners(["u1"]) == {"u1": "app-a"}
    mixed = [event("b1", "u1"), event("b2", "u2"), event("b1", "u1"), event("b3", "u2")]
    answer = store.add_events(mixed, owner="app-b")
    assert answer == IngestResult(
        stored=2, duplicates=[], foreign=["b1"], foreign_users=frozenset({"u1"})
    )
    assert [item for item, _, _ in store.history("u1")] == ["i1"]  # only app-a's event
    # resent, it is still foreign (not a duplicate); app-a may store it; so may an import
    assert store.add_events([event("b1", "u1")], owner="app-b").foreign == ["b1"]
    assert store.add_events([event("b1", "u1")], owner="app-a").stored == 1
    assert store.add_events([event("x1", "u2")]).stored == 1  # no owner: not checked
    assert store.user_owners(["u1", "u2"]) == {"u1": "app-a", "u2": "app-b"}


def test_two_applications_may_choose_the_same_event_id(store: EventStore) -> None:
    # ids are scoped to their user, and each user belongs to one application: no collision
    assert store.add_events([event("e1", "a-user")], owner="app-a").stored == 1
    assert store.add_events([event("e1", "b-user")], owner="app-b") == IngestResult(1, [])
    assert store.add_events([event("e1", "b-user")], owner="app-b").duplicates == ["e1"]
    assert store.has_events(["e1"]) == {"e1": 2}


def test_ingest_checks_a_batch_in_one_query_for_its_users(store: EventStore) -> None:
    users = [f"u{i}" for i in range(300)]
    store.claim_users(users, "app-a")
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "user_owners" in statement:
            statements.append(statement.split()[0])

    sa.event.listen(store._engine, "before_cursor_execute", record)
    try:
        batch = [event(f"e{i}", users[i % 300]) for i in range(900)]
        assert store.add_events(batch, owner="app-a").stored == 900
        assert statements == ["SELECT"]  # all claimed already: one read, no write
        statements.clear()
        batch = [event(f"n{i}", f"new{i % 50}") for i in range(200)]
        assert store.add_events(batch, owner="app-a").stored == 200
        assert statements == ["SELECT", "INSERT"]  # new users: one read, one insert
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", record)


def test_upserting_another_owners_user_stores_and_claims_nothing(store: EventStore) -> None:
    store.claim_users(["u1"], "app-a")
    with pytest.raises(ForeignUserError, match="user 'u1' belongs to another client application"):
        store.upsert_users([("u2", {"age": 30}), ("u1", {"age": 40})], owner="app-b")
    assert store.get_user("u1") is None and store.get_user("u2") is None
    assert store.user_owners(["u2"]) == {}  # the claim of u2 was rolled back too
    store.upsert_users([("u1", {"age": 40})], owner="app-a")
    assert store.get_user("u1") == {"age": 40}


def test_reassignment_release_and_erasure(store: EventStore) -> None:
    log = PrivacyLog(store)
    assert log.owner("u1") is None
    store.add_events([event("a1", "u1")], owner="app-a")
    claimed = log.owner("u1")
    assert isinstance(claimed, UserOwner) and claimed.owner == "app-a"
    given = log.set_owner("u1", "app-b", "admin")
    assert given is not None and given.owner == "app-b"
    assert log.owner("u1") == given
    entry = log.audit(subject="u1")[0]
    assert entry.action == "owner" and entry.detail == {"owner": "app-b", "previous": "app-a"}
    assert log.set_owner("u1", None, "admin") is None
    assert log.owner("u1") is None and store.user_owners(["u1"]) == {}
    assert log.audit(subject="u1")[0].detail == {"owner": None, "previous": "app-b"}

    store.claim_users(["u1"], "app-c")
    erasure = log.erase_user("u1", "admin")
    assert erasure.ownership is True
    assert log.owner("u1") is None  # erasure frees the id
    assert log.erase_user("u1", "admin").ownership is False


def test_keys_have_an_owner_defaulting_to_their_name(store: EventStore) -> None:
    plain = KeyRecord("k1", "web", "client", "a" * 64, created_at=1.0)
    owned = KeyRecord("k2", "web v2", "client", "b" * 64, created_at=2.0, owner="web")
    assert plain.owner == "web"
    store.add_key(plain)
    store.add_key(owned)
    assert [(k.key_id, k.owner) for k in store.list_keys()] == [("k1", "web"), ("k2", "web")]
    assert store.key_by_hash("b" * 64) == owned


def test_migrating_existing_keys_gives_them_their_name_as_owner(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from recloop.store.events import MIGRATIONS

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(
            sa.text("INSERT INTO api_keys VALUES ('k1', 'shop', 'client', :hash, 1.0, NULL)"),
            {"hash": "c" * 64},
        )
    engine.dispose()
    with EventStore(url) as upgraded:
        (key,) = upgraded.list_keys()
        assert key.owner == "shop"
        root = "INSERT INTO api_keys VALUES ('k2', 'x', 'root', :hash, 1.0, NULL, 'x')"
        # the role check survived SQLite's table copy
        with pytest.raises(sa.exc.IntegrityError), upgraded._engine.begin() as conn:
            conn.execute(sa.text(root), {"hash": "d" * 64})


def _race(url: str, barrier: Any, index: int, users: list[str], out: Any) -> None:
    with EventStore(url) as opened:
        barrier.wait()
        if index % 2:  # half claim through ingest, half directly
            batch = [event(f"p{index}-{user}", user) for user in users]
            foreign = set(opened.add_events(batch, owner=f"app{index}").foreign)
            out.put((index, [u for u in users if f"p{index}-{u}" not in foreign], 0))
        else:
            owners = opened.claim_users(users, f"app{index}")
            out.put((index, [u for u in users if owners[u] == f"app{index}"], 0))


def test_racing_claims_yield_exactly_one_owner_per_user(url: str) -> None:
    EventStore(url).close()  # migrate first: the race is about claims, not migrations
    context = multiprocessing.get_context("fork")
    workers_n = 6
    barrier = context.Barrier(workers_n)
    out = context.Queue()
    users = [f"r{i}" for i in range(40)]
    workers = [
        context.Process(target=_race, args=(url, barrier, i, users, out)) for i in range(workers_n)
    ]
    for worker in workers:
        worker.start()
    won = {index: claimed for index, claimed, _ in (out.get(timeout=60) for _ in workers)}
    for worker in workers:
        worker.join(30)
    assert [worker.exitcode for worker in workers] == [0] * workers_n
    with EventStore(url) as opened:
        owners = opened.user_owners(users)
    assert sorted(owners) == sorted(users)  # every user has an owner, and only one (the key)
    for index in range(workers_n):
        # what each process was told is the truth: it holds exactly the users it thinks
        assert won[index] == [u for u in users if owners[u] == f"app{index}"]
    with EventStore(url) as opened:  # events were stored only from each user's owner
        for user in users:
            winner = int(owners[user].removeprefix("app"))
            assert len(opened.history(user)) == (1 if winner % 2 else 0)
