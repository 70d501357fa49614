"""Routes of the generative module's review queue (admin keys only).

``GET /v1/review`` lists pieces with their automated findings; ``approve``, ``edit`` and
``reject`` are the reviewer's decisions (``reject`` needs a reason); ``POST
/v1/review/generate`` runs gap analysis on the active model, writes content for the worst
segments and submits it. Decisions are recorded under the admin key's id. Only approved
pieces ever become candidates (:func:`generated_source`).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from recloop.generative.content import ContentConfig, GeneratedSource, default_generator, fill_gaps
from recloop.generative.llm import GenerationError
from recloop.generative.openai_chat import BackendUnavailable
from recloop.generative.quality import QualityConfig
from recloop.generative.review import (
    AuditEntry,
    ReviewConflictError,
    ReviewedPiece,
    ReviewNotFoundError,
    ReviewQueue,
)
from recloop.service.auth import Principal
from recloop.service.deps import AUTH_RESPONSES, Admin, PathId, service_state
from recloop.service.state import ServiceState

router = APIRouter(tags=["review"])
log = logging.getLogger(__name__)

QUEUE_KEY = "generative.review_queue"
SOURCE_KEY = "generative.generated_source"
GENERATOR_KEY = "generative.content_generator"
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown generated piece"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"description": "The piece's status does not allow this decision"}
}
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


# ------------------------------------------------------------------------------ schemas
class FindingOut(BaseModel):
    """One automated finding: ``span`` is [start, end) in ``field`` when it points at text."""

    check: str
    passed: bool
    message: str
    field: str | None = None
    span: list[int] | None = None


class PieceOut(BaseModel):
    """A generated piece in the review queue, with its automated findings."""

    content_id: str
    kind: str
    segment: str
    title: str
    description: str
    items: list[str]
    generated: bool = True
    status: str
    checks_passed: bool
    findings: list[FindingOut]
    revision: int
    priority: float
    created_at: float
    updated_at: float
    reviewer: str | None
    decided_at: float | None
    reason: str | None
    audience_size: int
    provenance: dict[str, Any]


class AuditOut(BaseModel):
    """One decision about a piece."""

    seq: int
    at: float
    actor: str
    action: str
    from_status: str | None
    to_status: str
    revision: int
    reason: str | None
    detail: dict[str, Any]


class PieceDetail(PieceOut):
    """A piece and every decision about it, oldest first."""

    history: list[AuditOut]


class ReviewList(BaseModel):
    """Pieces of one status (or all), and how many pieces each status holds."""

    status: str
    counts: dict[str, int]
    pieces: list[PieceOut]


class EditIn(BaseModel):
    """What to change; the checks re-run. ``approve``: approve too when the checks pass."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=500)
    description: str | None = Field(default=None, min_length=1, max_length=5000)
    items: list[ItemId] | None = Field(default=None, max_length=200)
    approve: bool = False

    @model_validator(mode="after")
    def _something(self) -> EditIn:
        if self.title is None and self.description is None and self.items is None:
            raise ValueError("give at least one of title, description or items")
        return self


class RejectIn(BaseModel):
    """Why the piece is rejected (required)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason must not be blank")
        return value


class GenerateIn(BaseModel):
    """Gap analysis and content settings for one generation run."""

    model_config = ConfigDict(extra="forbid")

    segments: int = Field(default=8, ge=2, le=64, description="segments gap analysis forms")
    top: int = Field(default=3, ge=1, le=20, description="worst-served segments to serve")
    items_per_collection: int = Field(default=8, ge=3, le=50)
    concepts: bool = Field(default=False, description="also write a new-item concept each")


class GenerateOut(BaseModel):
    """What a generation run submitted: passing pieces are pending, failing ones rejected."""

    model_version: str
    segments_analysed: int
    submitted: list[PieceOut]
    counts: dict[str, int]


# ------------------------------------------------------------------------------ components
def review_queue(state: ServiceState) -> ReviewQueue:
    """This worker's review queue (its checks are built once, on first use)."""
    queue = state.extensions.get(QUEUE_KEY)
    if queue is None:
        queue = ReviewQueue(state.store, quality=QualityConfig.from_env())
        state.extensions[QUEUE_KEY] = queue
    return queue


def generated_source(state: ServiceState) -> GeneratedSource:
    """This worker's candidate source of approved generated collections."""
    source = state.extensions.get(SOURCE_KEY)
    if source is None:
        source = GeneratedSource(review_queue(state))
        state.extensions[SOURCE_KEY] = source
    return source


def _piece_out(reviewed: ReviewedPiece) -> dict[str, Any]:
    return reviewed.to_json()


def _audit_out(entry: AuditEntry) -> AuditOut:
    data = entry.to_json()
    data.pop("content_id")
    return AuditOut(**data)


def _detail(queue: ReviewQueue, reviewed: ReviewedPiece) -> PieceDetail:
    history = [_audit_out(e) for e in queue.history(reviewed.content_id)]
    return PieceDetail(**_piece_out(reviewed), history=history)


def _reviewer(principal: Principal) -> str:
    return f"key:{principal.key_id}"


def _decide(action: Any, *args: Any, **kwargs: Any) -> ReviewedPiece:
    try:
        result: ReviewedPiece = action(*args, **kwargs)
    except ReviewNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except ReviewConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    return result


