"""The service's request and response bodies (pydantic v2): what the OpenAPI spec publishes.

Events are validated one by one (:func:`parse_events`) so that one bad event is reported by its
index and field while the valid ones in the same batch are stored; unknown fields are dropped
and counted, never rejected.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from recloop.data.types import EventKind
from recloop.engine.blend import UserControls
from recloop.errors import ConfigError
from recloop.store.events import EventRecord

MAX_EVENTS_PER_BATCH = 10_000
MAX_ITEMS_PER_BATCH = 10_000
MAX_USERS_PER_BATCH = 10_000
MAX_RECOMMENDATIONS = 200


def unicode_text(value: str) -> str:
    """``value`` if it can be stored and sent back as UTF-8: JSON's ``\\ud800`` escapes
    decode to lone surrogates, which no database column or JSON answer can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return value


def _is_unicode(node: Any) -> bool:
    """Whether every key and string in a decoded JSON value is valid Unicode text."""
    if isinstance(node, str):
        if node.isascii():
            return True
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(node, dict):
        return all(_is_unicode(key) and _is_unicode(item) for key, item in node.items())
    if isinstance(node, list):
        return all(_is_unicode(item) for item in node)
    return True


def _unicode_json(value: dict[str, Any]) -> dict[str, Any]:
    """A free-form JSON object whose keys and strings are all valid Unicode text (constrained
    strings need no such check: pydantic refuses lone surrogates in those itself)."""
    if not _is_unicode(value):
        raise ValueError("must hold valid Unicode text only (a lone surrogate is not)")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_unicode_json)]
