"""``recloop review …``: the generated-content review queue from the command line.

The commands open the same event store as the service (``--home``, ``--db`` or the
``RECLOOP_*`` environment), so a decision made here is what every service worker serves from
its next request on. Decisions are recorded under ``--reviewer`` (default ``cli:<login>``).
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

review_app = typer.Typer(
    help="Review generated content: list, show, approve, edit, reject, generate.",
    no_args_is_help=True,
)
HomeOption = typer.Option(
    None, "--home", help="state folder (default: $RECLOOP_HOME or ./recloop-home)"
)
DbOption = typer.Option(None, "--db", help="event store URL (default: SQLite in the home folder)")
ReviewerOption = typer.Option(
    None, "--reviewer", help="who decides, for the audit trail (default: cli:<login name>)"
)
JsonOption = typer.Option(False, "--json", help="print machine-readable JSON")


def _settings(home: Path | None, db: str | None) -> Any:
    from recloop.service.settings import ServiceSettings

    base = ServiceSettings.from_env().model_dump()
    base.update({k: v for k, v in {"home": home, "db": db}.items() if v is not None})
    return ServiceSettings.model_validate(base)


def _queue(home: Path | None, db: str | None) -> Any:
    from recloop.generative.review import ReviewQueue
    from recloop.store.events import EventStore

    settings = _settings(home, db)
    settings.home.mkdir(parents=True, exist_ok=True)
    return ReviewQueue(EventStore(settings.db_url))


def _reviewer(name: str | None) -> str:
    if name:
        return name
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the review commands to the main CLI."""
    app.add_typer(review_app, name="review")

    def show_piece(reviewed: Any, history: list[Any]) -> None:
        piece = reviewed.piece
        console.print(
            f"{piece.title}  ({piece.kind}, {reviewed.status})", markup=False, style="bold"
        )
        console.print(
            f"id {piece.content_id}  segment {piece.segment}  revision {reviewed.revision}",
            markup=False,
        )
        console.print(piece.description, markup=False)
        console.print("items: " + (", ".join(piece.items) or "none"), markup=False)
        if reviewed.reason:
            console.print(f"reason: {reviewed.reason}", markup=False)
        table = Table("check", "passed", "field", "span", "message")
        for f in reviewed.report.findings:
            span = "" if f.span is None else f"{f.span[0]}-{f.span[1]}"
            table.add_row(
                f.check, "yes" if f.passed else "NO", f.field or "", span, escape(f.message)
            )
        console.print(table)
        trail = Table("when", "who", "action", "from", "to", "reason")
        for e in history:
            trail.add_row(
                _when(e.at),
                escape(e.actor),
                e.action,
                e.from_status or "",
                e.to_status,
                escape(e.reason or ""),
            )
        console.print(trail)

    def finish(queue: Any, reviewed: Any, as_json: bool) -> None:
        history = queue.history(reviewed.content_id)
        if as_json:
            out = {**reviewed.to_json(), "history": [e.to_json() for e in history]}
            typer.echo(json.dumps(out, indent=2))
        else:
            show_piece(reviewed, history)

    @review_app.command("list")
    @user_errors
    def review_list(
        status: str = typer.Option(
            "pending", "--status", help="pending, approved, rejected or all"
        ),
        segment: str | None = typer.Option(None, "--segment", help="only this segment"),
        limit: int = typer.Option(100, "--limit", min=1, max=1000),
        as_json: bool = JsonOption,
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Pieces of a status, highest priority first, with how many checks failed."""
        queue = _queue(home, db)
        try:
            pieces = queue.list(None if status == "all" else status, segment=segment, limit=limit)
            counts = queue.counts()
        finally:
            queue.store.close()
        if as_json:
            typer.echo(json.dumps({"counts": counts, "pieces": [p.to_json() for p in pieces]}))
            return
        table = Table("id", "kind", "status", "segment", "title", "items", "failed checks")
        for p in pieces:
            table.add_row(
                p.content_id,
                p.piece.kind,
                p.status,
                escape(p.piece.segment),
                escape(p.piece.title),
                str(len(p.piece.items)),
                ", ".join(p.report.failed_checks()),
            )
        console.print(table)
        console.print(", ".join(f"{n} {s}" for s, n in counts.items()))

    @review_app.command("show")
    @user_errors
    def review_show(
        content_id: str = typer.Argument(..., help="the piece's id (from `recloop review list`)"),
        as_json: bool = JsonOption,
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """One piece: its text, items, findings and audit trail."""
        queue = _queue(home, db)
        try:
            finish(queue, queue.get(content_id), as_json)
        finally:
            queue.store.close()

    @review_app.command("approve")
    @user_errors
    def review_approve(
        content_id: str = typer.Argument(..., help="a pending piece's id"),
        reviewer: str | None = ReviewerOption,
        as_json: bool = JsonOption,
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Approve a pending piece: it becomes a candidate source.

        Running services see it within 10 s, the time they cache the count of approved
        pieces."""
        queue = _queue(home, db)
        try:
            finish(queue, queue.approve(content_id, _reviewer(reviewer)), as_json)
        finally:
            queue.store.close()

    @review_app.command("edit")
    @user_errors
    def review_edit(
        content_id: str = typer.Argument(..., help="the piece's id"),
        title: str | None = typer.Option(None, "--title", help="new title"),
        description: str | None = typer.Option(None, "--description", help="new description"),
        items: str | None = typer.Option(None, "--items", help="new item ids, comma-separated"),
        approve: bool = typer.Option(
            False, "--approve", help="approve it too when the checks pass"
        ),
        reviewer: str | None = ReviewerOption,
        as_json: bool = JsonOption,
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Edit a piece; the checks re-run (pass: pending, or approved with --approve)."""
        item_ids = None if items is None else [i.strip() for i in items.split(",") if i.strip()]
        queue = _queue(home, db)
        try:
            edited = queue.edit(
                content_id,
                _reviewer(reviewer),
                title=title,
                description=description,
                items=item_ids,
                approve=approve,
            )
            finish(queue, edited, as_json)
        finally:
            queue.store.close()

    @review_app.command("reject")
    @user_errors
    def review_reject(
        content_id: str = typer.Argument(..., help="the piece's id"),
        reason: str = typer.Option(..., "--reason", help="why (required; kept in the audit)"),
        reviewer: str | None = ReviewerOption,
        as_json: bool = JsonOption,
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Reject a pending piece, or withdraw an approved one."""
        queue = _queue(home, db)
        try:
            finish(queue, queue.reject(content_id, _reviewer(reviewer), reason), as_json)
        finally:
            queue.store.close()

    @review_app.command("generate")
    @user_errors
    def review_generate(
        segments: int = typer.Option(8, "--segments", min=2, max=64, help="segments to form"),
        top: int = typer.Option(3, "--top", min=1, max=20, help="worst segments to serve"),
        items: int = typer.Option(8, "--items", min=3, max=50, help="items per collection"),
        concepts: bool = typer.Option(False, "--concepts", help="also write item concepts"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Run gap analysis on the active model and submit content for the worst segments."""
        from recloop.engine.gaps import GapConfig
        from recloop.generative.content import ContentConfig, fill_gaps
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, db)
        loaded = ArtifactRegistry(settings.models_dir).load()
        queue = _queue(home, db)
        try:
            with console.status(f"analysing gaps with {loaded.version} and writing content"):
                _, submitted = fill_gaps(
                    queue.store,
                    queue,
                    loaded.model,
                    items=loaded.items,
                    users=loaded.users,
                    model_version=loaded.version,
                    gap_config=GapConfig(n_segments=segments),
                    config=ContentConfig(
                        segments=top, items_per_collection=items, concepts=concepts
                    ),
                )
        finally:
            queue.store.close()
        for p in submitted:
            failed = p.report.failed_checks()
            note = f" (failed: {', '.join(failed)})" if failed else ""
            console.print(f"{p.content_id}  {p.status:<8} {p.piece.title}{note}", markup=False)
        console.print(f"submitted {len(submitted)} pieces; review them with `recloop review list`")
