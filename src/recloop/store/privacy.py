"""Consent, erasure and the audit log, in the event store.

- **Consent**: three flags per user. ``personalisation`` (off: non-personalised answers,
  labelled so), ``training`` (off: the user's events are left out of every training
  snapshot), ``generative`` (off: none of the user's data goes into any prompt). A user who
  never said anything has :data:`DEFAULT_CONSENT`.
- **Ownership**: the client application that acts for a user (the first one to write for
  them claims them, :meth:`EventStore.claim_users`); an admin reassigns or releases it with
  :meth:`PrivacyLog.set_owner`.
- **Erasure**: :meth:`PrivacyLog.erase_user` deletes, in one transaction, the user's events,
  profile and preferences, consent, ownership, and every slate shown to them, and writes a
  tombstone that makes the store refuse any later event for that id (a replayed batch cannot
  bring them back). Caches and models are the service's part (:mod:`recloop.service.privacy`).
- **Audit log**: who asked for what about whom, and when it completed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from recloop.errors import ConfigError
from recloop.store.events import EventStore
from recloop.store.schema import (
    audit_log,
    bandit_history,
    consent,
    events,
    impressions,
    slates,
    tombstones,
    user_owners,
    users,
)


@dataclass(frozen=True, slots=True)
class Consent:
    """What a user allows."""

    personalisation: bool = True
    training: bool = True
    generative: bool = False


DEFAULT_CONSENT = Consent()
"""Personalisation and training on by default (the service's purpose, which users can turn
off); generative features off until the user opts in, since they may send data to an LLM."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing one user removed."""

    user_id: str
    erased_at: float
    events: int
    slates: int
    impressions: int
    profile: bool
    consent: bool
    ownership: bool


@dataclass(frozen=True, slots=True)
class UserOwner:
    """The client application that acts for a user, since when."""

    user_id: str
    owner: str
    claimed_at: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any] | None


