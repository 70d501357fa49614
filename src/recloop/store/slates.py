"""The feedback loop's log: every slate shown, with its items, sources and the policy's choice.

A slate is what one recommendation request answered: its items in order, the source of each,
and, when a bandit chose the blend, the arm and the probability with which it was chosen (the
propensity that off-policy estimates need). Outcomes are ordinary events that carry the
slate's ``slate_id``; :meth:`SlateLog.logged` joins the two.

Writing slates must not slow the request down: :class:`SlateWriter` buffers them in memory and
a background thread writes them in batches (every ``flush_s`` or ``max_batch`` slates). A
worker killed between two flushes loses at most that buffer: slates are telemetry, not user
data, and the events the user sent are committed before they are acknowledged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from recloop.data.types import NEGATIVE_EVENTS, EventKind
from recloop.store.events import EventStore
from recloop.store.schema import (
    bandit_arms,
    bandit_history,
    events,
    impressions,
    retrain_log,
    slates,
    tombstones,
)

log = logging.getLogger("recloop.store.slates")
_CHUNK = 500
_RETRAIN_LOCK = 0x7265747261696E  # "retrain" in ASCII: one claim at a time on PostgreSQL
_POSITIVE = sorted(int(k) for k in EventKind if k not in NEGATIVE_EVENTS)


@dataclass(frozen=True, slots=True)
class Impression:
    """One shown item: where it stood, which source produced it, with what score."""

    position: int
    item_id: str
    source: str
    score: float
    generated: bool = False


@dataclass(frozen=True, slots=True)
class SlateRecord:
    """One answered recommendation request."""

    slate_id: str
    user_id: str
    created_at: float
    model_version: str
    segment: str
    items: tuple[Impression, ...]
    arm: int | None = None
    arm_probability: float | None = None
    policy: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """An event that names a slate: what the user did with one of its items."""

    item_id: str | None
    kind: EventKind
    timestamp: float
    value: float | None


@dataclass(frozen=True, slots=True)
class LoggedSlate:
    """A slate joined with its outcomes."""

    slate: SlateRecord
    outcomes: tuple[Outcome, ...] = field(default_factory=tuple)

    def clicked_positions(self) -> list[int]:
        """Positions of the shown items that got a positive outcome (first one per item)."""
        where = {imp.item_id: imp.position for imp in self.slate.items}
        seen: list[int] = []
        for outcome in self.outcomes:
            position = where.get(outcome.item_id or "")
            if position is not None and not outcome.kind.is_negative and position not in seen:
                seen.append(position)
        return seen

    @property
    def reward(self) -> float:
        """1 when any shown item got a positive outcome, else 0 (the bandit's reward)."""
        return 1.0 if self.clicked_positions() else 0.0


@dataclass(frozen=True, slots=True)
class RetrainEntry:
    """One retraining run, from trigger to the version it produced."""

    seq: int
    started_at: float
    finished_at: float | None
    trigger: str
    events: int
    version: str | None
    status: str
    detail: str | None


class SlateLog:
    """Slates, impressions, bandit posteriors and retraining history in the event store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    # ------------------------------------------------------------------ slates
    def add_slates(self, batch: Sequence[SlateRecord]) -> int:
        """Store slates (one transaction); a ``slate_id`` already stored is skipped."""
        if not batch:
            return 0
        unique = list({s.slate_id: s for s in batch}.values())
        slate_rows = [_slate_row(s) for s in unique]
        with self.store.transaction() as conn:
            self.store.guard_against_erasure(conn)
            ids = {s["slate_id"] for s in slate_rows}
            known = set()
            for chunk in _chunks(sorted(ids)):
                known.update(
                    conn.execute(
                        sa.select(slates.c.slate_id).where(slates.c.slate_id.in_(chunk))
                    ).scalars()
                )
            # a slate queued before its user was erased must not bring them back
            users_in = sorted({row["user_id"] for row in slate_rows})
            erased: set[str] = set()
            for chunk in _chunks(users_in):
                erased.update(
                    conn.execute(
                        sa.select(tombstones.c.user_id).where(tombstones.c.user_id.in_(chunk))
                    ).scalars()
                )
            known |= {row["slate_id"] for row in slate_rows if row["user_id"] in erased}
            fresh = [row for row in slate_rows if row["slate_id"] not in known]
            if not fresh:
                return 0
            conn.execute(sa.insert(slates), fresh)
            rows = [
                _impression_row(s.slate_id, imp)
                for s in unique
                if s.slate_id not in known
                for imp in s.items
            ]
            if rows:
                conn.execute(sa.insert(impressions), rows)
        return len(fresh)

    def slate(self, slate_id: str) -> SlateRecord | None:
        """The stored slate, or None."""
        with self.store.transaction(write=False) as conn:
            row = conn.execute(sa.select(slates).where(slates.c.slate_id == slate_id)).first()
            if row is None:
                return None
            items = conn.execute(
                sa.select(impressions)
                .where(impressions.c.slate_id == slate_id)
                .order_by(impressions.c.position)
            ).all()
        return _slate_record(row, [_impression(r) for r in items])

    def count_slates(self) -> int:
        with self.store.transaction(write=False) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(slates)).scalar_one())

    def logged(
        self, *, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> list[LoggedSlate]:
        """Slates created in ``[since, until)``, oldest first, each with its outcomes."""
        query = sa.select(slates).order_by(slates.c.created_at, slates.c.slate_id)
        if since is not None:
            query = query.where(slates.c.created_at >= since)
        if until is not None:
            query = query.where(slates.c.created_at < until)
        if limit is not None:
            query = query.limit(limit)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
            by_id: dict[str, list[Impression]] = {r.slate_id: [] for r in rows}
            outcomes: dict[str, list[Outcome]] = {r.slate_id: [] for r in rows}
            user_of = {r.slate_id: r.user_id for r in rows}
            for chunk in _chunks(list(by_id)):
                for r in conn.execute(
                    sa.select(impressions)
                    .where(impressions.c.slate_id.in_(chunk))
                    .order_by(impressions.c.slate_id, impressions.c.position)
                ):
                    by_id[r.slate_id].append(_impression(r))
                for r in conn.execute(
                    sa.select(
                        events.c.slate_id,
                        events.c.user_id,
                        events.c.item_id,
                        events.c.kind,
                        events.c.timestamp,
                        events.c.value,
                    )
                    .where(events.c.slate_id.in_(chunk))
                    .order_by(events.c.timestamp, events.c.seq)
                ):
                    if r.user_id != user_of[r.slate_id]:
                        continue  # cites another user's slate: not an outcome of it
                    outcomes[r.slate_id].append(
                        Outcome(r.item_id, EventKind(r.kind), r.timestamp, r.value)
                    )
        return [
            LoggedSlate(_slate_record(r, by_id[r.slate_id]), tuple(outcomes[r.slate_id]))
            for r in rows
        ]

    # ------------------------------------------------------------------ aggregates
    @staticmethod
    def _outcome(attribution_s: float) -> tuple[Any, ...]:
        """An event that is a positive outcome of the slate in scope: it cites the slate, is
        about the slate's own user (another user's event citing it is no outcome of it) and
        came within ``attribution_s`` of it."""
        return (
            events.c.slate_id == slates.c.slate_id,
            events.c.user_id == slates.c.user_id,
            events.c.kind.in_(_POSITIVE),
            events.c.timestamp <= slates.c.created_at + attribution_s,
        )

    def _hit(self, attribution_s: float, item_col: Any) -> Any:
        """EXISTS a positive outcome of the slate on ``item_col``."""
        return sa.exists().where(*self._outcome(attribution_s), events.c.item_id == item_col)

    def _slate_hit(self, attribution_s: float) -> Any:
        """EXISTS a positive outcome of the slate on any item it showed."""
        return (
            sa.exists()
            .where(*self._outcome(attribution_s))
            .where(
                sa.exists().where(
                    impressions.c.slate_id == slates.c.slate_id,
                    impressions.c.item_id == events.c.item_id,
                )
            )
        )

    def reward_rows(
        self, since: float, until: float, attribution_s: float, *, limit: int = 100_000
    ) -> list[tuple[str, int, float | None, float]]:
        """``(segment, arm, arm_probability, reward)`` of the bandit-chosen slates created in
        ``[since, until]``, newest first (at most ``limit``); reward 1 when a shown item got a
        positive outcome within ``attribution_s``. Computed by the database."""
        reward = sa.case((self._slate_hit(attribution_s), 1.0), else_=0.0)
        query = (
            sa.select(slates.c.segment, slates.c.arm, slates.c.arm_probability, reward)
            .where(
                slates.c.arm.is_not(None),
                slates.c.created_at >= since,
                slates.c.created_at <= until,
            )
            .order_by(slates.c.created_at.desc())
            .limit(limit)
        )
        with self.store.transaction(write=False) as conn:
            return [(r[0], int(r[1]), r[2], float(r[3])) for r in conn.execute(query)]

    def arm_counts(
        self, since: float, until: float, attribution_s: float
    ) -> list[tuple[str, int, int, int]]:
        """``(segment, arm, slates, rewarded slates)`` over the window, by the database."""
        hit = sa.case((self._slate_hit(attribution_s), 1), else_=0)
        query = (
            sa.select(slates.c.segment, slates.c.arm, sa.func.count(), sa.func.sum(hit))
            .where(
                slates.c.arm.is_not(None),
                slates.c.created_at >= since,
                slates.c.created_at <= until,
            )
            .group_by(slates.c.segment, slates.c.arm)
        )
        with self.store.transaction(write=False) as conn:
            return [(r[0], int(r[1]), int(r[2]), int(r[3] or 0)) for r in conn.execute(query)]

    def impression_counts(
        self, since: float, until: float, attribution_s: float
    ) -> dict[str, dict[str, tuple[int, int]]]:
        """Impressions and positive outcomes by source and by position, over the window."""
        hit = sa.case((self._hit(attribution_s, impressions.c.item_id), 1), else_=0)
        joined = impressions.join(slates, impressions.c.slate_id == slates.c.slate_id)
        window = (slates.c.created_at >= since, slates.c.created_at <= until)
        out: dict[str, dict[str, tuple[int, int]]] = {}
        with self.store.transaction(write=False) as conn:
            for name, column in (
                ("sources", impressions.c.source),
                ("positions", impressions.c.position),
            ):
                query = (
                    sa.select(column, sa.func.count(), sa.func.sum(hit))
                    .select_from(joined)
                    .where(*window)
                    .group_by(column)
                    .order_by(column)
                )
                out[name] = {str(r[0]): (int(r[1]), int(r[2] or 0)) for r in conn.execute(query)}
        return out

    def item_impressions(self, since: float) -> dict[str, int]:
        """How often each item was shown in slates created since ``since``."""
        query = (
            sa.select(impressions.c.item_id, sa.func.count())
            .select_from(impressions.join(slates, impressions.c.slate_id == slates.c.slate_id))
            .where(slates.c.created_at >= since)
            .group_by(impressions.c.item_id)
        )
        with self.store.transaction(write=False) as conn:
            return {item: int(n) for item, n in conn.execute(query)}

    def segment_counts(
        self, since: float, until: float, attribution_s: float
    ) -> dict[str, tuple[int, int]]:
        """``segment -> (slates, rewarded slates)`` over the window, by the database."""
        hit = sa.case((self._slate_hit(attribution_s), 1), else_=0)
        query = (
            sa.select(slates.c.segment, sa.func.count(), sa.func.sum(hit))
            .where(slates.c.created_at >= since, slates.c.created_at <= until)
            .group_by(slates.c.segment)
        )
        with self.store.transaction(write=False) as conn:
            return {r[0]: (int(r[1]), int(r[2] or 0)) for r in conn.execute(query)}

    def delete_user(self, user_id: str) -> int:
        """Remove every slate (and its impressions) shown to ``user_id``; how many."""
        with self.store.transaction() as conn:
            ids = list(
                conn.execute(
                    sa.select(slates.c.slate_id).where(slates.c.user_id == user_id)
                ).scalars()
            )
            for chunk in _chunks(ids):
                conn.execute(sa.delete(impressions).where(impressions.c.slate_id.in_(chunk)))
                conn.execute(sa.delete(slates).where(slates.c.slate_id.in_(chunk)))
        return len(ids)

    # ------------------------------------------------------------------ bandit
    def arms(self) -> dict[tuple[str, int], tuple[float, float]]:
        """Every stored posterior: ``(segment, arm) -> (alpha, beta)``."""
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(sa.select(bandit_arms)).all()
        return {(r.segment, r.arm): (r.alpha, r.beta) for r in rows}

    def set_arms(self, posteriors: dict[tuple[str, int], tuple[float, float]]) -> None:
        """Replace the stored posteriors with ``posteriors`` (one transaction)."""
        now = time.time()
        rows = [
            {"segment": seg, "arm": arm, "alpha": a, "beta": b, "updated_at": now}
            for (seg, arm), (a, b) in posteriors.items()
        ]
        with self.store.transaction() as conn:
            conn.execute(sa.delete(bandit_arms))
            if rows:
                conn.execute(sa.insert(bandit_arms), rows)

    def add_policy_snapshot(self, at: float, policy: dict[str, dict[str, float]]) -> None:
        """Record each segment's arm probabilities at ``at`` (for plotting them over time)."""
        rows = [
            {"at": at, "segment": segment, "probabilities": json.dumps(probs)}
            for segment, probs in policy.items()
        ]
        if rows:
            with self.store.transaction() as conn:
                conn.execute(sa.insert(bandit_history), rows)

    def policy_history(self, limit: int = 500) -> list[tuple[float, str, dict[str, float]]]:
        """The latest snapshots, oldest first: ``(at, segment, {arm: probability})``."""
        query = sa.select(bandit_history).order_by(bandit_history.c.seq.desc()).limit(limit)
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [(r.at, r.segment, json.loads(r.probabilities)) for r in reversed(rows)]

    # ------------------------------------------------------------------ retraining
    def start_retrain(self, trigger: str, n_events: int) -> int:
        """Record a retraining run as started; its sequence number."""
        with self.store.transaction() as conn:
            result = conn.execute(
                sa.insert(retrain_log).returning(retrain_log.c.seq),
                {
                    "started_at": time.time(),
                    "trigger": trigger,
                    "events": n_events,
                    "status": "running",
                },
            )
            return int(result.scalar_one())

    def claim_retrain(self, trigger: str, n_events: int, stale_s: float) -> int | None:
        """Start a retraining run unless one started less than ``stale_s`` ago is still
        running; atomic across workers (SQLite's write lock, PostgreSQL's advisory lock)."""
        now = time.time()
        with self.store.transaction() as conn:
            if self.store.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _RETRAIN_LOCK})
            running = conn.execute(
                sa.select(sa.func.count())
                .select_from(retrain_log)
                .where(retrain_log.c.status == "running", retrain_log.c.started_at > now - stale_s)
            ).scalar_one()
            if running:
                return None
            result = conn.execute(
                sa.insert(retrain_log).returning(retrain_log.c.seq),
                {"started_at": now, "trigger": trigger, "events": n_events, "status": "running"},
            )
            return int(result.scalar_one())

    def finish_retrain(
        self, seq: int, *, status: str, version: str | None = None, detail: str | None = None
    ) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                sa.update(retrain_log)
                .where(retrain_log.c.seq == seq)
                .values(finished_at=time.time(), status=status, version=version, detail=detail)
            )

    def retrain_history(self, limit: int = 50) -> list[RetrainEntry]:
        """The latest retraining runs, newest first."""
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(
                sa.select(retrain_log).order_by(retrain_log.c.seq.desc()).limit(limit)
            ).all()
        return [
            RetrainEntry(
                r.seq,
                r.started_at,
                r.finished_at,
                r.trigger,
                r.events,
                r.version,
                r.status,
                r.detail,
            )
            for r in rows
        ]