def _generator_failed(generator: Any, exc: GenerationError) -> HTTPException:
    """The HTTP error for a text generator failure: logged in full, answered without the
    backend's address (an internal URL is no business of the API's callers)."""
    backend = str(getattr(generator, "name", "the text generator"))
    log.warning("content generation failed (%s): %s", backend, exc)
    if _caused_by(exc, BackendUnavailable):
        return HTTPException(
            503,
            f"the text generator (backend {backend!r}) is unavailable: it could not be "
            "reached, timed out or is overloaded; try again later",
        )
    return HTTPException(
        502,
        f"the text generator (backend {backend!r}) failed: it refused the request or gave an "
        "answer that could not be used; the server log has the details",
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception it was raised from (content wraps the backend's
    error to name the piece) is a ``kind``."""
    seen: BaseException | None = exc
    for _ in range(16):  # a cause chain is short; the bound guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__
    return False


# ------------------------------------------------------------------------------ routes
@router.get("/v1/review", response_model=ReviewList, responses=AUTH_RESPONSES)
def list_pieces(
    request: Request,
    _: Admin,
    status: Annotated[Literal["pending", "approved", "rejected", "all"], Query()] = "pending",
    segment: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> ReviewList:
    """Generated pieces of a status (pending by default), highest priority first, with the
    automated checks' findings."""
    queue = review_queue(service_state(request))
    pieces = queue.list(
        None if status == "all" else status, segment=segment, limit=limit, offset=offset
    )
    return ReviewList(
        status=status,
        counts=queue.counts(),
        pieces=[PieceOut(**_piece_out(p)) for p in pieces],
    )


@router.post(
    "/v1/review/generate",
    response_model=GenerateOut,
    responses={
        **AUTH_RESPONSES,
        502: {"description": "The text generator failed (an unusable answer or a refusal)"},
        503: {
            "description": "No model version is active, or the text generator is unreachable, "
            "timed out or is overloaded"
        },
    },
)
def generate(body: GenerateIn, request: Request, _: Admin) -> GenerateOut:
    """Run gap analysis on the active model, write a collection (and, if asked, a new-item
    concept) for each of the ``top`` worst-served segments, and submit them for review.

    A failing text generator is the server's problem, not the caller's: 503 when it cannot
    be reached, times out or is overloaded, 502 when it answers with something unusable. The
    answer names the backend but not its address; the server log has the details."""
    from recloop.engine.gaps import GapConfig

    state = service_state(request)
    model = state.models.current()
    if model is None:
        raise HTTPException(503, "no model version is active; train and activate one")
    generator = state.extensions.get(GENERATOR_KEY)
    if generator is None:
        generator = state.extensions[GENERATOR_KEY] = default_generator()
    queue = review_queue(state)
    try:
        report, submitted = fill_gaps(
            state.store,
            queue,
            model.model,
            items=model.items,
            users=model.users,
            model_version=model.version,
            gap_config=GapConfig(n_segments=body.segments),
            config=ContentConfig(
                segments=body.top,
                items_per_collection=body.items_per_collection,
                concepts=body.concepts,
            ),
            generator=generator,
        )
    except GenerationError as exc:
        raise _generator_failed(generator, exc) from None
    return GenerateOut(
        model_version=model.version,
        segments_analysed=len(report.segments),
        submitted=[PieceOut(**_piece_out(p)) for p in submitted],
        counts=queue.counts(),
    )


@router.get(
    "/v1/review/{content_id}", response_model=PieceDetail, responses={**AUTH_RESPONSES, **NOT_FOUND}
)
def show_piece(content_id: PathId, request: Request, _: Admin) -> PieceDetail:
    """One piece, its findings and every decision about it."""
    queue = review_queue(service_state(request))
    return _detail(queue, _decide(queue.get, content_id))


@router.post(
    "/v1/review/{content_id}/approve",
    response_model=PieceDetail,
    responses={**AUTH_RESPONSES, **NOT_FOUND, **CONFLICT},
)
def approve_piece(content_id: PathId, request: Request, principal: Admin) -> PieceDetail:
    """Approve a pending piece: from now on it is a candidate source."""
    queue = review_queue(service_state(request))
    return _detail(queue, _decide(queue.approve, content_id, _reviewer(principal)))


@router.post(
    "/v1/review/{content_id}/edit",
    response_model=PieceDetail,
    responses={**AUTH_RESPONSES, **NOT_FOUND, **CONFLICT},
)
def edit_piece(content_id: PathId, body: EditIn, request: Request, principal: Admin) -> PieceDetail:
    """Change a piece's title, description or items; the checks re-run. A passing piece goes
    back to pending (approved at once with ``approve: true``); a failing one is rejected."""
    queue = review_queue(service_state(request))
    edited = _decide(
        queue.edit,
        content_id,
        _reviewer(principal),
        title=body.title,
        description=body.description,
        items=body.items,
        approve=body.approve,
    )
    return _detail(queue, edited)


@router.post(
    "/v1/review/{content_id}/reject",
    response_model=PieceDetail,
    responses={**AUTH_RESPONSES, **NOT_FOUND, **CONFLICT},
)
def reject_piece(
    content_id: PathId, body: RejectIn, request: Request, principal: Admin
) -> PieceDetail:
    """Reject a pending piece or withdraw an approved one; the reason is required."""
    queue = review_queue(service_state(request))
    rejected = _decide(queue.reject, content_id, _reviewer(principal), body.reason)
    return _detail(queue, rejected)
