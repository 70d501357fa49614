"""The event store: interactions, the catalogue, users and API keys, in SQLite or PostgreSQL.

A SQLite file is the default and needs no server; a ``postgresql://`` URL selects PostgreSQL.
Opening a store migrates its schema to the newest Alembic revision. Events are idempotent on
their user and client-chosen ``event_id``, so a client may safely resend a batch it got no
answer for. Ids are scoped to their user, and every user belongs to one client application,
so two applications choosing the same id never collide.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql, sqlite

from recloop.data.types import Catalog, EventKind
from recloop.errors import RecloopError, one_line
from recloop.store.schema import api_keys, events, items, tombstones, user_owners, users

MIGRATIONS = Path(__file__).parent / "migrations"
KEY_ROLES = ("client", "admin")
_CHUNK = 1000
_ADVISORY_LOCK_KEY = 0x7265636C6F6F70  # "recloop" in ASCII: serialises upgrades across processes
ERASURE_LOCK_KEY = 0x6572617375726500  # "erasure": user writes shared, erasures exclusive
# Alembic's `context` is a module-level proxy, so two upgrades in one process must not overlap.
_MIGRATION_LOCK = threading.Lock()


class StoreError(RecloopError):
    """The store can't do what was asked: unknown item, bad URL, unreachable database..."""


class ErasedUserError(StoreError):
    """A write about a user whose tombstone refuses data about them (the service answers
    410): an erased person's profile or preferences are never stored again."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"user {user_id!r} was erased: their tombstone refuses data about them")


class ForeignUserError(StoreError):
    """A client key asked about users that another client application owns (the service
    answers 403). The message names the users, never their owner."""

    def __init__(self, user_ids: Sequence[str]) -> None:
        self.user_ids = list(user_ids)
        shown = ", ".join(repr(u) for u in self.user_ids[:5])
        more = f" and {len(self.user_ids) - 5} more" if len(self.user_ids) > 5 else ""
        which = "user {} belongs" if len(self.user_ids) == 1 else "users {} belong"
        super().__init__(
            f"{which.format(shown + more)} to another client application: this key may "
            "neither read nor change their data"
        )


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One interaction. ``event_id`` is chosen by the client and unique among its user's events."""

    event_id: str
    user_id: str
    item_id: str | None
    kind: EventKind
    timestamp: float
    value: float | None = None
    slate_id: str | None = None
    context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """``stored`` new events; ``duplicates`` ids already stored for their user or repeated in
    the batch; ``refused`` ids of events about erased users (``refused_users``); ``foreign``
    ids of events about users that another client application owns (``foreign_users``)."""

    stored: int
    duplicates: list[str]
    refused: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    refused_users: frozenset[str] = frozenset()
    foreign_users: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """A catalogue item; it may be recommended only while visible and within its window."""

    item_id: str
    title: str = ""
    text: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    hidden: bool = False
    available_from: float | None = None
    available_until: float | None = None