Identifier = Annotated[
    str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", examples=["u42"])
]
SlateRef = Annotated[str, Field(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]
EventKindName = Literal["view", "click", "rating", "purchase", "like", "dislike", "skip"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(BaseModel):
    """One interaction reported by a client. ``event_id`` makes a retry harmless."""

    model_config = ConfigDict(extra="ignore")

    event_id: Identifier = Field(
        description="Client-chosen id, unique among the user's events (idempotency)."
    )
    user_id: Identifier
    item_id: Identifier | None = Field(default=None, description="The item, if the event has one.")
    kind: EventKindName = Field(description="What happened; dislike and skip are negative.")
    timestamp: float | datetime | None = Field(
        default=None,
        description="When it happened: epoch seconds or ISO-8601; default: when received.",
    )
    value: float | None = Field(default=None, description="Rating or weight.")
    slate_id: SlateRef | None = Field(
        default=None, description="The slate this outcome answers, if any."
    )
    context: JsonObject | None = Field(default=None, description="Free-form context.")

    @field_validator("timestamp", "value", mode="before")
    @classmethod
    def _not_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # JSON true/false would otherwise be read as 1.0/0.0
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("timestamp")
    @classmethod
    def _sane_time(cls, value: float | datetime | None) -> float | datetime | None:
        seconds = value.timestamp() if isinstance(value, datetime) else value
        if seconds is not None and not (0.0 <= seconds < 32503680000.0):  # 1970 .. 3000
            raise ValueError("must be between 1970 and 3000 (epoch seconds or ISO-8601)")
        return value

    def record(self, received: float) -> EventRecord:
        ts = self.timestamp
        seconds = ts.timestamp() if isinstance(ts, datetime) else ts
        return EventRecord(
            event_id=self.event_id,
            user_id=self.user_id,
            item_id=self.item_id,
            kind=EventKind[self.kind.upper()],
            timestamp=received if seconds is None else float(seconds),
            value=self.value,
            slate_id=self.slate_id,
            context=self.context,
        )


EVENT_FIELDS = frozenset(EventIn.model_fields)


class EventBatch(BaseModel):
    """A batch of events. Each event is checked on its own; see ``EventsResult.rejected``."""

    model_config = ConfigDict(extra="ignore")

    events: list[Any] = Field(
        max_length=MAX_EVENTS_PER_BATCH,
        description=f"Up to {MAX_EVENTS_PER_BATCH:,} events, each shaped like EventIn.",
        json_schema_extra={"items": {"$ref": "#/components/schemas/EventIn"}},
    )


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx answer: what went wrong and, for invalid input, the fields at fault."""

    detail: str
    errors: list[FieldError] | None = None


class RejectedEvent(BaseModel):
    index: int = Field(description="Position of the event in the batch.")
    event_id: str | None
    errors: list[FieldError]


class EventsResult(BaseModel):
    """What happened to a batch: only ``stored`` events are new; all others are explained."""

    stored: int = Field(description="New events, committed before this answer was sent.")
    duplicates: int = Field(
        description="Events whose user already has their event_id: not stored again."
    )
    rejected: list[RejectedEvent] = Field(
        description="Events not stored: invalid ones with the field at fault, and events "
        "about users another client application owns (field 'user_id')."
    )
    unknown_fields_dropped: int = Field(description="Fields no event schema knows, dropped.")
    refused_erased: int = Field(
        default=0, description="Events about erased users: refused by their tombstones."
    )


def _field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(field=".".join(str(p) for p in err["loc"]) or "event", message=err["msg"])
        for err in exc.errors()
    ]


def parse_events(
    raw: list[Any],
    received: float | None = None,
    allowed_context: frozenset[str] | None = None,
) -> tuple[list[EventRecord], list[RejectedEvent], int]:
    """Valid events as store records, the rejected ones with field errors, and how many
    fields were dropped: unknown to the schema, or context keys outside ``allowed_context``
    (the data policy's allow-list; None keeps every key)."""
    received = time.time() if received is None else received
    valid: list[EventRecord] = []
    rejected: list[RejectedEvent] = []
    unknown = 0
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            error = FieldError(field="event", message="must be a JSON object")
            rejected.append(RejectedEvent(index=index, event_id=None, errors=[error]))
            continue
        unknown += sum(1 for key in item if key not in EVENT_FIELDS)
        context = item.get("context")
        if allowed_context is not None and isinstance(context, dict):
            kept = {k: v for k, v in context.items() if k in allowed_context}
            unknown += len(context) - len(kept)
            item = {**item, "context": kept or None}
        try:
            valid.append(EventIn.model_validate(item).record(received))
        except ValidationError as exc:
            event_id = item.get("event_id")
            rejected.append(
                RejectedEvent(
                    index=index,
                    event_id=event_id if _echoable(event_id) else None,
                    errors=_field_errors(exc),
                )
            )
    return valid, rejected, unknown


def _echoable(event_id: Any) -> bool:
    """Whether a rejected event's id can be sent back as it came (valid Unicode text)."""
    if not isinstance(event_id, str):
        return False
    try:
        unicode_text(event_id)
    except ValueError:
        return False
    return True


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(description="What proposed the item: the model's name, or 'popular'.")
    position: int = Field(description="0-based rank in the slate.")
    generated: bool = Field(description="True for content made by the generative module.")
    explanation: str | None = Field(
        description="Handle to ask for this item's explanation (GET /v1/explanations/"
        "{slate_id}/{position}); null where none is kept (similar-item lists)."
    )


class Slate(BaseModel):
    """A recommendation answer; outcome events cite its ``slate_id``."""

    slate_id: str
    user_id: str
    model_version: str
    personalised: bool = Field(
        default=True,
        description="False when the user turned personalisation off (or was erased): the "
        "items are then the non-personalised popular ones.",
    )
    items: list[RecommendedItem]


class SimilarItems(BaseModel):
    item_id: str
    model_version: str
    items: list[RecommendedItem]


class ItemIn(_Body):
    item_id: Identifier
    title: str = Field(default="", max_length=1000)
    text: str = Field(default="", max_length=100_000, description="What text models read.")
    attributes: JsonObject = Field(default_factory=dict)
    hidden: bool = False
    available_from: float | None = Field(
        default=None, allow_inf_nan=False, description="Epoch seconds, or none."
    )
    available_until: float | None = Field(
        default=None, allow_inf_nan=False, description="Epoch seconds, or none."
    )

    _unicode = field_validator("title", "text")(unicode_text)


class ItemBatch(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS_PER_BATCH)


class ItemPatch(_Body):
    """Fields to change; absent fields stay as they are (defaults are never applied)."""

    title: str = Field(default="", max_length=1000)
    text: str = Field(default="", max_length=100_000)
    attributes: JsonObject = Field(default_factory=dict)
    hidden: bool = False
    available_from: float | None = Field(
        default=None, allow_inf_nan=False, description="Epoch seconds; null: none."
    )
    available_until: float | None = Field(
        default=None, allow_inf_nan=False, description="Epoch seconds; null: none."
    )

    _unicode = field_validator("title", "text")(unicode_text)


class ItemOut(BaseModel):
    item_id: str
    title: str
    text: str
    attributes: dict[str, Any]
    hidden: bool
    available_from: float | None
    available_until: float | None


class UserIn(_Body):
    user_id: Identifier
    attributes: JsonObject = Field(default_factory=dict)


class UserBatch(_Body):
    users: list[UserIn] = Field(min_length=1, max_length=MAX_USERS_PER_BATCH)


class Preferences(_Body):
    """A user's own controls, e.g. ``{"diversity": 0.3, "blocked_genres": ["Horror"]}``."""

    preferences: JsonObject

    @field_validator("preferences")
    @classmethod
    def _known_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked when stored, not when next read: a bad value would otherwise fail every
        later recommendation for the user."""
        try:
            UserControls.from_preferences(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value


class Count(BaseModel):
    """How many records were stored (and how many fields the data policy dropped)."""

    stored: int
    fields_dropped: int = Field(
        default=0, description="Attributes outside the data policy's allow-list, not stored."
    )


class UsersCount(Count):
    """How many users were stored, and how many were refused because they were erased."""

    refused_erased: int = Field(
        default=0, description="Users erased earlier: their tombstones refuse data about them."
    )


class ModelVersion(BaseModel):
    version: str
    model: str
    created_at: float
    n_items: int
    n_users: int
    active: bool
    metadata: dict[str, Any]


class ModelList(BaseModel):
    active: str | None
    versions: list[ModelVersion]


class Health(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None


class GapSegment(BaseModel):
    """One user segment and how well the active model serves it (higher gap: worse)."""

    segment: int
    size: int
    satisfaction: float | None
    satisfaction_kind: str
    coverage: float | None
    tail_demand: float | None
    tail_supply: float | None
    gap: float | None
    top_items: list[str] = Field(description="The items most characteristic of the segment.")
    attributes: dict[str, Any]


class GapsOut(BaseModel):
    """The gap analysis of the stored events under the active model, worst-served first."""

    model_version: str
    events: int = Field(description="Stored events of users and items the model knows.")
    segments: list[GapSegment]
    overall: dict[str, float | None]
    map: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict,
        description="2-D map of the users (first two principal directions of the clustering's "
        "embedding): points {x, y, segment} (segment = index into segments) and centroids.",
    )


class ArmOut(BaseModel):
    """One blend setting the bandit may choose."""

    index: int
    name: str
    weights: dict[str, float]


class SegmentPolicy(BaseModel):
    """The bandit's current policy in one user segment."""

    probabilities: dict[str, float] = Field(description="P(arm is chosen), by arm name.")
    posterior_mean: dict[str, float] = Field(description="Posterior mean reward, by arm name.")
    alpha: list[float]
    beta: list[float]


class SourceStatsOut(BaseModel):
    impressions: int
    clicks: int
    ctr: float


class RetrainOut(BaseModel):
    seq: int
    started_at: float
    finished_at: float | None
    trigger: str
    events: int
    version: str | None
    status: str
    detail: str | None


class PolicySnapshot(BaseModel):
    at: float
    segment: str
    probabilities: dict[str, float]


class LoopOut(BaseModel):
    """The feedback loop: arms, per-segment policy, rewards, off-policy values, retraining."""

    enabled: bool
    epsilon: float
    window_since: float = Field(description="Slates created since this time are learned from…")
    window_until: float = Field(description="…until this time (their attribution has closed).")
    attribution_s: float
    arms: list[ArmOut]
    segments: dict[str, SegmentPolicy]
    sources: dict[str, SourceStatsOut] = Field(description="Outcomes attributed by source.")
    positions: dict[str, SourceStatsOut] = Field(description="Outcomes attributed by position.")
    offpolicy: dict[str, Any] = Field(
        description="IPS and SNIPS values of alternative arm policies from the logged slates."
    )
    slates_logged: int
    retraining: list[RetrainOut]
    history: list[PolicySnapshot] = Field(
        default_factory=list,
        description="The policy over time: each segment's arm probabilities at each update.",
    )


class ConsentBody(BaseModel):
    """A user's consent: each flag is honoured by every component (docs/privacy.md)."""

    model_config = ConfigDict(extra="forbid")

    personalisation: bool = Field(description="Off: non-personalised answers, labelled so.")
    training: bool = Field(description="Off: the user's events stay out of model training.")
    generative: bool = Field(description="Off: none of the user's data goes into a prompt.")


class OwnerBody(_Body):
    """Who acts for a user: a client application's name (a key's ``owner``), or null to
    release the user (the next client application to write for them claims them)."""

    owner: Identifier | None


class OwnerOut(BaseModel):
    user_id: str
    owner: str | None = Field(description="The client application; null: nobody claimed them.")
    claimed_at: float | None = Field(description="When it claimed them (or was given them).")


class ErasureOut(BaseModel):
    """What erasing a user removed, and when models will no longer hold them."""

    user_id: str
    erased_at: float
    completed_at: float
    events: int
    slates: int
    impressions: int
    profile: bool
    consent: bool
    cache_entries_purged: int
    queued_slates_dropped: int
    model_rebuild_by: float | None = Field(
        description="Models are rebuilt without the user by this time (None: the loop "
        "updater is off, so nothing retrains; retrain by hand)."
    )
    models_holding_user: list[str] = Field(
        description="Registered versions trained with the user (the active one is rebuilt)."
    )
    steps_ms: dict[str, float] = Field(
        default_factory=dict,
        description="Where the time went, step by step, in milliseconds (store transaction, "
        "cache purges and invalidation, the grace wait, the model check).",
    )


class AuditEntryOut(BaseModel):
    seq: int
    at: float
    actor: str
    action: str
    subject: str
    detail: dict[str, Any] | None


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, an infinite interval end) as None, through
    dicts, lists and tuples: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
