"""The human review queue for generated content, kept in the event store with an audit trail.

Every piece arrives with the automated checks' :class:`~recloop.generative.quality.QualityReport`
and moves through three states::

    submit ──checks pass──▶ pending ──approve──▶ approved ──(edit)──▶ pending
       │                      │  ▲                  │
       └──checks fail──▶ rejected ◀──reject─────────┘
                              │  │
                              └──┘ edit (checks re-run: pass → pending, fail → rejected)

- A piece that fails a check is stored as ``rejected`` (reviewer ``"checks"``, the failed
  checks as the reason, the findings kept): nothing unchecked reaches a reviewer's approve
  button, yet the piece stays visible (``list(status="rejected")``) and a reviewer may edit
  it into shape, which re-runs the checks.
- Only a ``pending`` piece can be approved. An edit re-runs the checks and sends the piece
  back to ``pending`` (so an approved piece that is edited stops being served until it is
  approved again), unless the reviewer asks ``approve=True`` and the edited piece passes: then
  the edit approves it in the same step (two audit entries).
- ``reject`` needs a reason; it also withdraws an approved piece.

Every decision (submit, approve, edit, reject) appends an :class:`AuditEntry`. Only approved
pieces are candidates (:meth:`ReviewQueue.approved_for`, used by
:class:`recloop.generative.content.GeneratedSource`). Queries are SQLAlchemy Core and run on
SQLite and PostgreSQL; transitions lock the row and check its revision, so two reviewers
acting at once never both win.
"""

from __future__ import annotations

import builtins
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from recloop.errors import RecloopError
from recloop.generative.quality import (
    KINDS,
    CorpusEntry,
    Finding,
    GeneratedPiece,
    QualityConfig,
    QualityGate,
    QualityReport,
    build_gate,
)
from recloop.store.events import EventStore
from recloop.store.schema import SequenceNumber, metadata

STATUSES: tuple[str, ...] = ("pending", "approved", "rejected")
CHECKS_ACTOR = "checks"
_CHUNK = 1000