def plain_value(value: Any) -> Any:
    """A JSON-friendly attribute value: NumPy scalars and arrays become Python ones."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple):
        return [plain_value(v) for v in value]
    return value


def item_records(catalog: Catalog) -> list[ItemRecord]:
    """The catalogue's items as store records (title, text, attributes), in index order."""
    names = list(catalog.attributes)
    return [
        ItemRecord(
            item_id=item_id,
            title=catalog.title[row],
            text=catalog.text[row],
            attributes={name: plain_value(catalog.attributes[name][row]) for name in names},
        )
        for row, item_id in enumerate(catalog.items.ids())
    ]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key: only the hex SHA-256 of its secret is stored. ``owner`` names the client
    application the key acts for (empty: the key's name); keys with the same owner act for
    the same users, so a rotated key keeps its predecessor's users."""

    key_id: str
    name: str
    role: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", self.name)


_ITEM_FIELDS = frozenset(f.name for f in fields(ItemRecord)) - {"item_id"}
_KINDS = tuple(EventKind)  # EventKind by code, without the enum's lookup per row
assert all(kind.value == code for code, kind in enumerate(_KINDS))

# Statements of the per-request reads, built once (building one costs more than running it).
_HISTORY = (
    sa.select(events.c.item_id, events.c.timestamp, events.c.kind)
    .where(events.c.user_id == sa.bindparam("user_id"), events.c.item_id.is_not(None))
    .order_by(events.c.timestamp, events.c.seq)
)
_HISTORY_UNTIL = _HISTORY.where(events.c.timestamp <= sa.bindparam("until"))
_PREFERENCES = sa.select(users.c.preferences).where(users.c.user_id == sa.bindparam("user_id"))


class EventStore:
    """Events, items, users and API keys in one SQL database (see the module docstring)."""

    def __init__(self, url: str | os.PathLike[str], *, pool_size: int = 8) -> None:
        self._url = _parse_url(url)
        try:
            self._engine = _create_engine(self._url, pool_size)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreError(f"cannot open event store {self.url}: {one_line(exc)}") from exc
        # Writes on SQLite take the write lock at BEGIN (see _sqlite_begin).
        self._writer = self._engine.execution_options(recloop_begin="IMMEDIATE")
        # Reads are single statements: on SQLite each is its own snapshot, no BEGIN needed.
        self._reader = self._engine.execution_options(recloop_begin="NONE")
        try:
            self._migrate()
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return self._url.render_as_string(hide_password=True)

    @property
    def url_with_password(self) -> str:
        """The full database URL, for opening the same store in a child process (never log it)."""
        return self._url.render_as_string(hide_password=False)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventStore({self.url!r})"

    # ------------------------------------------------------------------ events
    def add_events(self, batch: Sequence[EventRecord], *, owner: str | None = None) -> IngestResult:
        """Store new events in one committed transaction; known or repeated ids are skipped,
        and so are the events of erased users (``refused``: their tombstones reject replays).

        With ``owner`` (a client key's application), the batch's unowned users are claimed for
        it in the same transaction and events about users another application owns are left
        out (``foreign``); without, ownership is neither checked nor claimed (admin keys,
        imports).
        """
        first: dict[tuple[str, str], int] = {}  # (user_id, event_id): ids are per user
        for index, event in enumerate(batch):
            first.setdefault((event.user_id, event.event_id), index)
        stored: set[tuple[str, str]] = set()
        refused: list[str] = []
        foreign: list[str] = []
        erased: set[str] = set()
        others: set[str] = set()
        skipped: set[str] = set()
        if first:
            with self._transaction() as conn:
                self.guard_against_erasure(conn)
                users_in_batch = sorted({user for user, _ in first})
                erased, owners = self._user_states(conn, users_in_batch)
                if owner is not None:
                    alive = [user for user in users_in_batch if user not in erased]
                    owners = self._claim(conn, alive, owner, owners)
                    others = {user for user, holder in owners.items() if holder != owner}
                skipped = erased | others
                keep = [i for i in first.values() if batch[i].user_id not in skipped]
                refused = [batch[i].event_id for i in first.values() if batch[i].user_id in erased]
                foreign = [batch[i].event_id for i in first.values() if batch[i].user_id in others]
                if keep:
                    rows = [_event_row(batch[index]) for index in keep]
                    insert: postgresql.Insert | sqlite.Insert
                    params: list[dict[str, Any]] | dict[str, list[Any]]
                    if self.dialect == "postgresql":  # the batch as column arrays: see there
                        insert = _POSTGRES_BATCH_INSERT
                        params = {name: [row[name] for row in rows] for name in _EVENT_COLUMNS}
                    else:
                        insert, params = sqlite.insert(events), rows
                    insert = insert.on_conflict_do_nothing(index_elements=["event_id", "user_id"])
                    returning = insert.returning(events.c.user_id, events.c.event_id)
                    new = conn.execute(returning, params)
                    stored.update((user, event_id) for user, event_id in new)
        # an erased user's first copy is refused and its repeats are duplicates, so every
        # event is accounted for; a foreign user's events are all answered by the caller
        duplicates = [
            event.event_id
            for index, event in enumerate(batch)
            if event.user_id not in others
            and (
                first[(event.user_id, event.event_id)] != index
                or (event.user_id not in erased and (event.user_id, event.event_id) not in stored)
            )
        ]
        return IngestResult(
            stored=len(stored),
            duplicates=duplicates,
            refused=refused,
            foreign=foreign,
            refused_users=frozenset(erased),
            foreign_users=frozenset(others),
        )

    def history(
        self, user_id: str, *, until: float | None = None
    ) -> list[tuple[str, float, EventKind]]:
        """``(item_id, timestamp, kind)`` of the user's events naming an item, oldest first."""
        params: dict[str, Any] = {"user_id": user_id}
        query = _HISTORY
        if until is not None:
            query, params["until"] = _HISTORY_UNTIL, until
        with self._transaction(write=False) as conn:
            rows = conn.execute(query, params).all()
        kinds = _KINDS
        return [(item, ts, kinds[kind]) for item, ts, kind in rows]

    def histories(self) -> Iterator[tuple[str, str, float, EventKind, float | None]]:
        """Every event naming an item as ``(user_id, item_id, timestamp, kind, value)``.

        Ordered by time (ties in insertion order) and streamed in chunks: the generator holds
        one connection and a read transaction until it is exhausted or closed.
        """
        query = (
            sa.select(
                events.c.user_id,
                events.c.item_id,
                events.c.timestamp,
                events.c.kind,
                events.c.value,
            )
            .where(events.c.item_id.is_not(None))
            .order_by(events.c.timestamp, events.c.seq)
            .execution_options(yield_per=_CHUNK)
        )
        with self._transaction(write=False) as conn:
            for user_id, item_id, ts, kind, value in conn.execute(query):
                yield user_id, item_id, ts, EventKind(kind), value

    def count_events(self) -> int:
        return self._count(events)

    def has_events(self, event_ids: Sequence[str]) -> dict[str, int]:
        """How many stored rows carry each given id, over all users: for durability checks."""
        counts = dict.fromkeys(event_ids, 0)
        ids = list(counts)
        with self._transaction(write=False) as conn:
            for start in range(0, len(ids), _CHUNK):
                query = (
                    sa.select(events.c.event_id, sa.func.count())
                    .where(events.c.event_id.in_(ids[start : start + _CHUNK]))
                    .group_by(events.c.event_id)
                )
                counts.update((event_id, n) for event_id, n in conn.execute(query))
        return counts

    # ------------------------------------------------------------------ items
    def upsert_items(self, batch: Sequence[ItemRecord]) -> None:
        """Insert items or replace them whole by ``item_id`` (the last one of a repeat wins)."""
        rows = list({item.item_id: _item_row(item) for item in batch}.values())
        if not rows:
            return
        insert = self._insert(items)
        insert = insert.on_conflict_do_update(
            index_elements=["item_id"],
            set_={name: insert.excluded[name] for name in sorted(_ITEM_FIELDS)},
        )
        with self._transaction() as conn:
            conn.execute(insert, rows)

    def get_item(self, item_id: str) -> ItemRecord | None:
        with self._transaction(write=False) as conn:
            row = conn.execute(sa.select(items).where(items.c.item_id == item_id)).one_or_none()
        return None if row is None else _item_record(row)

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """The known ones of ``item_ids``, by id, in one query per thousand ids."""
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, ItemRecord] = {}
        with self._transaction(write=False) as conn:
            for start in range(0, len(ids), _CHUNK):
                query = sa.select(items).where(items.c.item_id.in_(ids[start : start + _CHUNK]))
                out.update((row.item_id, _item_record(row)) for row in conn.execute(query))
        return out

    def update_item(self, item_id: str, **changes: Any) -> ItemRecord:
        """Change some fields of a stored item; returns the updated item."""
        unknown = sorted(set(changes) - _ITEM_FIELDS)
        if unknown:
            known = ", ".join(sorted(_ITEM_FIELDS))
            raise StoreError(f"unknown item field {unknown[0]!r} (known: {known})")
        with self._transaction() as conn:
            query = sa.select(items).where(items.c.item_id == item_id).with_for_update()
            row = conn.execute(query).one_or_none()
            if row is None:
                raise StoreError(f"unknown item {item_id!r}")
            updated = replace(_item_record(row), **changes)
            update = items.update().where(items.c.item_id == item_id).values(_item_row(updated))
            conn.execute(update)
        return updated

    def blocked_items(self, now: float) -> set[str]:
        """Items that may not be recommended at ``now``: hidden, not yet or no longer available."""
        query = sa.select(items.c.item_id).where(
            sa.or_(
                items.c.hidden.is_(True),
                items.c.available_from > now,
                items.c.available_until < now,
            )
        )
        with self._transaction(write=False) as conn:
            return set(conn.execute(query).scalars())

    def item_windows(self) -> list[tuple[str, bool, float | None, float | None]]:
        """``(item_id, hidden, available_from, available_until)`` of every restricted item.

        What :meth:`blocked_items` decides from, for callers that cache it and decide per
        request (restricted items are few; the others are always available).
        """
        query = sa.select(
            items.c.item_id, items.c.hidden, items.c.available_from, items.c.available_until
        ).where(
            sa.or_(
                items.c.hidden.is_(True),
                items.c.available_from.is_not(None),
                items.c.available_until.is_not(None),
            )
        )
        with self._transaction(write=False) as conn:
            return [
                (item, bool(hidden), start, end) for item, hidden, start, end in conn.execute(query)
            ]

    def count_items(self) -> int:
        return self._count(items)

    def all_items(self) -> list[ItemRecord]:
        """Every catalogue item (hidden ones too), in id order."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(sa.select(items).order_by(items.c.item_id)).all()
        return [_item_record(row) for row in rows]

    def item_counts(self, since: float | None = None) -> dict[str, int]:
        """Positive events per item (since ``since``, when given): popularity and trends."""
        positive = [int(k) for k in EventKind if not k.is_negative]
        query = (
            sa.select(events.c.item_id, sa.func.count())
            .where(events.c.item_id.is_not(None), events.c.kind.in_(positive))
            .group_by(events.c.item_id)
        )
        if since is not None:
            query = query.where(events.c.timestamp >= since)
        with self._transaction(write=False) as conn:
            return {item: int(n) for item, n in conn.execute(query)}

    # ------------------------------------------------------------------ users
    def upsert_users(
        self, batch: Sequence[tuple[str, dict[str, Any]]], *, owner: str | None = None
    ) -> list[str]:
        """Insert users or replace their attributes; their preferences are kept. Erased users
        are left out (their tombstones refuse a replayed batch): their ids are returned.

        With ``owner``, the unowned users are claimed for it first, in the same transaction;
        if another application owns any of them, nothing is stored (:class:`ForeignUserError`).
        """
        rows = [
            {"user_id": user_id, "attributes": _to_json(attributes, "user attributes")}
            for user_id, attributes in dict(batch).items()
        ]
        if not rows:
            return []
        insert = self._insert(users)
        insert = insert.on_conflict_do_update(
            index_elements=["user_id"], set_={"attributes": insert.excluded.attributes}
        )
        with self._transaction() as conn:
            self.guard_against_erasure(conn)
            erased, owners = self._user_states(conn, [row["user_id"] for row in rows])
            rows = [row for row in rows if row["user_id"] not in erased]
            if owner is not None and rows:
                owners = self._claim(conn, [row["user_id"] for row in rows], owner, owners)
                others = sorted(user for user, holder in owners.items() if holder != owner)
                if others:
                    raise ForeignUserError(others)  # rolls the claims back too
            if rows:
                conn.execute(insert, rows)
        return sorted(erased)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The user's attributes; ``None`` for a user never upserted nor given preferences."""
        query = sa.select(users.c.attributes).where(users.c.user_id == user_id)
        with self._transaction(write=False) as conn:
            text = conn.execute(query).scalar_one_or_none()
        return None if text is None else dict(json.loads(text))

    def set_preferences(self, user_id: str, preferences: dict[str, Any]) -> None:
        """Replace the user's preferences, creating the user if needed; an erased user's
        are refused (:class:`ErasedUserError`)."""
        insert = self._insert(users).values(
            user_id=user_id, preferences=_to_json(preferences, "preferences")
        )
        insert = insert.on_conflict_do_update(
            index_elements=["user_id"], set_={"preferences": insert.excluded.preferences}
        )
        with self._transaction() as conn:
            self.guard_against_erasure(conn)
            if self._user_states(conn, [user_id])[0]:
                raise ErasedUserError(user_id)
            conn.execute(insert)

    def get_preferences(self, user_id: str) -> dict[str, Any]:
        with self._transaction(write=False) as conn:
            text = conn.execute(_PREFERENCES, {"user_id": user_id}).scalar_one_or_none()
        return {} if text is None else dict(json.loads(text))

    # ------------------------------------------------------------------ ownership
    def user_owners(self, user_ids: Sequence[str]) -> dict[str, str]:
        """The owners of those of ``user_ids`` that a client application claimed."""
        with self._transaction(write=False) as conn:
            return self._owners(conn, list(dict.fromkeys(user_ids)))

    def owners_claimed_since(self, since: float) -> list[tuple[str, str, float]]:
        """``(user_id, owner, claimed_at)`` of every claim or reassignment stamped after
        ``since``, oldest first (a worker's ownership mirror reads only what is new)."""
        query = (
            sa.select(user_owners.c.user_id, user_owners.c.owner, user_owners.c.claimed_at)
            .where(user_owners.c.claimed_at > since)
            .order_by(user_owners.c.claimed_at)
        )
        with self._transaction(write=False) as conn:
            return [(u, o, float(t)) for u, o, t in conn.execute(query)]

    def claim_users(self, user_ids: Sequence[str], owner: str) -> dict[str, str]:
        """Claim the unowned ones of ``user_ids`` for ``owner``; every one's owner afterwards.

        Insert-if-absent: of claims racing for one user, in any number of processes, exactly
        one wins and the others get its owner back.
        """
        with self._transaction() as conn:
            self.guard_against_erasure(conn)
            return self._claim(conn, list(dict.fromkeys(user_ids)), owner)

    def _user_states(
        self, conn: sa.Connection, user_ids: Sequence[str]
    ) -> tuple[set[str], dict[str, str]]:
        """Which of ``user_ids`` were erased, and the owners of the claimed ones: one query
        whatever their number, the ids bound as one array (an IN list of a thousand
        placeholders costs more to build and parse than to run)."""
        if not user_ids:
            return set(), {}
        ids: list[str] | str = list(user_ids)
        if self.dialect != "postgresql":
            ids = json.dumps(ids)
        query = _USER_STATES[self.dialect]
        erased: set[str] = set()
        owners: dict[str, str] = {}
        for user, owner, tombstone in conn.execute(query, {"user_ids": ids}):
            if tombstone is not None:
                erased.add(user)
            if owner is not None:
                owners[user] = owner
        return erased, owners

    def _owners(self, conn: sa.Connection, user_ids: Sequence[str]) -> dict[str, str]:
        return self._user_states(conn, user_ids)[1]

    def _claim(
        self,
        conn: sa.Connection,
        user_ids: Sequence[str],
        owner: str,
        owners: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The users' owners after claiming the unowned ones for ``owner`` (``owners``: their
        owners already read in this transaction): an insert only when some are new, so the
        common case only reads."""
        owners = self._owners(conn, user_ids) if owners is None else owners
        # in one order everywhere: two PostgreSQL claims of the same new users cannot deadlock
        unowned = sorted(user for user in user_ids if user not in owners)
        if not unowned:
            return owners
        now = time.time()
        insert = (
            self._insert(user_owners)
            .on_conflict_do_nothing(index_elements=["user_id"])
            .returning(user_owners.c.user_id)
        )
        rows = [{"user_id": user, "owner": owner, "claimed_at": now} for user in unowned]
        won = set(conn.execute(insert, rows).scalars())
        owners.update((user, owner) for user in won)
        lost = [user for user in unowned if user not in won]  # claimed meanwhile by someone
        if lost:
            owners.update(self._owners(conn, lost))
        return owners

    # ------------------------------------------------------------------ API keys
    def add_key(self, record: KeyRecord) -> None:
        """Store a new API key; its ``key_id`` and its hash must both be new."""
        if record.role not in KEY_ROLES:
            raise StoreError(f"API key role must be 'client' or 'admin', not {record.role!r}")
        insert = (
            self._insert(api_keys)
            .values(_key_row(record))
            .on_conflict_do_nothing(index_elements=["key_id"])
            .returning(api_keys.c.key_id)
        )
        with self._transaction() as conn:
            try:
                added = conn.execute(insert).scalar_one_or_none()
            except sa.exc.IntegrityError as exc:
                raise StoreError(
                    f"API key {record.key_id!r} has the secret of another key"
                ) from exc
            if added is None:
                raise StoreError(f"API key {record.key_id!r} already exists")

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        """The key whose secret hashes to ``key_hash``, revoked or not."""
        query = sa.select(api_keys).where(api_keys.c.key_hash == key_hash)
        with self._transaction(write=False) as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else KeyRecord(**row._asdict())

    def list_keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
        with self._transaction(write=False) as conn:
            return [KeyRecord(**row._asdict()) for row in conn.execute(query)]

    def revoke_key(self, key_id: str, when: float) -> None:
        """Revoke a key from ``when`` on; revoking it again keeps the first time."""
        update = (
            api_keys.update()
            .where(api_keys.c.key_id == key_id)
            .values(revoked_at=sa.func.coalesce(api_keys.c.revoked_at, float(when)))
        )
        with self._transaction() as conn:
            if conn.execute(update).rowcount == 0:
                raise StoreError(f"unknown API key {key_id!r}")

    # ------------------------------------------------------------------ plumbing
    def _migrate(self) -> None:
        """Upgrade the schema to head, under a lock so concurrent openers take turns."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        with _MIGRATION_LOCK, self._transaction() as conn:
            if self.dialect == "postgresql":
                lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
                conn.execute(lock, {"key": _ADVISORY_LOCK_KEY})
            config.attributes["connection"] = conn
            try:
                command.upgrade(config, "head")
            except CommandError as exc:  # e.g. a database migrated by a newer recloop
                raise StoreError(f"cannot migrate event store {self.url}: {one_line(exc)}") from exc

    def guard_against_erasure(self, conn: sa.Connection, *, exclusive: bool = False) -> None:
        """Serialise writes about users with erasures (PostgreSQL; SQLite's write lock already
        does): writers take the lock shared, an erasure exclusively, so a write that began
        before an erasure finishes first (and is deleted by it), and one that begins later
        sees the tombstone."""
        if self.dialect == "postgresql":
            lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            conn.execute(sa.text(f"SELECT {lock}(:key)"), {"key": ERASURE_LOCK_KEY})

    def transaction(self, *, write: bool = True) -> Any:
        """A connection in a transaction (a context manager), for the store's companion
        modules (:mod:`recloop.store.slates`); database failures surface as StoreError."""
        return self._transaction(write=write)

    def insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT for ``table``, which knows ON CONFLICT."""
        return self._insert(table)

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sa.Connection]:
        """A connection in a transaction, committed on success; database failures as StoreError."""
        try:
            if write:
                with self._writer.begin() as conn:
                    yield conn
            else:
                with self._reader.connect() as conn:
                    yield conn
        except (sa.exc.OperationalError, sa.exc.DataError) as exc:
            # DataError: a value the database refuses, e.g. PostgreSQL and a NUL character
            reason = one_line(exc.orig if exc.orig is not None else exc)
            if self._url.password:
                reason = reason.replace(str(self._url.password), "***")
            raise StoreError(f"event store {self.url}: {reason}") from exc
        except UnicodeEncodeError as exc:  # SQLite and a lone surrogate in a text
            raise StoreError(f"event store {self.url}: text is not valid Unicode") from exc

    def _insert(self, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
        """The dialect's INSERT, which knows ON CONFLICT."""
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def _count(self, table: sa.Table) -> int:
        with self._transaction(write=False) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _parse_url(url: str | os.PathLike[str]) -> sa.URL:
    """The SQLAlchemy URL for a store URL or a plain path of a SQLite file."""
    text = os.fspath(url)
    if "://" not in text:
        return sa.URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        parsed = sa.make_url(text)
    except sa.exc.ArgumentError:
        masked = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", text)
        raise StoreError(f"bad event store URL {masked!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreError("the SQLite event store needs a file: sqlite:///path/to/events.db")
        return parsed
    if backend in ("postgresql", "postgres"):
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    raise StoreError(
        f"unsupported event store URL {parsed.render_as_string(hide_password=True)!r}: "
        "expected sqlite:///path/to/file.db or postgresql://host/database"
    )


def _create_engine(url: sa.URL, pool_size: int) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, pool_size=pool_size)
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    return sa.create_engine(url, pool_size=pool_size, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """Settings of every new SQLite connection."""
    # Hand transactions to SQLAlchemy (_sqlite_begin): pysqlite's own handling would not wrap DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in ("busy_timeout = 10000", "journal_mode = WAL", "synchronous = FULL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at once (waiting up to busy_timeout): a write transaction
    # never fails half-way because a concurrent writer got there first.
    mode = conn.get_execution_options().get("recloop_begin", "DEFERRED")
    if mode != "NONE":
        conn.exec_driver_sql(f"BEGIN {mode}")


def _to_json(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise StoreError(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{what} are not JSON: {one_line(exc)}") from exc


_EVENT_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "kind",
    "timestamp",
    "value",
    "slate_id",
    "context",
)


def _postgres_batch_insert() -> postgresql.Insert:
    """INSERT INTO events of a whole batch given as one array per column, kept in batch order.

    The multi-row VALUES form that SQLite gets has 8,000 placeholders per 1,000 events, and
    psycopg parses such a statement in Python on every execution (it caches only statements of
    at most 50 parameters): that halved PostgreSQL's ingest rate. Arrays keep it to 8.
    """
    arrays = [
        sa.bindparam(name, type_=postgresql.ARRAY(events.c[name].type)) for name in _EVENT_COLUMNS
    ]
    batch = (
        sa.func.unnest(*arrays)
        .table_valued(*_EVENT_COLUMNS, with_ordinality="ord")
        .render_derived(name="batch")
    )
    rows = sa.select(*(batch.c[name] for name in _EVENT_COLUMNS)).order_by(batch.c.ord)
    return postgresql.insert(events).from_select(_EVENT_COLUMNS, rows)


_POSTGRES_BATCH_INSERT = _postgres_batch_insert()


def _user_states_query(dialect: str) -> sa.Select[Any]:
    """``(user_id, owner, tombstone)`` of each given user that is owned or erased, the ids
    bound as one parameter ``user_ids``: a text array on PostgreSQL, a JSON array on SQLite."""
    given: Any
    if dialect == "postgresql":
        ids = sa.bindparam("user_ids", type_=postgresql.ARRAY(sa.String))
        given = sa.func.unnest(ids).table_valued("user_id").render_derived(name="given")
        user_id = given.c.user_id
    else:
        given = sa.func.json_each(sa.bindparam("user_ids")).table_valued("value")
        user_id = given.c.value
    return (
        sa.select(user_id, user_owners.c.owner, tombstones.c.user_id)
        .select_from(
            given.outerjoin(user_owners, user_owners.c.user_id == user_id).outerjoin(
                tombstones, tombstones.c.user_id == user_id
            )
        )
        .where(sa.or_(user_owners.c.user_id.is_not(None), tombstones.c.user_id.is_not(None)))
    )


_USER_STATES = {dialect: _user_states_query(dialect) for dialect in ("postgresql", "sqlite")}


def _event_row(event: EventRecord) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "kind": int(event.kind),
        "timestamp": float(event.timestamp),
        "value": None if event.value is None else float(event.value),
        "slate_id": event.slate_id,
        "context": None if event.context is None else _to_json(event.context, "event context"),
    }


def _item_row(item: ItemRecord) -> dict[str, Any]:
    """The item as a table row, checking the types ``update_item``'s keywords could get wrong."""
    if not isinstance(item.title, str) or not isinstance(item.text, str):
        raise StoreError(f"item {item.item_id!r}: title and text must be strings")
    if not isinstance(item.hidden, bool):
        raise StoreError(f"item {item.item_id!r}: hidden must be true or false")
    for name in ("available_from", "available_until"):
        bound = getattr(item, name)
        if bound is not None and (
            isinstance(bound, bool)
            or not isinstance(bound, int | float)
            or not math.isfinite(bound)
        ):
            raise StoreError(f"item {item.item_id!r}: {name} must be epoch seconds or None")
    return {
        "item_id": item.item_id,
        "title": item.title,
        "text": item.text,
        "attributes": _to_json(item.attributes, f"attributes of item {item.item_id!r}"),
        "hidden": item.hidden,
        "available_from": None if item.available_from is None else float(item.available_from),
        "available_until": None if item.available_until is None else float(item.available_until),
    }


def _item_record(row: sa.Row[Any]) -> ItemRecord:
    values = row._asdict()
    return ItemRecord(**{**values, "attributes": json.loads(values["attributes"])})


def _key_row(record: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "role": record.role,
        "key_hash": record.key_hash,
        "created_at": float(record.created_at),
        "revoked_at": None if record.revoked_at is None else float(record.revoked_at),
        "owner": record.owner,
    }