class PrivacyLog:
    """Consent flags, erasure with tombstones, and the audit log (see the module docstring)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    # ------------------------------------------------------------------ consent
    def consent(self, user_id: str) -> Consent:
        """The user's consent (the defaults when they never set it)."""
        with self.store.transaction(write=False) as conn:
            row = conn.execute(sa.select(consent).where(consent.c.user_id == user_id)).first()
        if row is None:
            return DEFAULT_CONSENT
        return Consent(bool(row.personalisation), bool(row.training), bool(row.generative))

    def set_consent(self, user_id: str, value: Consent, actor: str) -> None:
        """Replace the user's consent, and audit the change."""
        now = time.time()
        row = {"user_id": user_id, **asdict(value), "updated_at": now}
        insert = self.store.insert(consent)
        upsert = insert.on_conflict_do_update(
            index_elements=["user_id"],
            set_={name: insert.excluded[name] for name in (*asdict(value), "updated_at")},
        )
        with self.store.transaction() as conn:
            conn.execute(upsert, row)
            _audit(conn, now, actor, "consent", user_id, asdict(value))

    def without_training_consent(self) -> set[str]:
        """Users who turned training off: their events stay out of training snapshots."""
        with self.store.transaction(write=False) as conn:
            query = sa.select(consent.c.user_id).where(consent.c.training.is_(False))
            return set(conn.execute(query).scalars())

    # ------------------------------------------------------------------ ownership
    def owner(self, user_id: str) -> UserOwner | None:
        """Who owns the user; None while no client application has claimed them."""
        query = sa.select(user_owners).where(user_owners.c.user_id == user_id)
        with self.store.transaction(write=False) as conn:
            row = conn.execute(query).first()
        return None if row is None else UserOwner(row.user_id, row.owner, row.claimed_at)

    def set_owner(self, user_id: str, owner: str | None, actor: str) -> UserOwner | None:
        """Give the user to ``owner``, or release them (None: the next client application to
        write for them claims them); audited with the previous owner."""
        if owner is not None and not owner.strip():
            raise ConfigError("an owner must be a non-empty client application name")
        now = time.time()
        with self.store.transaction() as conn:
            self.store.guard_against_erasure(conn)
            query = sa.select(user_owners.c.owner).where(user_owners.c.user_id == user_id)
            previous = conn.execute(query.with_for_update()).scalar_one_or_none()
            if owner is None:
                conn.execute(sa.delete(user_owners).where(user_owners.c.user_id == user_id))
            else:
                insert = self.store.insert(user_owners)
                upsert = insert.on_conflict_do_update(
                    index_elements=["user_id"],
                    set_={"owner": insert.excluded.owner, "claimed_at": insert.excluded.claimed_at},
                )
                conn.execute(upsert, {"user_id": user_id, "owner": owner, "claimed_at": now})
            _audit(conn, now, actor, "owner", user_id, {"owner": owner, "previous": previous})
        return None if owner is None else UserOwner(user_id, owner, now)

    # ------------------------------------------------------------------ erasure
    def erase_user(self, user_id: str, actor: str) -> Erasure:
        """Delete everything stored about ``user_id`` and leave a tombstone (one transaction)."""
        now = time.time()
        with self.store.transaction() as conn:
            self.store.guard_against_erasure(conn, exclusive=True)
            _audit(conn, now, actor, "erasure-requested", user_id, None)
            slate_ids = list(
                conn.execute(
                    sa.select(slates.c.slate_id).where(slates.c.user_id == user_id)
                ).scalars()
            )
            shown = 0
            for start in range(0, len(slate_ids), 500):
                chunk = slate_ids[start : start + 500]
                shown += conn.execute(
                    sa.delete(impressions).where(impressions.c.slate_id.in_(chunk))
                ).rowcount
                conn.execute(sa.delete(slates).where(slates.c.slate_id.in_(chunk)))
            n_events = conn.execute(sa.delete(events).where(events.c.user_id == user_id)).rowcount
            profile = conn.execute(sa.delete(users).where(users.c.user_id == user_id)).rowcount
            had_consent = conn.execute(
                sa.delete(consent).where(consent.c.user_id == user_id)
            ).rowcount
            owned = conn.execute(
                sa.delete(user_owners).where(user_owners.c.user_id == user_id)
            ).rowcount
            tomb = self.store.insert(tombstones).on_conflict_do_update(
                index_elements=["user_id"], set_={"erased_at": now}
            )
            conn.execute(tomb, {"user_id": user_id, "erased_at": now})
            erasure = Erasure(
                user_id=user_id,
                erased_at=now,
                events=n_events,
                slates=len(slate_ids),
                impressions=shown,
                profile=bool(profile),
                consent=bool(had_consent),
                ownership=bool(owned),
            )
            detail = {k: v for k, v in asdict(erasure).items() if k != "user_id"}
            _audit(conn, time.time(), actor, "erasure-stored-data-deleted", user_id, detail)
        return erasure

    def erased(self) -> dict[str, float]:
        """Every tombstone: ``user_id -> erased_at``."""
        with self.store.transaction(write=False) as conn:
            return {u: t for u, t in conn.execute(sa.select(tombstones))}

    def erased_since(self, since: float) -> list[tuple[str, float]]:
        """Tombstones written after ``since`` (oldest first): erasures a model may still hold."""
        query = (
            sa.select(tombstones.c.user_id, tombstones.c.erased_at)
            .where(tombstones.c.erased_at > since)
            .order_by(tombstones.c.erased_at)
        )
        with self.store.transaction(write=False) as conn:
            return [(u, t) for u, t in conn.execute(query)]

    # ------------------------------------------------------------------ retention
    def purge_expired(
        self, retention_s: dict[str, float], slate_max_age_s: float, now: float
    ) -> dict[str, int]:
        """Delete events older than their kind's retention and slates older than
        ``slate_max_age_s``; how many of each, by kind (``slates`` for slates)."""
        from recloop.data.types import EventKind

        removed: dict[str, int] = {}
        with self.store.transaction() as conn:
            for name, seconds in retention_s.items():
                try:
                    kind = EventKind.parse(name)
                except ValueError as exc:
                    raise ConfigError(f"retention: {exc}") from None
                removed[kind.name.lower()] = conn.execute(
                    sa.delete(events).where(
                        events.c.kind == int(kind), events.c.timestamp < now - seconds
                    )
                ).rowcount
            old = sa.select(slates.c.slate_id).where(slates.c.created_at < now - slate_max_age_s)
            conn.execute(sa.delete(impressions).where(impressions.c.slate_id.in_(old)))
            removed["slates"] = conn.execute(
                sa.delete(slates).where(slates.c.created_at < now - slate_max_age_s)
            ).rowcount
            conn.execute(
                sa.delete(bandit_history).where(bandit_history.c.at < now - slate_max_age_s)
            )
            if any(removed.values()):
                _audit(conn, now, "retention", "purge", "*", removed)
        return removed

    # ------------------------------------------------------------------ audit
    def record(self, actor: str, action: str, subject: str, detail: dict[str, Any] | None) -> None:
        with self.store.transaction() as conn:
            _audit(conn, time.time(), actor, action, subject, detail)

    def audit(self, *, subject: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The latest audit entries, newest first (of one subject, when given)."""
        query = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if subject is not None:
            query = query.where(audit_log.c.subject == subject)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            AuditEntry(r.seq, r.at, r.actor, r.action, r.subject, _detail(r.detail)) for r in rows
        ]


def _detail(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _audit(
    conn: sa.Connection,
    at: float,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any] | None,
) -> None:
    conn.execute(
        sa.insert(audit_log),
        {
            "at": at,
            "actor": actor,
            "action": action,
            "subject": subject,
            "detail": json.dumps(detail) if detail is not None else None,
        },
    )