generated_content = sa.Table(
    "generated_content",
    metadata,
    sa.Column("content_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("segment", sa.String, nullable=False),
    # Higher first among approved pieces: the segment's gap score when the piece was made.
    sa.Column("priority", sa.Double, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("items", sa.Text, nullable=False),  # JSON list of item ids
    sa.Column("checks_passed", sa.Boolean, nullable=False),
    sa.Column("findings", sa.Text, nullable=False),  # JSON list of findings
    sa.Column("provenance", sa.Text, nullable=False),  # JSON object
    sa.Column("revision", sa.Integer, nullable=False),  # 1, then +1 per edit
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("reviewer", sa.String, nullable=True),  # who made the current status
    sa.Column("decided_at", sa.Double, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'approved', 'rejected')", name="status"),
    sa.CheckConstraint("kind IN ('collection', 'concept')", name="kind"),
    sa.Index(None, "status", "segment"),
)

generated_audience = sa.Table(
    "generated_content_audience",
    metadata,
    sa.Column("content_id", sa.String, primary_key=True),
    sa.Column("user_id", sa.String, primary_key=True),
    sa.ForeignKeyConstraint(
        ["content_id"],
        ["generated_content.content_id"],
        name="fk_generated_content_audience_content_id",
        ondelete="CASCADE",
    ),
    sa.Index(None, "user_id"),
)

generated_audit = sa.Table(
    "generated_content_audit",
    metadata,
    sa.Column("seq", SequenceNumber, primary_key=True, autoincrement=True),
    sa.Column("content_id", sa.String, nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("actor", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False),
    sa.Column("from_status", sa.String, nullable=True),
    sa.Column("to_status", sa.String, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),  # JSON object
    sa.Index(None, "content_id", "seq"),
)


class ReviewError(RecloopError, ValueError):
    """A review request that cannot be done as asked (bad reviewer, reason or edit)."""


class ReviewNotFoundError(ReviewError, LookupError):
    """No generated piece has this id."""


class ReviewConflictError(ReviewError):
    """The piece's state does not allow this decision (e.g. approving a rejected piece)."""


@dataclass(frozen=True, slots=True)
class ReviewedPiece:
    """A piece in the queue: its content, its checks, its current status and who set it.

    ``piece.audience`` is not loaded (it can be long); ``audience_size`` counts it and
    :meth:`ReviewQueue.audience` reads it.
    """

    piece: GeneratedPiece
    status: str
    report: QualityReport
    revision: int
    priority: float
    created_at: float
    updated_at: float
    reviewer: str | None
    decided_at: float | None
    reason: str | None
    audience_size: int = 0

    @property
    def content_id(self) -> str:
        return self.piece.content_id

    def to_json(self) -> dict[str, Any]:
        return {
            **self.piece.to_json(),
            "status": self.status,
            "checks_passed": self.report.passed,
            "findings": [f.to_json() for f in self.report.findings],
            "revision": self.revision,
            "priority": self.priority,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "reviewer": self.reviewer,
            "decided_at": self.decided_at,
            "reason": self.reason,
            "audience_size": self.audience_size,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision about a piece: who, when, from which status to which, and why."""

    seq: int
    content_id: str
    at: float
    actor: str
    action: str
    from_status: str | None
    to_status: str
    revision: int
    reason: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "content_id": self.content_id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "revision": self.revision,
            "reason": self.reason,
            "detail": self.detail,
        }


class ReviewQueue:
    """Generated pieces awaiting, passing or failing human review (see the module docstring).

    ``gate`` re-runs the checks on edits (and on :meth:`submit` without a report); by default
    it is built from ``quality`` (or :meth:`QualityConfig.from_env`) on first use, against this
    store's catalogue and this queue's pending and approved pieces.
    """

    def __init__(
        self,
        store: EventStore,
        gate: QualityGate | None = None,
        *,
        quality: QualityConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._gate = gate
        self._quality = quality
        self._clock = clock
        self._building = threading.Lock()

    @property
    def gate(self) -> QualityGate:
        """The checks edits re-run (built once, on first use, when none was given)."""
        if self._gate is None:
            with self._building:  # a toxicity model is loaded once, not once per thread
                if self._gate is None:
                    config = self._quality or QualityConfig.from_env()
                    self._gate = build_gate(config, items=self.store, corpus=self.corpus)
        return self._gate

    # ------------------------------------------------------------------ submitting
    def submit(
        self,
        piece: GeneratedPiece,
        report: QualityReport | None = None,
        *,
        priority: float | None = None,
        actor: str = "generator",
    ) -> ReviewedPiece:
        """Store a new piece: ``pending`` when its checks passed, else ``rejected`` by the checks.

        ``report`` is the gate's verdict (run here when None); ``priority`` orders approved
        pieces (default: the segment's gap score from ``provenance["gap"]["gap"]``).
        """
        if not isinstance(piece, GeneratedPiece):
            raise ReviewError(f"piece must be a GeneratedPiece, not {type(piece).__name__}")
        actor = _actor(actor, "actor")
        if report is None:
            report = self.gate.run(piece)
        now = self._clock()
        status = "pending" if report.passed else "rejected"
        reason = None if report.passed else _checks_reason(report)
        row = {
            "content_id": piece.content_id,
            "kind": piece.kind,
            "status": status,
            "segment": piece.segment,
            "priority": _priority(piece, priority),
            "title": piece.title,
            "description": piece.description,
            "items": _dumps(list(piece.items), "items"),
            "checks_passed": report.passed,
            "findings": _dumps([f.to_json() for f in report.findings], "findings"),
            "provenance": _dumps(dict(piece.provenance), "provenance"),
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "reviewer": None if report.passed else CHECKS_ACTOR,
            "decided_at": None if report.passed else now,
            "reason": reason,
        }
        insert = (
            self.store.insert(generated_content)
            .values(row)
            .on_conflict_do_nothing(index_elements=["content_id"])
            .returning(generated_content.c.content_id)
        )
        audience = list(dict.fromkeys(piece.audience))
        with self.store.transaction() as conn:
            if conn.execute(insert).scalar_one_or_none() is None:
                raise ReviewConflictError(f"piece {piece.content_id!r} was already submitted")
            for start in range(0, len(audience), _CHUNK):
                chunk = audience[start : start + _CHUNK]
                conn.execute(
                    sa.insert(generated_audience),
                    [{"content_id": piece.content_id, "user_id": u} for u in chunk],
                )
            _audit(
                conn,
                piece.content_id,
                now,
                actor,
                "submit",
                None,
                status,
                1,
                reason,
                {"failed_checks": report.failed_checks()} if not report.passed else {},
            )
        return self.get(piece.content_id)

    # ------------------------------------------------------------------ reading
    def get(self, content_id: str) -> ReviewedPiece:
        """The piece with this id; :class:`ReviewNotFoundError` when there is none."""
        query = _select_pieces().where(generated_content.c.content_id == str(content_id))
        with self.store.transaction(write=False) as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise ReviewNotFoundError(f"unknown generated piece {content_id!r}")
        return _reviewed(row)

    def list(
        self,
        status: str | None = None,
        *,
        segment: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[ReviewedPiece]:
        """Pieces, optionally of one status and segment: highest priority, then oldest first."""
        query = _select_pieces()
        if status is not None:
            query = query.where(generated_content.c.status == _status(status))
        if segment is not None:
            query = query.where(generated_content.c.segment == segment)
        if not (isinstance(limit, int) and 1 <= limit <= 1000) or offset < 0:
            raise ReviewError("limit must be 1-1000 and offset >= 0")
        query = query.order_by(
            generated_content.c.priority.desc(),
            generated_content.c.created_at,
            generated_content.c.content_id,
        )
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [_reviewed(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """How many pieces are in each status."""
        query = sa.select(generated_content.c.status, sa.func.count()).group_by(
            generated_content.c.status
        )
        with self.store.transaction(write=False) as conn:
            found = {status: int(n) for status, n in conn.execute(query)}
        return {status: found.get(status, 0) for status in STATUSES}

    def audience(self, content_id: str) -> builtins.list[str]:
        """The user ids a piece was made for."""
        query = (
            sa.select(generated_audience.c.user_id)
            .where(generated_audience.c.content_id == content_id)
            .order_by(generated_audience.c.user_id)
        )
        with self.store.transaction(write=False) as conn:
            return list(conn.execute(query).scalars())

    def history(self, content_id: str) -> builtins.list[AuditEntry]:
        """Every decision about the piece, oldest first."""
        query = (
            sa.select(generated_audit)
            .where(generated_audit.c.content_id == content_id)
            .order_by(generated_audit.c.seq)
        )
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            AuditEntry(**{**row._asdict(), "detail": json.loads(row.detail or "{}")})
            for row in rows
        ]

    def approved_for(
        self,
        *,
        segment: str | None = None,
        user: str | None = None,
        kinds: Sequence[str] = ("collection",),
        limit: int = 50,
    ) -> builtins.list[ReviewedPiece]:
        """Approved pieces made for ``segment`` or whose audience holds ``user``.

        Highest priority first, then the most recently approved. Nothing but ``approved``
        pieces is ever returned.
        """
        if segment is None and user is None:
            raise ReviewError("approved_for needs a segment or a user")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ReviewError(f"unknown kind {unknown[0]!r} (expected {', '.join(KINDS)})")
        targets = []
        if segment is not None:
            targets.append(generated_content.c.segment == segment)
        if user is not None:
            members = sa.select(generated_audience.c.content_id).where(
                generated_audience.c.user_id == user
            )
            targets.append(generated_content.c.content_id.in_(members))
        query = (
            _select_pieces()
            .where(
                generated_content.c.status == "approved",
                generated_content.c.kind.in_(list(kinds)),
                sa.or_(*targets),
            )
            .order_by(
                generated_content.c.priority.desc(),
                generated_content.c.decided_at.desc(),
                generated_content.c.content_id,
            )
            .limit(limit)
        )
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [_reviewed(row) for row in rows]

    def corpus(
        self, statuses: Sequence[str] = ("pending", "approved")
    ) -> builtins.list[CorpusEntry]:
        """Text and items of the pieces new ones must not repeat (for the near-duplicate check)."""
        query = sa.select(
            generated_content.c.content_id,
            generated_content.c.title,
            generated_content.c.description,
            generated_content.c["items"],  # .c.items is the collection's items() method
            generated_content.c.status,
            generated_content.c.kind,
        ).where(generated_content.c.status.in_([_status(s) for s in statuses]))
        with self.store.transaction(write=False) as conn:
            rows = conn.execute(query).all()
        return [
            CorpusEntry(cid, f"{title}\n{description}", tuple(json.loads(items)), status, kind)
            for cid, title, description, items, status, kind in rows
        ]

    def forget_user(self, user_id: str) -> int:
        """Remove a user from every piece's audience (erasure); returns the rows removed."""
        delete = sa.delete(generated_audience).where(generated_audience.c.user_id == user_id)
        with self.store.transaction() as conn:
            return int(conn.execute(delete).rowcount)

    # ------------------------------------------------------------------ decisions
    def approve(self, content_id: str, reviewer: str) -> ReviewedPiece:
        """Approve a pending piece: from now on it is a candidate."""
        reviewer = _actor(reviewer, "reviewer")
        with self.store.transaction() as conn:
            row = _locked(conn, content_id)
            if row.status != "pending":
                raise ReviewConflictError(
                    f"piece {content_id!r} is {row.status}; only a pending piece can be approved"
                    + (
                        " (edit it first: that re-runs the checks)"
                        if row.status == "rejected"
                        else ""
                    )
                )
            self._set_status(conn, row, "approved", reviewer, "approve", None, {})
        return self.get(content_id)

    def reject(self, content_id: str, reviewer: str, reason: str) -> ReviewedPiece:
        """Reject a pending piece, or withdraw an approved one; ``reason`` is required."""
        reviewer = _actor(reviewer, "reviewer")
        if not isinstance(reason, str) or not reason.strip():
            raise ReviewError("reason is required to reject a piece")
        reason = " ".join(reason.split())
        if len(reason) > 2000:
            raise ReviewError("reason must be at most 2000 characters")
        with self.store.transaction() as conn:
            row = _locked(conn, content_id)
            if row.status == "rejected":
                raise ReviewConflictError(f"piece {content_id!r} is already rejected")
            self._set_status(conn, row, "rejected", reviewer, "reject", reason, {})
        return self.get(content_id)

    def edit(
        self,
        content_id: str,
        reviewer: str,
        *,
        title: str | None = None,
        description: str | None = None,
        items: Iterable[str] | None = None,
        approve: bool = False,
    ) -> ReviewedPiece:
        """Change a piece's text or items and re-run the checks.

        Passing pieces go back to ``pending`` (or straight to ``approved`` with
        ``approve=True``); failing ones are ``rejected`` by the checks with their findings.
        """
        reviewer = _actor(reviewer, "reviewer")
        current = self.get(content_id)
        changes: dict[str, Any] = {}
        if title is not None:
            changes["title"] = _text(title, "title")
        if description is not None:
            changes["description"] = _text(description, "description")
        if items is not None:
            if isinstance(items, str):
                raise ReviewError("items must be a list of item ids, not one string")
            changes["items"] = tuple(items)
        changes = {k: v for k, v in changes.items() if getattr(current.piece, k) != v}
        if not changes:
            raise ReviewError(
                f"edit of piece {content_id!r} changes nothing (give title, description or items)"
            )
        edited = replace(current.piece, **changes)
        report = self.gate.run(edited)
        before = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in ((k, getattr(current.piece, k)) for k in changes)
        }
        with self.store.transaction() as conn:
            row = _locked(conn, content_id)
            if row.revision != current.revision or row.status != current.status:
                raise ReviewConflictError(
                    f"piece {content_id!r} changed while it was being edited; reload and retry"
                )
            now = self._clock()
            status = "pending" if report.passed else "rejected"
            reason = None if report.passed else _checks_reason(report)
            revision = row.revision + 1
            conn.execute(
                generated_content.update()
                .where(generated_content.c.content_id == content_id)
                .values(
                    title=edited.title,
                    description=edited.description,
                    items=_dumps(list(edited.items), "items"),
                    checks_passed=report.passed,
                    findings=_dumps([f.to_json() for f in report.findings], "findings"),
                    status=status,
                    revision=revision,
                    updated_at=now,
                    reviewer=reviewer if report.passed else CHECKS_ACTOR,
                    decided_at=now,
                    reason=reason,
                )
            )
            detail = {"before": before, "failed_checks": report.failed_checks()}
            _audit(
                conn,
                content_id,
                now,
                reviewer,
                "edit",
                row.status,
                status,
                revision,
                reason,
                detail,
            )
            if approve and report.passed:
                updated = _locked(conn, content_id)
                self._set_status(conn, updated, "approved", reviewer, "approve", None, {})
        return self.get(content_id)

    def _set_status(
        self,
        conn: sa.Connection,
        row: Any,
        status: str,
        reviewer: str,
        action: str,
        reason: str | None,
        detail: Mapping[str, Any],
    ) -> None:
        now = self._clock()
        update = (
            generated_content.update()
            .where(
                generated_content.c.content_id == row.content_id,
                generated_content.c.revision == row.revision,
                generated_content.c.status == row.status,
            )
            .values(status=status, reviewer=reviewer, decided_at=now, reason=reason, updated_at=now)
        )
        if conn.execute(update).rowcount != 1:
            raise ReviewConflictError(f"piece {row.content_id!r} changed meanwhile; retry")
        _audit(
            conn,
            row.content_id,
            now,
            reviewer,
            action,
            row.status,
            status,
            row.revision,
            reason,
            detail,
        )


# ------------------------------------------------------------------------------ helpers
def _select_pieces() -> sa.Select[Any]:
    audience = (
        sa.select(sa.func.count())
        .where(generated_audience.c.content_id == generated_content.c.content_id)
        .scalar_subquery()
        .label("audience_size")
    )
    return sa.select(generated_content, audience)


def _reviewed(row: Any) -> ReviewedPiece:
    findings = tuple(Finding.from_json(f) for f in json.loads(row.findings))
    piece = GeneratedPiece(
        kind=row.kind,
        segment=row.segment,
        title=row.title,
        description=row.description,
        items=tuple(json.loads(row.items)),
        provenance=json.loads(row.provenance),
        content_id=row.content_id,
    )
    return ReviewedPiece(
        piece=piece,
        status=row.status,
        report=QualityReport(bool(row.checks_passed), findings),
        revision=int(row.revision),
        priority=float(row.priority),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
        reviewer=row.reviewer,
        decided_at=row.decided_at,
        reason=row.reason,
        audience_size=int(row.audience_size or 0),
    )


def _locked(conn: sa.Connection, content_id: str) -> Any:
    query = (
        sa.select(generated_content)
        .where(generated_content.c.content_id == str(content_id))
        .with_for_update()
    )
    row = conn.execute(query).one_or_none()
    if row is None:
        raise ReviewNotFoundError(f"unknown generated piece {content_id!r}")
    return row


def _audit(
    conn: sa.Connection,
    content_id: str,
    at: float,
    actor: str,
    action: str,
    from_status: str | None,
    to_status: str,
    revision: int,
    reason: str | None,
    detail: Mapping[str, Any],
) -> None:
    conn.execute(
        sa.insert(generated_audit).values(
            content_id=content_id,
            at=at,
            actor=actor,
            action=action,
            from_status=from_status,
            to_status=to_status,
            revision=revision,
            reason=reason,
            detail=_dumps(dict(detail), "audit detail"),
        )
    )


def _checks_reason(report: QualityReport) -> str:
    return "failed automated checks: " + ", ".join(report.failed_checks())


def _priority(piece: GeneratedPiece, priority: float | None) -> float:
    if priority is None:
        gap = piece.provenance.get("gap")
        priority = gap.get("gap") if isinstance(gap, Mapping) else None
    try:
        value = float(priority) if priority is not None else 0.0
    except (TypeError, ValueError):
        raise ReviewError(f"priority must be a number, not {priority!r}") from None
    return value if math.isfinite(value) else 0.0


def _actor(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 128:
        raise ReviewError(f"{what} must be a name of 1-128 characters")
    return name.strip()


def _status(status: object) -> str:
    if status not in STATUSES:
        raise ReviewError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return str(status)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ReviewError(f"{what} must be a string")
    return value.strip()


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ReviewError(f"{what} are not JSON: {' '.join(str(exc).split())}") from None


__all__ = [
    "STATUSES",
    "AuditEntry",
    "ReviewConflictError",
    "ReviewError",
    "ReviewNotFoundError",
    "ReviewQueue",
    "ReviewedPiece",
    "generated_audience",
    "generated_audit",
    "generated_content",
]