class SlateWriter:
    """Buffers slates and writes them in batches from a background thread (see module doc)."""

    def __init__(self, log_: SlateLog, *, flush_s: float = 0.2, max_batch: int = 500) -> None:
        self._log = log_
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._buffer: list[SlateRecord] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one batch at a time, so flush() waits for others
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failed = 0

    def add(self, slate: SlateRecord) -> None:
        """Queue ``slate`` (never blocks on the database)."""
        with self._lock:
            self._buffer.append(slate)
            full = len(self._buffer) >= self._max_batch
        if self._thread is None:
            self.start()
        if full:
            self._wake.set()

    def drop_user(self, user_id: str) -> int:
        """Discard the queued slates of ``user_id`` (erasure); how many."""
        with self._lock:
            kept = [s for s in self._buffer if s.user_id != user_id]
            dropped = len(self._buffer) - len(kept)
            self._buffer = kept
        return dropped

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="slate-writer", daemon=True)
            self._thread.start()

    def flush(self) -> int:
        """Write what is buffered now, in the caller's thread, after any write in progress
        elsewhere; every slate added before the call is then stored. How many were written."""
        with self._writing:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            try:
                written = self._log.add_slates(batch)
            except Exception:  # the store is down: keep the slates for the next try
                log.exception("writing %d slates failed; will retry", len(batch))
                with self._lock:
                    self._buffer[:0] = batch
                    self.failed += 1
                return 0
            self.written += written
            return written

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_s)
            self._wake.clear()
            self.flush()


def _chunks(values: list[str]) -> list[list[str]]:
    return [values[i : i + _CHUNK] for i in range(0, len(values), _CHUNK)]


def _slate_row(s: SlateRecord) -> dict[str, Any]:
    return {
        "slate_id": s.slate_id,
        "user_id": s.user_id,
        "created_at": s.created_at,
        "model_version": s.model_version,
        "segment": s.segment,
        "arm": s.arm,
        "arm_probability": s.arm_probability,
        "policy": json.dumps(s.policy) if s.policy is not None else None,
    }


def _impression_row(slate_id: str, imp: Impression) -> dict[str, Any]:
    return {
        "slate_id": slate_id,
        "position": imp.position,
        "item_id": imp.item_id,
        "source": imp.source,
        "score": float(imp.score),
        "generated": imp.generated,
    }


def _impression(row: Any) -> Impression:
    return Impression(row.position, row.item_id, row.source, row.score, bool(row.generated))


def _slate_record(row: Any, items: list[Impression]) -> SlateRecord:
    return SlateRecord(
        slate_id=row.slate_id,
        user_id=row.user_id,
        created_at=row.created_at,
        model_version=row.model_version,
        segment=row.segment,
        items=tuple(items),
        arm=row.arm,
        arm_probability=row.arm_probability,
        policy=json.loads(row.policy) if row.policy else None,
    )
